"""Submission export (predict), official scoring (evaluate), figures, checkpoint loading."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from fastmri.data.subsample import RandomMaskFunc
from fastmri.evaluate import evaluate as fastmri_evaluate
from torch import nn
from torch.utils.data import DataLoader

from clgnet_fastmri import cli
from clgnet_fastmri.checkpoints import RECORD_KEY, load_clgnet, run_record
from clgnet_fastmri.data.mri_data import CheckedSliceDataset
from clgnet_fastmri.data.transforms import CLGNetDataTransform, KspaceTransform
from clgnet_fastmri.errors import DataError, UserError
from clgnet_fastmri.evaluate import evaluate_folder
from clgnet_fastmri.pl_modules.bridge import BridgedUnetModule, BridgedVarNetModule
from clgnet_fastmri.pl_modules.clgnet_module import CLGNetModule
from clgnet_fastmri.pl_modules.kinds import KINDS
from clgnet_fastmri.predict import (
    check_submission,
    predict,
    predict_volumes,
    reconstruct,
    submission_name,
)

TINY = dict(chans=4, num_sfrir=1, num_sfrb=1, vgg_weights=None)


def save_checkpoint(module, path: Path) -> Path:
    """What Lightning writes, reduced to the parts predict reads."""
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(CLGNetModule(**TINY), tmp_path_factory.mktemp("ckpt") / "m.ckpt")


@pytest.fixture(scope="module")
def submission(knee_data, checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("sub") / "submission"
    result = predict(
        checkpoint, knee_data / "singlecoil_test", out, figure=out.with_name("fig.png"),
        progress=False,
    )
    return out, result


def test_submission_has_the_leaderboard_layout(knee_data, submission):
    out, result = submission
    inputs = sorted(p.name for p in (knee_data / "singlecoil_test").iterdir())
    assert sorted(p.name for p in out.iterdir()) == inputs == sorted(result.names)
    for name in inputs:
        source_path = knee_data / "singlecoil_test" / name
        with h5py.File(source_path) as source, h5py.File(out / name) as hf:
            assert list(hf.keys()) == ["reconstruction"]
            recons = hf["reconstruction"]
            assert recons.dtype == np.float32
            assert recons.shape == (source["kspace"].shape[0], 32, 32)  # header reconSpace
            assert np.isfinite(recons[()]).all()
    with zipfile.ZipFile(result.zip_path) as archive:
        assert sorted(archive.namelist()) == inputs
        assert archive.testzip() is None


def test_submission_scores_through_the_cli_like_fastmri_evaluate(knee_data, submission, capsys):
    out, _ = submission
    gt = knee_data / "singlecoil_test_gt"
    assert cli.main(["evaluate", "--target-path", str(gt), "--predictions-path", str(out),
                     "--challenge", "singlecoil", "--output", str(out.parent / "m.json")]) == 0
    table = capsys.readouterr().out
    assert "PSNR" in table and "SSIM" in table
    ours = evaluate_folder(gt, out, "singlecoil").means()
    official = fastmri_evaluate(
        argparse.Namespace(target_path=gt, predictions_path=out, acquisition=None,
                           acceleration=None),
        "reconstruction_esc",
    ).means()
    # fastmri accumulates the float32 metric values in float32; we convert them to float first.
    for metric in ("MSE", "NMSE", "PSNR", "SSIM"):
        assert ours[metric] == pytest.approx(float(np.squeeze(official[metric])), rel=1e-6)


def test_evaluate_filters_like_fastmri(knee_data, submission):
    out, _ = submission
    gt = knee_data / "singlecoil_test_gt"
    for acceleration in (4, 8):
        args = argparse.Namespace(target_path=gt, predictions_path=out, acquisition=None,
                                  acceleration=acceleration)
        official = fastmri_evaluate(args, "reconstruction_esc")
        if len(official.metrics["NMSE"]) == 0:
            with pytest.raises(UserError):
                evaluate_folder(gt, out, "singlecoil", acceleration=acceleration)
            continue
        ours = evaluate_folder(gt, out, "singlecoil", acceleration=acceleration)
        assert ours.means()["NMSE"] == pytest.approx(official.means()["NMSE"], rel=1e-6)


def test_figure_has_the_expected_panels(submission):
    import matplotlib.image

    out, result = submission
    assert result.figure is not None and result.figure.is_file()
    image = matplotlib.image.imread(result.figure)
    assert image.shape[0] > 200 and image.shape[1] > 800  # two rows of five panels
    from clgnet_fastmri.figures import SliceView, save_figure

    truth = np.ones((8, 8), np.float32)
    titles = save_figure(
        [SliceView("v", truth, truth * 0.5, truth * 0.9, maxval=1.0)], out.parent / "one.png"
    )
    assert [t.split("\n")[0] for t in titles] == [
        "ground truth", "zero-filled", "CLGNet", "|zero-filled - truth|", "|CLGNet - truth|"
    ]
    assert "PSNR 20.00 dB" in titles[2]  # error 0.1 of peak 1


@pytest.mark.reliability
def test_missing_or_misshapen_prediction_is_named(knee_data, submission, tmp_path, capsys):
    out, _ = submission
    gt = knee_data / "singlecoil_test_gt"
    names = sorted(p.name for p in out.iterdir())
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in names[1:]:
        (broken / name).write_bytes((out / name).read_bytes())
    with pytest.raises(DataError, match=names[0]):
        evaluate_folder(gt, broken, "singlecoil")
    code = cli.main(["evaluate", "--target-path", str(gt), "--predictions-path", str(broken),
                     "--challenge", "singlecoil"])
    err = capsys.readouterr().err
    assert code == 2 and names[0] in err and "missing" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1

    with h5py.File(broken / names[0], "w") as hf:
        hf.create_dataset("reconstruction", data=np.zeros((1, 32, 32), np.float32))
    with pytest.raises(DataError, match=f"{names[0]}.*slices"):
        evaluate_folder(gt, broken, "singlecoil")
    with pytest.raises(DataError, match=r"shape \(1, 32, 32\), expected \(3, 32, 32\)"):
        check_submission(broken, knee_data / "singlecoil_test", "singlecoil", False)


def folder_bytes(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def zip_members(path: Path) -> dict:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


@pytest.mark.reliability
def test_interrupted_export_leaves_nothing_and_keeps_the_previous_one(
    knee_data, checkpoint, tmp_path, monkeypatch
):
    import clgnet_fastmri.predict as predict_module

    out = tmp_path / "sub"
    real_write = predict_module.write_volume
    calls = []

    def write_then_die(path, volume, shown=None):
        calls.append(path)
        if len(calls) == 2:
            # Die in the middle of the second file: after it was opened, before it is complete.
            def crash(*args, **kwargs):
                raise KeyboardInterrupt
            monkeypatch.setattr(h5py.Group, "create_dataset", crash)
        real_write(path, volume, shown)

    monkeypatch.setattr(predict_module, "write_volume", write_then_die)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        predict(checkpoint, knee_data / "singlecoil_test", out, progress=False)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []  # no folder, no zip, no staging or temporary file
    # Lightning's own answer to Ctrl-C (exit, then ignore Ctrl-C) is undone.
    assert signal.getsignal(signal.SIGINT) is handler

    predict(checkpoint, knee_data / "singlecoil_test", out, progress=False)
    before, zip_before = folder_bytes(out), out.with_suffix(".zip").read_bytes()
    calls.clear()
    monkeypatch.setattr(predict_module, "write_volume", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        predict(checkpoint, knee_data / "singlecoil_test", out, overwrite=True, progress=False)
    monkeypatch.undo()
    assert folder_bytes(out) == before and out.with_suffix(".zip").read_bytes() == zip_before
    assert sorted(os.listdir(tmp_path)) == ["sub", "sub.zip"]

    # What SIGKILL leaves (no chance to clean up): a staging folder of an export killed
    # while writing (no swap journal yet: undone), and one killed in its swap (journal
    # written, the old folder moved aside: finished). The next export repairs its own and
    # nobody else's, before anything else.
    (tmp_path / ".sub.staging.k2j4.partial").mkdir()
    (tmp_path / ".sub.staging.k2j4.partial" / "a.h5").write_bytes(b"half")
    (tmp_path / ".other.ckpt.a1.partial").write_bytes(b"someone else's")
    swap = tmp_path / ".sub.staging.x7.partial"
    (swap / ".replaced").mkdir(parents=True)
    shutil.copytree(out, swap / "sub")
    (swap / "sub" / next(iter(before))).write_bytes(b"the new submission")
    (swap / ".swap.json").write_text('["sub"]')
    os.rename(out, swap / ".replaced" / "sub")
    with pytest.raises(UserError, match="not empty"):  # the finished swap's folder is there
        predict(checkpoint, knee_data / "singlecoil_test", out, progress=False)
    assert (out / next(iter(before))).read_bytes() == b"the new submission"
    assert sorted(p.name for p in tmp_path.glob(".*")) == [".other.ckpt.a1.partial"]


@pytest.mark.reliability
def test_failed_overwrite_keeps_the_previous_submission_and_zip(
    knee_data, checkpoint, tmp_path, capsys, monkeypatch
):
    """A checkpoint whose weights went NaN: refused by name, the good submission stays."""
    out = tmp_path / "sub"
    predict(checkpoint, knee_data / "singlecoil_test", out, progress=False)
    before, zip_before = folder_bytes(out), out.with_suffix(".zip").read_bytes()
    state = torch.load(checkpoint, weights_only=True)
    state["state_dict"]["clgnet.net_out.weight"].fill_(float("nan"))
    torch.save(state, tmp_path / "nan.ckpt")
    code = cli.main(["predict", "--checkpoint", str(tmp_path / "nan.ckpt"), "--data_path",
                     str(knee_data / "singlecoil_test"), "--output", str(out), "--overwrite",
                     "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "nan.ckpt" in err and "NaN or Inf" in err, err
    assert folder_bytes(out) == before and out.with_suffix(".zip").read_bytes() == zip_before
    assert zip_members(out.with_suffix(".zip")) == before

    # Non-finite output from finite weights (here: the model's output made NaN) is refused
    # per volume, naming the input file, with the same guarantee.
    monkeypatch.setattr(CLGNetModule, "forward", lambda self, image: image * np.nan)
    with pytest.raises(DataError, match="reconstruction holds NaN or Inf"):
        predict(checkpoint, knee_data / "singlecoil_test", out, overwrite=True, progress=False)
    assert folder_bytes(out) == before and out.with_suffix(".zip").read_bytes() == zip_before


def first_batch(folder: Path, challenge: str, transform, batch_size: int):
    dataset = CheckedSliceDataset(folder, challenge, transform=transform)
    return next(iter(DataLoader(dataset, batch_size=batch_size)))


@pytest.mark.parametrize("module", [
    CLGNetModule(**TINY), BridgedUnetModule(chans=4, num_pool_layers=2),
], ids=["clgnet", "unet"])
def test_image_predict_steps_give_what_the_test_steps_save(knee_data, module):
    batch = first_batch(knee_data / "singlecoil_test", "singlecoil",
                        CLGNetDataTransform("singlecoil"), batch_size=2)
    with torch.inference_mode():
        predicted = module.eval().predict_step(batch, 0)
        tested = module.test_step(batch, 0)
    assert predicted.fname == tested["fname"] == batch.fname
    assert torch.equal(predicted.slice_num, tested["slice"])
    np.testing.assert_array_equal(predicted.images.numpy(), tested["output"])


def test_varnet_predict_step_gives_what_the_test_step_saves(multicoil_data):
    torch.manual_seed(0)
    module = BridgedVarNetModule(num_cascades=1, pools=2, chans=4, sens_pools=2,
                                 sens_chans=4).eval()
    # fastmri's VarNet takes one slice per batch.
    batch = first_batch(multicoil_data / "multicoil_test", "multicoil", KspaceTransform(),
                        batch_size=1)
    with torch.inference_mode():
        predicted = module.predict_step(batch, 0)
        tested = module.test_step(batch, 0)
    assert len(predicted.images) == 1 and predicted.images[0].shape == (32, 32)
    np.testing.assert_array_equal(predicted.images[0].numpy(), tested["output"][0])


def test_each_volume_is_written_before_the_next_is_predicted(knee_data, checkpoint,
                                                             monkeypatch):
    """One volume (and one batch) in memory at a time, whatever the test split's size."""
    events = []
    real = CLGNetModule.predict_step

    def recording(self, batch, batch_idx, dataloader_idx=0):
        events.append(("predicted", batch.fname[0]))
        return real(self, batch, batch_idx)

    monkeypatch.setattr(CLGNetModule, "predict_step", recording)
    dataset = CheckedSliceDataset(knee_data / "singlecoil_test", "singlecoil",
                                  transform=CLGNetDataTransform("singlecoil"))
    volumes = {}

    def write(fname, volume):
        events.append(("written", fname))
        volumes[fname] = volume

    module = CLGNetModule(**TINY)
    predict_volumes(module, dataset, write, progress=False)
    first, second = sorted(volumes)
    assert events == [("predicted", first)] * 3 + [("predicted", second), ("written", first)] \
        + [("predicted", second)] * 2 + [("written", second)]
    # The volumes of the Lightning run are those of the plain loop over the same network.
    monkeypatch.undo()
    assert {name: volume.shape for name, volume in volumes.items()} == {
        first: (3, 32, 32), second: (3, 32, 32)}
    for name, volume in reconstruct(module.clgnet, dataset, progress=False):
        np.testing.assert_array_equal(volume, volumes[name])
        assert volume.dtype == np.float32


