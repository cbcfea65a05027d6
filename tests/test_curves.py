"""``bench curves``: plateau rule, summary, JSON/PNG output and resuming a killed run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from clgnet_fastmri.bench.curves import (
    comparison_points,
    format_comparison,
    plateaued,
    read_at,
    summarize,
)
from clgnet_fastmri.checkpoints import load_recorded
from clgnet_fastmri.cli import main

TINY = ["unet:chans=4,num_pool_layers=2", "clgnet:chans=4,num_sfrir=1,num_sfrb=1"]


def _points(psnrs, every=100):
    return [{"step": every * (i + 1), "train_s": float(i), "train_cpu_s": float(i),
             "psnr": p, "ssim": 0.5, "nmse": 0.1} for i, p in enumerate(psnrs)]


def test_plateau_is_the_best_psnr_gain_over_the_last_fifth_of_the_steps():
    rising = _points([20, 22, 24, 26, 28, 30, 31, 32, 33, 34])
    flat = _points([20, 25, 27, 28, 28.5, 28.6, 28.62, 28.64, 28.66, 28.68])
    assert not plateaued(rising, 0.1, min_steps=0)
    assert plateaued(flat, 0.1, min_steps=0)  # 28.68 - 28.64 (best at step <= 800) < 0.1
    assert not plateaued(flat, 0.1, min_steps=2000)  # too early to call
    assert not plateaued(flat, 0.0, min_steps=0)  # 0 disables the rule
    # A late drop does not hide an earlier gain: the rule reads the best value.
    assert not plateaued(_points([20, 21, 22, 23, 24, 25, 26, 27, 29, 20]), 0.1, min_steps=0)


def test_summary_reports_plateau_and_when_unet_plateau_is_reached():
    runs = {
        "unet": {"label": "U-Net", "stopped": "plateau",
                 "points": _points([25, 27, 28, 28, 28, 28, 28, 28, 28, 28])},
        "clgnet": {"label": "CLGNet", "stopped": "plateau",
                   "points": _points([24, 26, 27, 28.5, 29, 29, 29, 29, 29, 29])},
        "slow": {"label": "slow", "stopped": "max_steps",
                 "points": _points([20, 21, 22, 23, 24, 25, 25, 25, 25, 25])},
    }
    rows = {r["run"]: r for r in summarize(runs)}
    assert rows["unet"]["psnr"] == pytest.approx(28.0)  # mean over steps 800..1000
    assert rows["clgnet"]["psnr"] == pytest.approx(29.0)
    assert rows["clgnet"]["reach_unet"]["step"] == 400
    assert rows["slow"]["reach_unet"] is None


def test_runs_are_read_at_equal_steps_and_equal_seconds_between_their_points():
    points = _points([20, 22, 23])  # steps 100, 200, 300 at 0, 1, 2 s
    assert read_at(points, "step", 150)["psnr"] == pytest.approx(21.0)
    assert read_at(points, "train_cpu_s", 1.75)["psnr"] == pytest.approx(22.75)
    assert read_at(points, "step", 100)["psnr"] == 20  # a point itself
    assert read_at(points, "step", 50) is None and read_at(points, "step", 301) is None

    slow = [dict(p, train_cpu_s=4 * p["train_cpu_s"]) for p in _points([21, 24, 25, 26])]
    runs = {"fast": {"points": points}, "slow": {"points": slow}}
    assert comparison_points(runs, "step") == [50, 100, 200, 400]  # up to "slow"'s end
    assert comparison_points(runs, "train_cpu_s") == pytest.approx([0.5, 1, 1.5, 2, 12])
    table = format_comparison(runs, "train_cpu_s", [2.0], lambda v: f"{v} s").splitlines()
    # At 2 s "fast" is at its third point (23 dB), "slow" half way to its second (22.5 dB).
    assert table[2].startswith("| fast | 23.00 /") and table[3].startswith("| slow | 22.50 /")
    assert format_comparison(runs, "step", [400], str).splitlines()[2] == "| fast | - |"


def _args(data: Path, out: Path, *extra: str):
    return ["bench", "curves", "--data_path", str(data), "--models", *TINY,
            "--eval-every", "2", "--max-steps", "6", "--min-steps", "100",
            "--vgg-weights", "random", "--output-dir", str(out), "--no-progress-bar", *extra]


@pytest.mark.slow
def test_curves_write_json_and_plot_and_skip_finished_runs(knee_data, tmp_path, capsys):
    out = tmp_path / "curves"
    assert main(_args(knee_data, out)) == 0
    report = json.loads((out / "curves.json").read_text(),
                        parse_constant=lambda c: pytest.fail(f"non-strict JSON: {c}"))
    assert set(report["runs"]) == {"unet_chans=4_num_pool_layers=2",
                                   "clgnet_chans=4_num_sfrir=1_num_sfrb=1"}
    for run in report["runs"].values():
        assert [p["step"] for p in run["points"]] == [2, 4, 6]
        assert run["stopped"] == "max_steps"
        times = [p["train_s"] for p in run["points"]]
        assert times == sorted(times) and times[0] > 0
        assert all(0 < p["ssim"] <= 1 and p["psnr"] > 0 for p in run["points"])
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(report["summary"]) == 2
    for label, run in report["runs"].items():
        # Each run's checkpoint says what it is, so predict and evaluate can load it.
        module, record = load_recorded(out / label / "last.ckpt")
        assert (record["model_kind"], record["challenge"]) == (run["model"], "singlecoil")
        assert type(module).__name__ == {"unet": "BridgedUnetModule",
                                         "clgnet": "CLGNetModule"}[run["model"]]

    capsys.readouterr()
    assert main(_args(knee_data, out)) == 0  # everything finished: nothing retrained
    assert capsys.readouterr().err.count("finished earlier") == 2

    # Other settings into the same folder would mix two experiments.
    assert main(_args(knee_data, out, "--acceleration", "8")) == 2

    capsys.readouterr()
    assert main(["bench", "curves", "--report", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "at equal steps" in printed and "| step 2 " not in printed  # steps 50, 100, ...
    assert "at equal training cpu time" in printed
    assert main(["bench", "curves", "--report", "--output-dir", str(tmp_path / "none")]) == 2


@pytest.mark.slow
@pytest.mark.reliability
def test_killed_curves_run_continues_where_it_stopped(knee_data, tmp_path):
    out = tmp_path / "curves"
    args = _args(knee_data, out)[:]
    args[args.index("--models") + 1:args.index("--eval-every")] = [TINY[1]]
    command = [sys.executable, "-m", "clgnet_fastmri", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    report = out / "curves.json"
    deadline = time.time() + 120
    steps = []
    while time.time() < deadline and proc.poll() is None:
        if report.is_file():
            runs = json.loads(report.read_text())["runs"]
            steps = [p["step"] for r in runs.values() for p in r["points"]]
            if steps:
                break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert steps and steps[-1] < 6, "the run should be killed before its end"

    assert subprocess.run(command, env=env, capture_output=True).returncode == 0
    (run,) = json.loads(report.read_text())["runs"].values()
    assert [p["step"] for p in run["points"]] == [2, 4, 6]  # none lost, none repeated
    assert run["stopped"] == "max_steps"


@pytest.mark.slow
def test_runs_ended_by_their_budget_continue_with_a_larger_one(knee_data, tmp_path):
    out = tmp_path / "curves"
    args = _args(knee_data, out)
    args[args.index("--models") + 1:args.index("--eval-every")] = [TINY[0]]
    assert main([*args, "--max-minutes", "1e-6"]) == 0
    (run,) = json.loads((out / "curves.json").read_text())["runs"].values()
    assert run["stopped"] == "max_minutes" and [p["step"] for p in run["points"]] == [1]

    assert main([*args, "--max-minutes", "60"]) == 0
    report = json.loads((out / "curves.json").read_text())
    (run,) = report["runs"].values()
    assert [p["step"] for p in run["points"]] == [1, 2, 4, 6]  # continued, none repeated
    assert run["stopped"] == "max_steps" and report["settings"]["max_minutes"] == 60


@pytest.mark.slow
def test_runs_stopped_at_a_plateau_continue_under_a_stricter_rule(knee_data, tmp_path):
    out = tmp_path / "curves"
    args = _args(knee_data, out)
    args[args.index("--models") + 1:args.index("--eval-every")] = [TINY[0]]
    args[args.index("--min-steps") + 1] = "2"
    assert main([*args, "--plateau-db", "100"]) == 0  # any gain is "too small"
    (run,) = json.loads((out / "curves.json").read_text())["runs"].values()
    assert run["stopped"] == "plateau" and [p["step"] for p in run["points"]] == [2, 4]

    assert main([*args, "--plateau-db", "100"]) == 0  # same rule: finished
    assert main([*args, "--plateau-db", "0"]) == 0  # no plateau stop: goes on
    (run,) = json.loads((out / "curves.json").read_text())["runs"].values()
    assert run["stopped"] == "max_steps" and [p["step"] for p in run["points"]] == [2, 4, 6]


@pytest.mark.slow
@pytest.mark.reliability
def test_a_run_does_not_resume_under_other_module_settings(knee_data, tmp_path, capsys):
    """A default changed since a run started (here: its checkpoint says another lr) would
    join two recipes in one curve: refused, naming the checkpoint and the setting."""
    out = tmp_path / "curves"
    args = _args(knee_data, out)
    args[args.index("--models") + 1:args.index("--eval-every")] = [TINY[0]]
    assert main([*args, "--max-minutes", "1e-6"]) == 0
    checkpoint = next(out.glob("*/last.ckpt"))
    state = torch.load(checkpoint, weights_only=True)
    state["hyper_parameters"]["lr"] = 0.5
    torch.save(state, checkpoint)
    before = (out / "curves.json").read_text()

    capsys.readouterr()
    assert main([*args, "--max-minutes", "60"]) == 2
    err = capsys.readouterr().err.strip()
    assert str(checkpoint) in err and "lr 0.5 there, 0.001 now" in err, err
    assert (out / "curves.json").read_text() == before  # the curve is left as it was
