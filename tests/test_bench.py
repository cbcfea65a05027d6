"""``clgnet-fastmri bench speed|quality`` at tiny sizes: they run end to end and report
finite numbers in the expected rows and columns. (No timing is asserted: speed is what the
benchmark measures, not what a test checks.)"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from clgnet_fastmri import cli
from clgnet_fastmri.bench.quality import parse_spec
from clgnet_fastmri.bench.speed import count_flops, timed
from clgnet_fastmri.errors import UserError
from clgnet_fastmri.models import layout


def test_flop_count_includes_the_ops_clgnet_and_attention_use():
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    assert count_flops(lambda: conv(torch.zeros(1, 1, 8, 8))) == 2 * 9 * 64
    out, a, b = torch.zeros(2, 3, 5), torch.zeros(2, 3, 4), torch.zeros(2, 4, 5)
    assert count_flops(lambda: out.baddbmm_(a, b)) == 2 * 2 * 3 * 4 * 5  # in place
    q = torch.zeros(1, 2, 16, 4)  # B x heads x N x d: QK^T and AV, 2 * N * N * d each
    flops = count_flops(lambda: nn.functional.scaled_dot_product_attention(q, q, q))
    assert flops == 2 * (2 * 2 * 16 * 16 * 4)


def test_timed_calls_are_interleaved_after_each_ones_warm_up():
    order = []
    calls = [lambda: order.append("unet"), lambda: order.append("clgnet")]
    results = timed(calls, warmup=2, repeats=3, device=torch.device("cpu"))
    assert len(results) == 2 and all(seconds >= 0 for seconds in results)
    # warm-up calls of each model, then rounds of one call each
    assert order == ["unet"] * 2 + ["clgnet"] * 2 + ["unet", "clgnet"] * 3


@pytest.mark.slow
def test_bench_speed_reports_every_model_with_unet_as_reference(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(layout, "_fixed", ())  # measured, whatever CLGNET_LAYOUT says
    out = tmp_path / "speed.json"
    threads = torch.get_num_threads()
    try:
        code = cli.main(["bench", "speed", "--sizes", "32", "--models", "clgnet", "sa",
                         "--warmup", "0", "--repeats", "1", "--batch-size", "2",
                         "--threads", "1", "--json", str(out)])
    finally:
        torch.set_num_threads(threads)  # --threads sets it for the whole process
    assert code == 0
    report = json.loads(out.read_text())
    rows = {r["model"]: r for r in report["rows"]}
    assert list(rows) == ["unet", "clgnet", "sa"]  # U-Net first: the reference
    keys = ("params", "gmac", "infer_s", "infer_ratio", "infer_peak_mb", "train_l1_s",
            "train_cl_s", "train_l1_gmac", "train_cl_gmac", "cl_time_share", "cl_flop_share")
    for row in rows.values():
        assert row["size"] == 32
        for key in keys:
            assert math.isfinite(row[key]), (row["model"], key)
        assert row["train_cl_gmac"] > row["train_l1_gmac"] > 2 * row["gmac"] > 0
    assert rows["unet"]["infer_ratio"] == rows["unet"]["train_cl_ratio"] == 1.0
    assert rows["unet"]["params"] == 7_756_097 and rows["clgnet"]["params"] == 969_153
    meta = report["meta"]
    assert meta["threads"] == 1 and meta["device"].startswith("cpu")
    assert meta["cpu"] and meta["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    ops = {choice["op"] for choice in meta["layouts"]}  # what the Fourier units measured
    assert {"rfft2", "irfft2"} <= ops
    assert all(c["chosen"] in c["seconds"] for c in meta["layouts"])
    table = capsys.readouterr().out
    assert "| U-Net (fastmri) |" in table and "| CLGNet_SA |" in table and "x U-Net" in table
    assert meta["cpu_capability"] in table.splitlines()[0] and "layouts chosen" in table


@pytest.mark.slow
def test_bench_quality_trains_scores_and_tabulates(knee_data, tmp_path, capsys):
    root = tmp_path / "quality"
    code = cli.main(["bench", "quality", "--data_path", str(knee_data), "--max-steps", "1",
                     "--batch-size", "2", "--models", "unet", "no-cl", "no-sfl",
                     "clgnet:lr=1e-3,alpha=0", "--output-dir", str(root)])
    assert code == 0
    runs = json.loads((root / "quality.json").read_text())["runs"]
    # Overrides are typed as the module's arguments: alpha is a float.
    assert [r["run"] for r in runs] == ["unet", "no-cl", "no-sfl", "clgnet_lr=0.001_alpha=0.0"]
    for run in runs:
        assert run["steps"] == 1 and run["num_volumes"] == 2  # the val split, scored
        assert all(math.isfinite(run["mean"][m]) for m in ("NMSE", "PSNR", "SSIM"))
        assert (root / run["run"] / "reconstructions").is_dir()
    assert runs[3]["overrides"] == {"lr": 0.001, "alpha": 0}
    out = capsys.readouterr().out
    assert "Table 3 (ablations):" in out  # w/o SFL and w/o L_CL
    assert "Table 1 (baseline):" not in out  # needs the unmodified CLGNet beside U-Net
    assert "| w/o SFL = CLGNet_non |" in out and "| CLGNet, lr=0.001, alpha=0.0 |" in out


def test_quality_model_specs_are_checked():
    assert parse_spec("sa") == ("sa", {})
    assert parse_spec("clgnet:lr=3e-4,lr_schedule=cosine,wavelet=None") == (
        "clgnet", {"lr": 3e-4, "lr_schedule": "cosine", "wavelet": None})
    with pytest.raises(UserError, match="unknown model"):
        parse_spec("resnet")
    with pytest.raises(UserError, match="key=value"):
        parse_spec("clgnet:lr")
    with pytest.raises(UserError, match="chans: must be an integer in"):
        parse_spec("clgnet:chans=0")


def test_bench_needs_a_subcommand(capsys):
    with pytest.raises(SystemExit):
        cli.main(["bench"])
    assert "speed" in capsys.readouterr().err