def test_zero_filled_reconstruction_is_the_denormalised_input(knee_data):
    dataset = CheckedSliceDataset(knee_data / "singlecoil_test", "singlecoil",
                                  transform=CLGNetDataTransform("singlecoil"))
    expected = {}
    for sample in map(dataset.__getitem__, range(len(dataset))):
        expected.setdefault(sample.fname, []).append(sample.image * sample.std + sample.mean)
    volumes = dict(reconstruct(nn.Identity(), dataset, progress=False))
    assert volumes.keys() == expected.keys()
    for name, volume in volumes.items():
        np.testing.assert_array_equal(volume, torch.stack(expected[name]).numpy())


def test_precisions_run_through_lightning(knee_data, checkpoint, tmp_path):
    outputs = {}
    for precision in ("32", "bf16-true", "bf16"):
        out = tmp_path / precision
        predict(checkpoint, knee_data / "singlecoil_test", out, precision=precision,
                make_zip=False, progress=False)
        with h5py.File(out / "file_knee_test_0000.h5") as hf:
            outputs[precision] = hf["reconstruction"][()]
    scale = np.abs(outputs["32"]).max()
    for precision in ("bf16-true", "bf16"):
        assert outputs[precision].dtype == np.float32
        assert not np.array_equal(outputs[precision], outputs["32"])  # it did run in bfloat16
        np.testing.assert_allclose(outputs[precision], outputs["32"], atol=0.05 * scale)

    varnet = BridgedVarNetModule(num_cascades=1, pools=2, chans=4, sens_pools=2, sens_chans=4)
    path = tmp_path / "varnet.ckpt"
    torch.save({"state_dict": varnet.state_dict(), "hyper_parameters": dict(varnet.hparams),
                RECORD_KEY: run_record(KINDS["varnet"], "multicoil")}, path)
    with pytest.raises(UserError, match="VarNet runs its FFTs in the weights' dtype"):
        predict(path, knee_data / "singlecoil_test", tmp_path / "v", challenge="multicoil",
                precision="16-true", progress=False)
    assert not (tmp_path / "v").exists()


