"""The training demo end to end: train, resume, validate, test, and DDP on 2 CPU processes."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from clgnet_fastmri import cli
from clgnet_fastmri.checkpoints import RECORD_KEY
from clgnet_fastmri.config import resolve

pytestmark = pytest.mark.slow

@pytest.fixture
def train(tiny_argv):
    """``train(*options)``: ``clgnet-fastmri train`` of the tiny model; the exit code."""
    return lambda *args: cli.main(["train", *tiny_argv, *args])


def test_train_then_test_writes_reconstructions_metrics_and_figure(
    knee_data, tmp_path, capsys, train, tiny_argv
):
    root = tmp_path / "run"
    common = ["--data_path", str(knee_data), "--default_root_dir", str(root)]
    assert train(*common, "--max_epochs", "2") == 0
    checkpoints = sorted(p.name for p in (root / "checkpoints").iterdir())
    assert "last.ckpt" in checkpoints and any(n.startswith("best-") for n in checkpoints)
    # The run's resolved settings, saved; --config repeats them exactly.
    parser = cli.command_parser("train")
    saved = resolve(cli.parse(parser, ["--config", str(root / "config.yaml")]))
    assert saved == resolve(cli.parse(parser, [*tiny_argv, *common, "--max_epochs", "2"]))

    assert train(*common, "--mode", "test") == 0
    out = capsys.readouterr().out
    assert "Official fastMRI metrics" in out
    # The model and its zero-filled input side by side, with the metrics the README explains.
    lines = out.splitlines()
    header = lines.index(next(line for line in lines if line.split()[:1] == ["NMSE"]))
    assert lines[header].split() == ["NMSE", "PSNR", "SSIM", "BANDING"]
    for row, name in zip(lines[header + 2:header + 4], ("CLGNet", "zero-filled input")):
        assert row.startswith(name) and len(row[len(name):].split()) == 4, row
    test_files = sorted(p.name for p in (knee_data / "singlecoil_test").iterdir())
    assert sorted(p.name for p in (root / "reconstructions").iterdir()) == test_files
    metrics = json.loads((root / "metrics.json").read_text())
    assert metrics["num_volumes"] == len(test_files)
    assert np.isfinite(metrics["mean"]["PSNR"])
    assert (root / "reconstructions.png").stat().st_size > 0

    # Training again starts a new run folder beside the first, and says so.
    assert train(*common, "--max_steps", "1") == 0
    assert (tmp_path / "run-2" / "checkpoints" / "last.ckpt").is_file()
    assert f"this run goes to {tmp_path / 'run-2'}" in capsys.readouterr().out

    # The VGG19 weights the contrastive loss used, in the checkpoint, metrics and summary.
    used = {"vgg_weights": "random", "path": None, "sha256": None}
    last = torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)
    assert last[RECORD_KEY]["vgg_weights"] == used
    assert metrics["vgg_weights"] == used
    assert "randomly initialised VGG19" in out


@pytest.mark.reliability
def test_resume_continues_at_the_saved_step(knee_data, tmp_path, train):
    root = tmp_path / "run"
    common = ["--data_path", str(knee_data), "--default_root_dir", str(root)]
    assert train(*common, "--max_epochs", "1") == 0
    last = root / "checkpoints" / "last.ckpt"
    first = torch.load(last, weights_only=True)
    assert first["global_step"] == 3  # 6 training slices, batch 2
    assert train(*common, "--max_epochs", "2", "--resume") == 0
    second = torch.load(last, weights_only=True)
    assert second["global_step"] == 6
    assert second["epoch"] == 1
    adam_steps = {int(s["step"]) for s in second["optimizer_states"][0]["state"].values()}
    assert adam_steps == {6}  # the optimiser state came back with the checkpoint


@pytest.mark.reliability
def test_resume_or_test_with_other_settings_is_one_line_naming_both(knee_data, tmp_path, capsys,
                                                                    train):
    root = tmp_path / "run"
    common = ["--data_path", str(knee_data), "--default_root_dir", str(root)]
    assert train(*common, "--max_steps", "1") == 0
    capsys.readouterr()
    assert train(*common, "--max_steps", "2", "--chans", "8", "--resume") == 2
    err = capsys.readouterr().err.strip()
    last = str(root / "checkpoints" / "last.ckpt")
    assert len(err.splitlines()) == 1, err
    assert last in err and "trained as CLGNet(chans=4" in err and "asked for CLGNet(chans=8" in err
    # A checkpoint whose weights contradict its hyperparameters, in test mode.
    checkpoint = torch.load(last, weights_only=True)
    checkpoint["hyper_parameters"]["chans"] = 6
    crafted = tmp_path / "crafted.ckpt"
    torch.save(checkpoint, crafted)
    assert train(*common, "--mode", "test", "--checkpoint", str(crafted)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(crafted) in err and "chans=6" in err, err


@pytest.mark.reliability
def test_train_with_skip_bad_files_names_them_and_trains_on_the_rest(knee_data, tmp_path,
                                                                      caplog, train):
    root = tmp_path / "data"
    shutil.copytree(knee_data, root)
    bad = sorted((root / "singlecoil_train").glob("*.h5"))[0]
    bad.write_bytes(bad.read_bytes()[:1000])
    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        code = train("--data_path", str(root), "--default_root_dir", str(run), "--max_epochs",
                     "1", "--skip_bad_files")
    assert code == 0
    skipped = [r.getMessage() for r in caplog.records if "skipping bad file" in r.getMessage()]
    assert skipped and all(str(bad) in message for message in skipped)
    # The other volume's 3 slices at batch 2: 2 steps (both volumes would take 3).
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2


@pytest.mark.reliability
def test_resume_without_a_checkpoint_is_a_one_line_error(knee_data, tmp_path, capsys, train):
    code = train("--data_path", str(knee_data), "--default_root_dir", str(tmp_path), "--resume")
    err = capsys.readouterr().err
    assert code == 2 and "no checkpoint to resume from" in err and "Traceback" not in err


def test_demo_without_data_path_generates_trains_and_scores(tmp_path, monkeypatch, capsys, train):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = tmp_path / "demo"
    assert train("--default_root_dir", str(root), "--max_steps", "2",
                 "--limit_val_batches", "2") == 0
    [data] = (tmp_path / "cache" / "clgnet_fastmri").glob("synthetic-brain-*")
    # Its test volumes are masked at the acceleration the demo trains at (fastmri's 4x).
    tests = sorted((data / "singlecoil_test").glob("*.h5"))
    assert tests and all(h5py.File(f, "r").attrs["acceleration"] == 4 for f in tests)
    assert "Official fastMRI metrics" in capsys.readouterr().out
    assert (root / "metrics.json").is_file()


def run_module(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "clgnet_fastmri.train_clgnet_demo", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
    )


@pytest.mark.reliability
def test_ddp_on_two_cpu_processes_matches_one_process(knee_data, tmp_path, tiny_argv):
    """fastmri's VolumeSampler sends each val/test volume whole to one rank and the bridge
    sums the per-volume metrics over ranks, so 2 processes give 1 process's numbers and
    reconstructions."""
    train_root = tmp_path / "train"
    trained = run_module(*tiny_argv, "--data_path", str(knee_data), "--default_root_dir",
                         str(train_root), "--max_epochs", "1", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-2000:]
    checkpoint = str(train_root / "checkpoints" / "last.ckpt")

    results = {}
    for name, devices in (("one", ["--devices", "1"]), ("two", ["--devices", "2",
                                                                "--strategy", "ddp"])):
        root = tmp_path / name
        for mode in ("validate", "test"):
            done = run_module(*tiny_argv, "--data_path", str(knee_data), "--default_root_dir",
                              str(root), "--accelerator", "cpu", *devices, "--mode", mode,
                              "--checkpoint", checkpoint, cwd=tmp_path)
            assert done.returncode == 0, done.stderr[-3000:]
        results[name] = root
    one = json.loads((results["one"] / "validation_metrics.json").read_text())
    two = json.loads((results["two"] / "validation_metrics.json").read_text())
    # validation_loss is not among them: fastmri averages it over batches (not volumes), and
    # VolumeSampler pads each rank with repeated slices, so it depends on the process count.
    for key in ("val_metrics/nmse", "val_metrics/psnr", "val_metrics/ssim"):
        assert two[key] == pytest.approx(one[key], rel=1e-5), key
    files = sorted(p.name for p in (results["one"] / "reconstructions").iterdir())
    assert files == sorted(p.name for p in (results["two"] / "reconstructions").iterdir())
    for name in files:
        with h5py.File(results["one"] / "reconstructions" / name) as a, \
                h5py.File(results["two"] / "reconstructions" / name) as b:
            np.testing.assert_allclose(a["reconstruction"][()], b["reconstruction"][()],
                                       rtol=1e-5, atol=1e-9)