def test_v2_names_and_masked_fully_sampled_input(knee_data, checkpoint, tmp_path):
    mask = RandomMaskFunc([0.08], [4])
    result = predict(
        checkpoint, knee_data / "singlecoil_val", tmp_path / "val", mask_func=mask,
        v2_names=True, figure=tmp_path / "val.png", progress=False,
    )
    assert all(name.endswith("_v2.h5") for name in result.names)
    assert result.figure is not None  # the val files hold their own targets
    with zipfile.ZipFile(result.zip_path) as archive:
        assert sorted(archive.namelist()) == sorted(result.names)


@pytest.mark.reliability
def test_evaluate_matches_v2_names_and_says_so(knee_data, submission, tmp_path, capsys):
    out, _ = submission
    gt = knee_data / "singlecoil_test_gt"
    v2 = tmp_path / "v2"
    v2.mkdir()
    names = sorted(p.name for p in out.iterdir())
    for name in names:
        (v2 / submission_name(name, True)).write_bytes((out / name).read_bytes())
    args = ["evaluate", "--target-path", str(gt), "--challenge", "singlecoil"]
    assert cli.main([*args, "--predictions-path", str(v2)]) == 0
    printed = capsys.readouterr().out
    assert f"matched {len(names)} predictions" in printed and "_v2 rule" in printed
    scored = json.loads((tmp_path / "v2_metrics.json").read_text())
    assert scored["matched_v2"] == names
    plain = evaluate_folder(gt, out, "singlecoil")
    assert plain.matched_v2 == []
    for name, values in plain.volumes.items():  # the same numbers as under the plain names
        assert {m: scored["volumes"][name][m] for m in values} == values

    # One plain and one _v2 name: both matched, only the _v2 one reported as such.
    os.rename(v2 / submission_name(names[0], True), v2 / names[0])
    assert evaluate_folder(gt, v2, "singlecoil").matched_v2 == names[1:]
    # Both names for one target: ambiguous, refused.
    (v2 / submission_name(names[0], True)).write_bytes((out / names[0]).read_bytes())
    assert cli.main([*args, "--predictions-path", str(v2)]) == 2
    err = capsys.readouterr().err
    assert "both there" in err and submission_name(names[0], True) in err and names[0] in err


@pytest.mark.reliability
def test_predict_refuses_a_non_empty_output(knee_data, checkpoint, submission):
    out, _ = submission
    with pytest.raises(UserError, match="not empty"):
        predict(checkpoint, knee_data / "singlecoil_test", out, progress=False)


class _Payload:
    """Unpickling this would create a file: what a malicious checkpoint could do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.reliability
def test_checkpoint_errors_are_clear_and_pickles_never_run(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_clgnet(tmp_path / "nope.ckpt")
    (tmp_path / "garbage.ckpt").write_bytes(b"\x00not a checkpoint")
    with pytest.raises(UserError, match="not a readable PyTorch checkpoint"):
        load_clgnet(tmp_path / "garbage.ckpt")
    torch.save({"state_dict": {"unet.weight": torch.zeros(1)}, "hyper_parameters": {}},
               tmp_path / "foreign.ckpt")
    with pytest.raises(UserError, match="not a CLGNet checkpoint"):
        load_clgnet(tmp_path / "foreign.ckpt")
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {}, "hyper_parameters": _Payload(marker)}, tmp_path / "evil.ckpt")
    with pytest.raises(UserError, match="refused"):
        load_clgnet(tmp_path / "evil.ckpt")
    assert not marker.exists()
