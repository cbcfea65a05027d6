"""Bad input at every entry point, full disks, hard interruption, atomic checkpoints.

Run alone with ``python -m pytest -m reliability``. (The DDP equality test is in
test_train_demo.py, the pickle-cache and bad-file tests of the datasets in test_data.py, the
interrupted and failed exports in test_predict.py, make-data's bad input in
test_synthetic.py.)
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from fastmri.data.subsample import RandomMaskFunc

from clgnet_fastmri import cli, files
from clgnet_fastmri.checkpoints import RECORD_KEY, AtomicCheckpointIO, run_record
from clgnet_fastmri.data.checks import check_volume
from clgnet_fastmri.data.mri_data import CheckedSliceDataset
from clgnet_fastmri.data.synthetic import make_dataset
from clgnet_fastmri.data.transforms import CLGNetDataTransform
from clgnet_fastmri.errors import DataError, UserError
from clgnet_fastmri.figures import SliceView, save_figure
from clgnet_fastmri.files import write_json, write_volume
from clgnet_fastmri.pl_modules.clgnet_module import CLGNetModule
from clgnet_fastmri.pl_modules.data_module import CLGNetDataModule
from clgnet_fastmri.pl_modules.kinds import KINDS
from clgnet_fastmri.predict import predict, write_zip

pytestmark = pytest.mark.reliability

TINY = [
    "--chans", "4", "--num_sfrir", "1", "--num_sfrb", "1", "--vgg_weights", "random",
    "--batch_size", "2", "--no_progress_bar", "--logger", "csv", "--k_negatives", "2",
]


def one_line_error(capsys, *names: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    for name in names:
        assert name in err, err
    return err


def copy_dataset(knee_data: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(knee_data, root)
    return root


def test_train_names_a_corrupt_file(knee_data, tmp_path, capsys):
    root = copy_dataset(knee_data, tmp_path)
    bad = sorted((root / "singlecoil_train").glob("*.h5"))[0]
    bad.write_bytes(bad.read_bytes()[:1000])
    code = cli.main(["train", *TINY, "--num_workers", "0", "--data_path", str(root),
                     "--default_root_dir", str(tmp_path / "run"), "--max_epochs", "1"])
    assert code == 2
    one_line_error(capsys, str(bad), "not a readable HDF5 file")


def test_train_names_a_non_finite_slice_read_by_a_worker(knee_data, tmp_path, capsys):
    root = copy_dataset(knee_data, tmp_path)
    bad = sorted((root / "singlecoil_train").glob("*.h5"))[1]
    with h5py.File(bad, "r+") as hf:
        kspace = hf["kspace"][()]
        kspace[2] = np.inf
        del hf["kspace"]
        hf.create_dataset("kspace", data=kspace)
    code = cli.main(["train", *TINY, "--num_workers", "2", "--data_path", str(root),
                     "--default_root_dir", str(tmp_path / "run"), "--max_epochs", "1"])
    assert code == 2
    one_line_error(capsys, str(bad), "slice 2 of 'kspace' contains NaN or Inf")


def test_train_with_skip_bad_files_runs_past_them(knee_data, tmp_path, capsys, caplog):
    root = copy_dataset(knee_data, tmp_path)
    train = root / "singlecoil_train"
    (train / "notes.txt").write_text("not data")
    (train / "gone.h5").symlink_to(tmp_path / "nowhere.h5")
    (train / "loop.h5").symlink_to(train / "loop.h5")
    with caplog.at_level(logging.WARNING):
        code = cli.main(["train", *TINY, "--num_workers", "0", "--data_path", str(root),
                         "--default_root_dir", str(tmp_path / "run"), "--max_epochs", "1",
                         "--skip_bad_files"])
    assert code == 0
    assert f"{train}: left out 3 bad files" in caplog.text
    for name, why in (("gone.h5", "dangling symbolic link"), ("loop.h5", "symbolic link loop"),
                      ("notes.txt", "not a readable HDF5 file")):
        assert re.search(f"skipping bad file: {re.escape(str(train / name))}: {why}",
                         caplog.text), caplog.text


def test_train_on_an_empty_or_missing_folder(tmp_path, capsys):
    (tmp_path / "singlecoil_train").mkdir()
    (tmp_path / "singlecoil_val").mkdir()
    code = cli.main(["train", *TINY, "--num_workers", "0", "--data_path", str(tmp_path),
                     "--default_root_dir", str(tmp_path / "run")])
    assert code == 2
    one_line_error(capsys, "singlecoil_train", "holds no files")
    code = cli.main(["train", *TINY, "--num_workers", "0", "--data_path",
                     str(tmp_path / "nowhere"), "--default_root_dir", str(tmp_path / "run")])
    assert code == 2
    one_line_error(capsys, "nowhere", "folder not found")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    module = CLGNetModule(chans=4, num_sfrir=1, num_sfrb=1, vgg_weights=None)
    path = tmp_path_factory.mktemp("ckpt") / "m.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                RECORD_KEY: run_record(KINDS["clgnet"], "singlecoil")}, path)
    return path


def test_predict_names_a_foreign_file_and_writes_nothing(knee_data, tmp_path, checkpoint, capsys):
    root = copy_dataset(knee_data, tmp_path)
    stray = root / "singlecoil_test" / "scan.dcm"
    stray.write_bytes(b"DICM")
    out = tmp_path / "sub"
    code = cli.main(["predict", "--checkpoint", str(checkpoint), "--data_path",
                     str(root / "singlecoil_test"), "--output", str(out), "--quiet"])
    assert code == 2
    one_line_error(capsys, str(stray), "not a readable HDF5 file")
    assert not out.exists() and not out.with_suffix(".zip").exists()


def test_predict_into_an_unwritable_place(knee_data, tmp_path, checkpoint, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = cli.main(["predict", "--checkpoint", str(checkpoint), "--data_path",
                     str(knee_data / "singlecoil_test"), "--output", str(blocker / "sub"),
                     "--quiet"])
    assert code == 2
    one_line_error(capsys, str(blocker / "sub"), "cannot create the output folder")


def test_evaluate_names_non_finite_predictions_and_empty_targets(knee_data, tmp_path, capsys):
    predictions = tmp_path / "pred"
    predictions.mkdir()
    for path in (knee_data / "singlecoil_test_gt").glob("*.h5"):
        with h5py.File(path) as src, h5py.File(predictions / path.name, "w") as dst:
            recons = src["reconstruction_esc"][()]
            recons[0, 0, 0] = np.nan
            dst.create_dataset("reconstruction", data=recons)
    args = ["evaluate", "--predictions-path", str(predictions), "--challenge", "singlecoil"]
    assert cli.main([*args, "--target-path", str(knee_data / "singlecoil_test_gt")]) == 2
    one_line_error(capsys, str(predictions), "NaN or Inf")
    (tmp_path / "empty").mkdir()
    assert cli.main([*args, "--target-path", str(tmp_path / "empty")]) == 2
    one_line_error(capsys, "empty", "holds no files")


def test_atomic_checkpoint_io_never_leaves_a_partial_file(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, path)
    real_save = torch.save

    def save_half_then_die(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", save_half_then_die)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 2}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert os.listdir(path.parent) == ["last.ckpt"]
    assert io.load_checkpoint(path)["global_step"] == 1  # the previous one, intact


def _global_step(path: Path) -> int:
    try:
        return int(torch.load(path, weights_only=True)["global_step"])
    except (FileNotFoundError, RuntimeError, EOFError):
        return -1


@pytest.mark.slow
def test_sigkill_between_checkpoints_then_resume_ends_like_an_uninterrupted_run(
    knee_data, tmp_path
):
    """3 steps per epoch, 8 epochs, a checkpoint every 4 steps (so mid-epoch: steps 4, 8, 16,
    20): kill the run hard once it has written one, resume from last.ckpt, and expect the
    uninterrupted run's 24 steps in 8 epochs."""
    args = [sys.executable, "-m", "clgnet_fastmri.train_clgnet_demo", *TINY,
            "--num_workers", "0", "--data_path", str(knee_data), "--max_epochs", "8",
            "--checkpoint_every_n_steps", "4", "--default_root_dir", str(tmp_path / "run")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while _global_step(last) < 4:
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = _global_step(last)
    assert killed_at in (4, 8), killed_at  # mid-epoch, with steps still to run
    for ckpt in (tmp_path / "run" / "checkpoints").glob("*.ckpt"):
        torch.load(ckpt, weights_only=True)  # every visible checkpoint is complete
    # What a kill in the middle of a save leaves (this kill may or may not have hit one).
    (last.parent / ".last.ckpt.kill9.partial").write_bytes(b"half a checkpoint")

    resumed = subprocess.run([*args, "--resume"], env=env, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    final = torch.load(last, weights_only=True)
    assert final["global_step"] == 24
    assert not list(last.parent.glob(".*.partial"))  # the resumed run cleared it
    assert final["epoch"] == 7
    adam_steps = {int(s["step"]) for s in final["optimizer_states"][0]["state"].values()}
    assert adam_steps == {24}


# --- Writes that cannot lie: a full disk, a failed or interrupted write ---------------------


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 2 MiB tmpfs, where writes fail with ENOSPC as on a full disk."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path, leave: int) -> None:
    """Leave only ``leave`` bytes free on ``folder``'s file system."""
    (folder / "filler").write_bytes(b"\0" * (shutil.disk_usage(folder).free - leave))


def listing(folder: Path) -> list:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def folder_bytes(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.slow
def test_predict_on_a_full_disk_fails_cleanly_and_keeps_the_previous_submission(
    knee_data, checkpoint, small_tmpfs, capsys
):
    """The issue's reproduction: libhdf5 used to swallow ENOSPC, put a file of zeros under
    the final name and crash (exit 139). Run in a subprocess so a crash is seen as such."""
    out = small_tmpfs / "sub"
    predict(checkpoint, knee_data / "singlecoil_test", out, progress=False)
    before, zip_before = folder_bytes(out), out.with_suffix(".zip").read_bytes()
    fill(small_tmpfs, 20 * 1024)  # room for one volume file, not two
    done = subprocess.run(
        [sys.executable, "-m", "clgnet_fastmri", "predict", "--checkpoint", str(checkpoint),
         "--data_path", str(knee_data / "singlecoil_test"), "--output", str(out),
         "--overwrite", "--quiet"],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    err = done.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert re.fullmatch(r"clgnet-fastmri predict: error: \S+\.h5: no space left on .*", err)
    assert folder_bytes(out) == before and out.with_suffix(".zip").read_bytes() == zip_before
    assert listing(small_tmpfs) == sorted(["filler", "sub", "sub.zip",
                                           *(f"sub/{n}" for n in before)])

    # A first export: nothing at all under a final name.
    assert cli.main(["predict", "--checkpoint", str(checkpoint), "--data_path",
                     str(knee_data / "singlecoil_test"), "--output",
                     str(small_tmpfs / "new"), "--quiet"]) == 2
    one_line_error(capsys, "no space left on")
    assert not (small_tmpfs / "new").exists() and not (small_tmpfs / "new.zip").exists()
    assert not list(small_tmpfs.glob(".*"))


def test_every_writer_on_a_full_disk_says_so_and_leaves_nothing(
    knee_data, small_tmpfs, tmp_path
):
    fill(small_tmpfs, 8 * 1024)
    volume = np.random.default_rng(0).random((4, 64, 64), dtype=np.float32)
    with pytest.raises(UserError, match="v.h5: no space left on"):
        write_volume(small_tmpfs / "v.h5", volume)
    with pytest.raises(UserError, match="m.json: no space left on"):
        write_json(small_tmpfs / "m.json", {"volumes": volume[0].tolist()})
    truth = volume[0]
    with pytest.raises(UserError, match="f.png: no space left on"):
        save_figure([SliceView("v", truth, truth * 0.5, truth * 0.9, 1.0)] * 2,
                    small_tmpfs / "f.png")
    with pytest.raises(UserError, match="last.ckpt: no space left on"):  # torch.save's writer
        AtomicCheckpointIO().save_checkpoint({"w": torch.randn(100_000)},
                                             small_tmpfs / "last.ckpt")
    (tmp_path / "big.h5").write_bytes(np.random.default_rng(1).bytes(64 * 1024))
    with pytest.raises(UserError, match="s.zip: no space left on"):
        write_zip(small_tmpfs / "s.zip", tmp_path, ["big.h5"])
    with pytest.raises(UserError, match="GB are free|no space left on"):
        make_dataset(small_tmpfs / "data", size=32, num_slices=3, splits={"train": 4},
                     progress=False)
    assert listing(small_tmpfs) == ["filler"]


@pytest.fixture
def failing_writes(tmp_path, monkeypatch):
    """``os.write`` under ``tmp_path`` writes part of its data, then fails with ENOSPC:
    a full disk anywhere, without mounting one."""
    real_write = os.write

    def write(fd, data):
        if not os.readlink(f"/proc/self/fd/{fd}").startswith(str(tmp_path)):
            return real_write(fd, data)
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", write)


def test_a_full_disk_is_one_line_at_every_entry_point(
    knee_data, checkpoint, tmp_path, failing_writes, capsys
):
    with pytest.raises(UserError, match="no space left on"):
        make_dataset(tmp_path / "data", size=32, num_slices=3, splits={"train": 1},
                     progress=False)
    assert not (tmp_path / "data").exists()
    assert cli.main(["predict", "--checkpoint", str(checkpoint), "--data_path",
                     str(knee_data / "singlecoil_test"), "--output", str(tmp_path / "sub"),
                     "--quiet"]) == 2
    one_line_error(capsys, str(tmp_path / "sub"), "no space left on")
    gt = knee_data / "singlecoil_test_gt"
    predictions = tmp_path / "pred"
    predictions.mkdir()
    for path in gt.iterdir():  # libhdf5 writes without os.write
        with h5py.File(path) as src, h5py.File(predictions / path.name, "w") as dst:
            dst.create_dataset("reconstruction", data=src["reconstruction_esc"][()] * 0.9)
    assert cli.main(["evaluate", "--target-path", str(gt), "--predictions-path",
                     str(predictions), "--challenge", "singlecoil", "--skip-nonfinite",
                     "--output", str(tmp_path / "m.json")]) == 2
    one_line_error(capsys, "m.json: no space left on")
    assert os.listdir(tmp_path) == ["pred"]


def tiny_test_run(knee_data: Path, root: Path, make_trainer):
    """``train --mode test``'s saving path: fastmri's test loop through the bridge."""
    mask = RandomMaskFunc([0.08], [4], seed=0)
    data = CLGNetDataModule(
        data_path=knee_data, challenge="singlecoil",
        train_transform=CLGNetDataTransform("singlecoil", mask, use_seed=False),
        val_transform=CLGNetDataTransform("singlecoil", mask),
        test_transform=CLGNetDataTransform("singlecoil", mask),
        batch_size=2, num_workers=0,
    )
    module = CLGNetModule(chans=4, num_sfrir=1, num_sfrb=1, vgg_weights=None)
    make_trainer(root).test(module, datamodule=data, verbose=False)


def test_test_mode_reconstructions_are_written_atomically(
    knee_data, tmp_path, make_trainer, monkeypatch
):
    root = tmp_path / "run"
    tiny_test_run(knee_data, root, make_trainer)
    saved = sorted(p.name for p in (root / "reconstructions").iterdir())
    assert saved == sorted(p.name for p in (knee_data / "singlecoil_test").iterdir())
    for name in saved:
        with h5py.File(root / "reconstructions" / name) as hf:
            assert hf["reconstruction"].shape == (3, 32, 32)
    shutil.rmtree(root)

    real_write = files.write_volume
    calls = []

    def write_then_die(path, volume, shown=None):
        calls.append(path)
        if len(calls) == 2:
            monkeypatch.setattr(h5py.Group, "create_dataset", _crash)
        real_write(path, volume, shown)

    # (Lightning turns a KeyboardInterrupt into its own shutdown; any error is the same here.)
    monkeypatch.setattr(files, "write_volume", write_then_die)
    with pytest.raises(RuntimeError, match="killed"):
        tiny_test_run(knee_data, root, make_trainer)
    monkeypatch.undo()
    assert os.listdir(root / "reconstructions") == [calls[0].name]  # complete, nothing else


def _crash(*args, **kwargs):
    raise RuntimeError("killed while writing")


def test_test_mode_on_a_full_disk_names_the_file(
    knee_data, tmp_path, make_trainer, failing_writes
):
    with pytest.raises(UserError, match=r"reconstructions/\S+\.h5: no space left on"):
        tiny_test_run(knee_data, tmp_path / "run", make_trainer)
    assert os.listdir(tmp_path / "run" / "reconstructions") == []


def test_a_file_that_does_not_read_back_as_written_is_refused(tmp_path, monkeypatch):
    """What libhdf5 did on a full disk (a file of zeros under the final name), made to
    happen on purpose: the verification catches it and nothing is renamed into place."""
    real_write_all = files._write_all

    def write_zeros(path, data):
        real_write_all(path, data)
        with open(path, "r+b") as f:
            f.seek(len(data) // 2)
            f.write(b"\0" * (len(data) - len(data) // 2))

    monkeypatch.setattr(files, "_write_all", write_zeros)
    volume = np.ones((3, 32, 32), np.float32)
    with pytest.raises(UserError, match="v.h5: the file written does not read back as written"):
        write_volume(tmp_path / "v.h5", volume)
    with pytest.raises(UserError, match="does not read back as written"):
        write_json(tmp_path / "m.json", {"a": list(range(100))})
    assert os.listdir(tmp_path) == []



def test_a_png_cut_short_is_refused(tmp_path):
    """A PNG ends with its IEND chunk: one written without it is not renamed into place."""
    class CutShort:
        def savefig(self, path, format, dpi):
            Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)

    with pytest.raises(UserError, match="f.png: the file written does not read back"):
        files.write_png(tmp_path / "f.png", CutShort(), 100)
    assert os.listdir(tmp_path) == []


def test_writability_is_tried_not_asked(tmp_path, monkeypatch):
    """``os.access`` reads permission bits (root passes them everywhere); /proc refuses new
    files whatever they say. The probe file is removed again."""
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: True)
    with pytest.raises(UserError, match="/proc: the output folder is not writable"):
        files.ensure_writable_dir("/proc")
    with pytest.raises(UserError, match="cannot write in /proc; choose another --json"):
        files.check_output_file("/proc/m.json", "--json")
    assert files.ensure_writable_dir(tmp_path) == tmp_path and os.listdir(tmp_path) == []


# --- Nothing a user has is lost: outputs that overlap inputs ---------------------------------


def test_predict_refuses_outputs_that_overlap_its_inputs(
    knee_data, checkpoint, tmp_path, capsys, monkeypatch
):
    root = copy_dataset(knee_data, tmp_path)
    test = root / "singlecoil_test"
    ckpt = tmp_path / "run" / "m.ckpt"
    ckpt.parent.mkdir()
    shutil.copy(checkpoint, ckpt)
    (tmp_path / "link").symlink_to(test)
    before = folder_bytes(test)
    cases = [
        (test, "--output is the input --data_path"),
        (test / "sub", "--output is inside the input --data_path"),
        (root, "--output contains the input --data_path"),
        (tmp_path / "link", "--output is the input --data_path"),
        (tmp_path / "run", "--output contains the input --checkpoint"),
    ]
    for output, message in cases:
        code = cli.main(["predict", "--checkpoint", str(ckpt), "--data_path", str(test),
                         "--output", str(output), "--overwrite", "--quiet"])
        assert code == 2
        one_line_error(capsys, str(output), message)
        assert folder_bytes(test) == before and ckpt.read_bytes() == checkpoint.read_bytes()
    code = cli.main(["predict", "--checkpoint", str(ckpt), "--data_path", str(test),
                     "--output", str(tmp_path / "sub"), "--figure", str(test / "f.png"),
                     "--quiet"])
    assert code == 2
    one_line_error(capsys, "--figure is inside the input --data_path")

    monkeypatch.chdir(tmp_path)
    for output in (".", "..", "sub/.."):
        assert cli.main(["predict", "--checkpoint", str(ckpt), "--data_path", str(test),
                         "--output", output, "--overwrite", "--quiet"]) == 2
        one_line_error(capsys, f"--output {output}", "give the submission folder a name")

    # --overwrite replaces a previous submission, never a folder holding other things.
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "old.h5").write_bytes(b"x")
    (mixed / "notes.txt").write_text("mine")
    assert cli.main(["predict", "--checkpoint", str(ckpt), "--data_path", str(test),
                     "--output", str(mixed), "--overwrite", "--quiet"]) == 2
    one_line_error(capsys, "holds notes.txt, which is not part of a submission")
    assert sorted(os.listdir(mixed)) == ["notes.txt", "old.h5"]
    assert folder_bytes(test) == before


def test_evaluate_refuses_a_json_among_its_inputs_and_takes_dot(
    knee_data, tmp_path, capsys, monkeypatch
):
    gt = copy_dataset(knee_data, tmp_path) / "singlecoil_test_gt"
    predictions = tmp_path / "pred"
    predictions.mkdir()
    for path in gt.iterdir():
        with h5py.File(path) as src, h5py.File(predictions / path.name, "w") as dst:
            dst.create_dataset("reconstruction", data=src["reconstruction_esc"][()] * 0.9)
    args = ["evaluate", "--target-path", str(gt), "--challenge", "singlecoil"]
    for output, message in ((gt / "m.json", "is inside the input --target-path"),
                            (predictions / "m.json", "is inside the input --predictions-path"),
                            (gt / "file_knee_test_0000.h5", "is inside the input"),
                            (predictions, "is the input --predictions-path")):
        assert cli.main([*args, "--predictions-path", str(predictions), "--output",
                         str(output)]) == 2
        one_line_error(capsys, str(output), message)
    assert len(os.listdir(predictions)) == 2 and len(os.listdir(gt)) == 2

    monkeypatch.chdir(predictions)
    assert cli.main([*args, "--predictions-path", "."]) == 0
    assert f"metrics written to {tmp_path / 'pred_metrics.json'}" in capsys.readouterr().out
    assert json.loads((tmp_path / "pred_metrics.json").read_text())["num_volumes"] == 2


class Killed(BaseException):
    """The process died: nothing after this point runs, no handler can touch the disk."""


def kill_at_rename(monkeypatch, n: int) -> list:
    """Make the ``n``-th ``os.rename``/``os.replace`` the last thing the process does: it and
    every later rename or removal raise ``Killed``. Returns a flag list, true once killed."""
    killed, count = [], [0]
    for name in ("rename", "replace", "unlink", "rmdir"):
        real = getattr(os, name)

        def fake(*args, _real=real, _renames=name in ("rename", "replace"), **kwargs):
            if _renames and not killed:
                count[0] += 1
                if count[0] == n:
                    killed.append(n)
            if killed:
                raise Killed
            return _real(*args, **kwargs)

        monkeypatch.setattr(os, name, fake)
    return killed


def tree_bytes(folder: Path) -> dict:
    """Every file's bytes; a zip's members (its own bytes hold the time it was written)."""
    return {str(p.relative_to(folder)): read_zip(p) if p.suffix == ".zip" else p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def read_zip(path: Path) -> dict:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_a_kill_at_any_rename_of_a_make_data_swap_loses_nothing(tmp_path, monkeypatch):
    out = tmp_path / "data"
    spec = dict(anatomy="knee", size=32, num_slices=1, splits={"train": 1, "val": 1},
                overwrite=True, progress=False)
    make_dataset(out, seed=0, **spec)
    (out / "notes.txt").write_text("mine")  # not a split folder: never touched
    old = tree_bytes(out)
    make_dataset(tmp_path / "new", seed=1, **spec)
    new = {**tree_bytes(tmp_path / "new"), "notes.txt": b"mine"}
    for n in range(1, 100):
        shutil.rmtree(out)
        make_dataset(out, seed=0, **spec)
        (out / "notes.txt").write_text("mine")
        with monkeypatch.context() as patch:
            killed = kill_at_rename(patch, n)
            try:
                make_dataset(out, seed=1, **spec)
            except Killed:
                pass
        if not killed:
            break
        files.recover_swaps(out, ".make-data-")  # what the next make-data does first
        assert tree_bytes(out) in (old, new), f"killed at rename {n}"
        assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    assert n > 5 and tree_bytes(out) == new


def test_a_kill_at_any_rename_of_a_predict_swap_loses_nothing(
    knee_data, checkpoint, tmp_path, monkeypatch
):
    """The submission folder and its zip are swapped together: never one without the other."""
    import clgnet_fastmri.predict as predict_module

    other = tmp_path / "other.ckpt"
    torch.manual_seed(1)
    module = CLGNetModule(chans=4, num_sfrir=1, num_sfrb=1, vgg_weights=None)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                RECORD_KEY: run_record(KINDS["clgnet"], "singlecoil")}, other)
    runs = tmp_path / "runs"
    runs.mkdir()
    out = runs / "sub"
    data = knee_data / "singlecoil_test"
    predict(other, data, out, progress=False)
    new = tree_bytes(runs)
    shutil.rmtree(runs)
    runs.mkdir()
    predict(checkpoint, data, out, progress=False)
    old = tree_bytes(runs)
    assert old.keys() == new.keys() and old != new
    for n in range(1, 100):
        with monkeypatch.context() as patch:
            killed = kill_at_rename(patch, n)
            try:
                predict(other, data, out, overwrite=True, progress=False)
            except Killed:
                pass
        if not killed:
            break
        # What the next predict into the same output does first.
        predict_module.check_outputs(out, out.with_name("sub.zip"), None, True, {})
        state = tree_bytes(runs)
        assert state in (old, new), f"killed at rename {n}"
        assert [p.name for p in runs.iterdir() if p.name.startswith(".")] == []
        if state == new:  # back to the old one for the next kill
            shutil.rmtree(runs)
            runs.mkdir()
            predict(checkpoint, data, out, progress=False)
    assert n > 5 and tree_bytes(runs) == new


# --- Data folders: bad entries and impossible sizes ------------------------------------------


def bad_entries(folder: Path, tmp_path: Path, monkeypatch) -> dict:
    """A dangling link, a link loop, a FIFO and an unreadable file, with what to say."""
    (folder / "a_gone.h5").symlink_to(tmp_path / "nowhere.h5")
    (folder / "b_loop.h5").symlink_to(folder / "b_loop.h5")
    os.mkfifo(folder / "c_pipe.h5")
    locked = folder / "d_locked.h5"
    shutil.copy(sorted(folder.glob("file*.h5"))[0], locked)
    locked.chmod(0)
    if os.geteuid() == 0:  # root reads everything: be the user chmod 0 stops
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if (
            Path(path) == locked and mode & os.R_OK) else real_access(path, mode, **kw))
    return {
        "a_gone.h5": f"dangling symbolic link (its target {tmp_path / 'nowhere.h5'} does not",
        "b_loop.h5": "symbolic link loop",
        "c_pipe.h5": "not a regular file",
        "d_locked.h5": "not readable (permission denied)",
    }


def test_bad_folder_entries_are_named_or_skipped_and_counted(
    knee_data, tmp_path, monkeypatch, caplog
):
    folder = copy_dataset(knee_data, tmp_path) / "singlecoil_train"
    (folder / "subfolder").mkdir()  # not a volume, not an error
    expected = bad_entries(folder, tmp_path, monkeypatch)
    with pytest.raises(DataError) as raised:
        CheckedSliceDataset(folder, "singlecoil")
    assert str(raised.value).startswith(f"{folder / 'a_gone.h5'}: {expected['a_gone.h5']}")
    with caplog.at_level(logging.WARNING):
        dataset = CheckedSliceDataset(folder, "singlecoil", skip_bad_files=True)
    assert {p.name: str(e) for p, e in dataset.skipped_files.items()}.keys() == expected.keys()
    for path, exc in dataset.skipped_files.items():
        assert expected[path.name] in str(exc)
    assert f"left out {len(expected)} bad files" in caplog.text
    assert len(dataset) == 2 * 3  # the two good volumes, every slice


def test_predict_and_evaluate_name_a_dangling_link(knee_data, checkpoint, tmp_path, capsys):
    root = copy_dataset(knee_data, tmp_path)
    for split in ("singlecoil_test", "singlecoil_test_gt"):
        (root / split / "file_x.h5").symlink_to(tmp_path / "moved.h5")
    out = tmp_path / "sub"
    assert cli.main(["predict", "--checkpoint", str(checkpoint), "--data_path",
                     str(root / "singlecoil_test"), "--output", str(out), "--quiet"]) == 2
    one_line_error(capsys, str(root / "singlecoil_test" / "file_x.h5"), "dangling symbolic link")
    assert not out.exists()
    assert cli.main(["evaluate", "--target-path", str(root / "singlecoil_test_gt"),
                     "--predictions-path", str(root / "singlecoil_test_gt"),
                     "--challenge", "singlecoil", "--output", str(tmp_path / "m.json")]) == 2
    one_line_error(capsys, str(root / "singlecoil_test_gt" / "file_x.h5"), "dangling")


def set_matrix_size(space: str, axis: str, value: int):
    def edit(hf):
        header = hf["ismrmrd_header"][()].decode()
        pattern = f"(<{space}>.*?<matrixSize>.*?<{axis}>)-?\\d+(</{axis}>)"
        header, count = re.subn(pattern, f"\\g<1>{value}\\g<2>", header, count=1, flags=re.S)
        assert count == 1
        del hf["ismrmrd_header"]
        hf.create_dataset("ismrmrd_header", data=np.bytes_(header))

    return edit


def resize(kspace_shape, target_shape):
    def edit(hf):
        for key, shape, dtype in (("kspace", kspace_shape, np.complex64),
                                  ("reconstruction_esc", target_shape, np.float32)):
            del hf[key]
            hf.create_dataset(key, data=np.ones(shape, dtype))

    return edit


SIZE_BREAKAGES = {
    "negative-recon": (set_matrix_size("reconSpace", "x", -32),
                       "reconSpace/matrixSize/x is -32; matrix sizes must be positive"),
    "zero-encoded": (set_matrix_size("encodedSpace", "y", 0),
                     "encodedSpace/matrixSize/y is 0; matrix sizes must be positive"),
    "zero-z": (set_matrix_size("reconSpace", "z", 0), "reconSpace/matrixSize/z is 0"),
    "recon-taller": (set_matrix_size("reconSpace", "x", 1000),
                     "reconSpace matrixSize x is 1000, larger than the 64 rows"),
    "target-larger": (resize((3, 128, 74), (3, 200, 200)),
                      "'reconstruction_esc' (200x200) is taller than the 128x74 image"),
    "target-wider-than-square": (resize((3, 128, 74), (3, 40, 100)),
                                 "(40x100) cannot be cropped to the width of the 128x74 image"),
    "target-empty": (resize((3, 64, 36), (3, 0, 32)), "(0x32) is empty"),
}


@pytest.mark.parametrize("breakage", SIZE_BREAKAGES, ids=list(SIZE_BREAKAGES))
def test_impossible_sizes_are_bad_files(knee_data, tmp_path, breakage):
    folder = copy_dataset(knee_data, tmp_path) / "singlecoil_train"
    bad = sorted(folder.glob("*.h5"))[0]
    edit, message = SIZE_BREAKAGES[breakage]
    with h5py.File(bad, "r+") as hf:
        edit(hf)
    with pytest.raises(DataError, match=re.escape(message)) as raised:
        CheckedSliceDataset(folder, "singlecoil", need_target=True)
    assert str(raised.value).startswith(str(bad))
    dataset = CheckedSliceDataset(folder, "singlecoil", need_target=True, skip_bad_files=True)
    assert list(dataset.skipped_files) == [bad]


def test_a_target_wider_than_the_kspace_is_fastmris_flair_case(knee_data, tmp_path):
    """fastmri crops to a cols x cols square when the k-space is narrower than the target
    (brain FLAIR volumes): such a file is good, and the transform's crop is that square."""
    folder = copy_dataset(knee_data, tmp_path) / "singlecoil_train"
    path = sorted(folder.glob("*.h5"))[0]
    with h5py.File(path, "r+") as hf:
        resize((3, 64, 24), (3, 32, 32))(hf)
    assert check_volume(path, "singlecoil", need_target=True) == 3
    dataset = CheckedSliceDataset(folder, "singlecoil", transform=CLGNetDataTransform(
        "singlecoil", RandomMaskFunc([0.08], [4], seed=0)), need_target=True)
    assert dataset[0].image.shape == dataset[0].target.shape == (24, 24)


def test_predict_names_a_negative_recon_size(knee_data, checkpoint, tmp_path, capsys):
    root = copy_dataset(knee_data, tmp_path)
    bad = sorted((root / "singlecoil_test").glob("*.h5"))[1]
    with h5py.File(bad, "r+") as hf:
        set_matrix_size("reconSpace", "y", -5)(hf)
    assert cli.main(["predict", "--checkpoint", str(checkpoint), "--data_path",
                     str(root / "singlecoil_test"), "--output", str(tmp_path / "sub"),
                     "--quiet"]) == 2
    one_line_error(capsys, str(bad), "reconSpace/matrixSize/y is -5")
    assert not (tmp_path / "sub").exists()


# --- evaluate: targets and metrics that cannot be scored; strict JSON ------------------------


def strict_json(path: Path):
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture
def scoring(knee_data, tmp_path):
    """Copies of the test ground truth and predictions close to it, to break one by one."""
    gt = copy_dataset(knee_data, tmp_path) / "singlecoil_test_gt"
    predictions = tmp_path / "pred"
    predictions.mkdir()
    for path in gt.iterdir():
        with h5py.File(path) as src, h5py.File(predictions / path.name, "w") as dst:
            dst.create_dataset("reconstruction", data=src["reconstruction_esc"][()] * 0.9)
    names = sorted(p.name for p in gt.iterdir())
    args = ["evaluate", "--target-path", str(gt), "--predictions-path", str(predictions),
            "--challenge", "singlecoil", "--output", str(tmp_path / "m.json")]
    return gt, predictions, names, args


def put(path: Path, key: str, data: np.ndarray) -> None:
    with h5py.File(path, "r+") as hf:
        del hf[key]
        hf.create_dataset(key, data=data)


@pytest.mark.parametrize("case", ["nan-target", "zero-target", "perfect-prediction"])
def test_unscorable_volume_is_named_or_skipped_with_strict_json(scoring, tmp_path, capsys, case):
    gt, predictions, names, args = scoring
    target = gt / names[0]
    with h5py.File(target) as hf:
        truth = hf["reconstruction_esc"][()]
    if case == "nan-target":
        truth[1, 2, 3] = np.nan
        put(target, "reconstruction_esc", truth)
        named, message = target, "'reconstruction_esc' contains NaN or Inf values"
    elif case == "zero-target":
        put(target, "reconstruction_esc", np.zeros_like(truth))
        named, message = target, "'reconstruction_esc' is all zero"
    else:
        put(predictions / names[0], "reconstruction", truth)
        named, message = predictions / names[0], "PSNR is inf (the prediction equals the target)"
    assert cli.main(args) == 2
    one_line_error(capsys, str(named), message, "--skip-nonfinite")
    assert not (tmp_path / "m.json").exists()

    assert cli.main([*args, "--skip-nonfinite"]) == 0
    assert f"skipped {names[0]}: {named}: {message}" in capsys.readouterr().out
    scored = strict_json(tmp_path / "m.json")
    assert scored["num_volumes"] == 1 and list(scored["volumes"]) == names[1:]
    assert list(scored["skipped"]) == [names[0]]
    assert all(np.isfinite(v) for v in scored["mean"].values())


def test_complex_or_non_finite_predictions_are_refused(scoring, capsys):
    gt, predictions, names, args = scoring
    path = predictions / names[0]
    with h5py.File(path) as hf:
        recons = hf["reconstruction"][()]
    put(path, "reconstruction", recons.astype(np.complex64))
    assert cli.main(args) == 2
    one_line_error(capsys, str(path), "'reconstruction' is complex (complex64)", "magnitude")
    recons[0, 0, 0] = np.inf
    put(path, "reconstruction", recons)
    # Never skipped: leaving out a method's failures would flatter it.
    assert cli.main([*args, "--skip-nonfinite"]) == 2
    one_line_error(capsys, str(path), "NaN or Inf")


# --- Diverged training, impossible settings, entries named like volumes ----------------------


def nan_training_loss_after(step: int):
    real = CLGNetModule.training_step

    def training_step(self, batch, batch_idx):
        loss = real(self, batch, batch_idx)
        return loss * float("nan") if self.global_step >= step else loss

    return "training_step", training_step, "the training loss is nan"


def nan_validation_after(step: int):
    real = CLGNetModule.forward

    def forward(self, image):
        output = real(self, image)
        return output * float("nan") if not self.training and self.global_step >= step \
            else output

    return "forward", forward, "the validation metric val"


@pytest.mark.parametrize("diverge", [nan_training_loss_after, nan_validation_after],
                         ids=["loss", "validation"])
def test_a_diverged_run_stops_and_keeps_the_last_finite_checkpoint(
    knee_data, tmp_path, capsys, monkeypatch, diverge
):
    """3 steps an epoch, a checkpoint every step: NaN from step 4 on (the training loss), or
    in the validation after it (epoch 2's, at step 6)."""
    name, method, quantity = diverge(4)
    monkeypatch.setattr(CLGNetModule, name, method)
    run = tmp_path / "run"
    code = cli.main(["train", *TINY, "--alpha", "0", "--num_workers", "0", "--data_path",
                     str(knee_data), "--default_root_dir", str(run), "--max_epochs", "3",
                     "--checkpoint_every_n_steps", "1"])
    assert code == 2
    last = run / "checkpoints" / "last.ckpt"
    err = one_line_error(capsys, quantity, "diverged", f"the last checkpoint, {last}",
                         "--lr")
    assert re.search(r"error: step [56]: ", err), err
    kept = torch.load(last, weights_only=True)
    assert kept["global_step"] == 4 if name == "training_step" else 6
    for checkpoint_file in last.parent.glob("*.ckpt"):
        state = torch.load(checkpoint_file, weights_only=True)["state_dict"]
        assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


@pytest.mark.parametrize("argv, named", [
    (["--precision", "16-true"], "--precision 16-true: CLGNet cannot be trained"),
    (["--model", "unet", "--precision", "16-true"], "--precision 16-true: Unet cannot be"),
    (["--model", "varnet", "--precision", "16-true"], "--precision 16-true: fastmri's VarNet"),
    (["--precision", "transformer-engine"], "transformer_engine package"),
    (["--alpha", "0.05", "--crop_size", "2", "2"],
     "--crop_size 2 2: the contrastive loss's VGG19 needs crops"),
    (["--alpha", "0", "--vgg_weights", "nowhere.pth"], "nowhere.pth: VGG19 weights file not"),
])
def test_settings_that_cannot_train_are_refused_before_any_work(refused_train, argv, named):
    assert named in refused_train(argv)


def test_vgg_weights_holding_nan_are_refused_when_loaded(tmp_path):
    from clgnet_fastmri.losses import VGG19Features
    from clgnet_fastmri.losses.vgg import _meta_features

    state = {key: torch.zeros(value.shape)
             for key, value in _meta_features()[:30].state_dict().items()}
    state["5.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "vgg.pth")
    with pytest.raises(UserError, match=r"vgg.pth: VGG19 weight 5.weight holds NaN or Inf"):
        VGG19Features(tmp_path / "vgg.pth")


@pytest.mark.parametrize("model, data, argv, flag", [
    ("unet", "knee_data", ["--chans", "2", "--num_pool_layers", "5"], "--num_pool_layers 5"),
    ("varnet", "multicoil_data", ["--num_cascades", "1", "--chans", "2", "--sens_chans", "2",
                                  "--sens_pools", "5"], "--sens_pools 5"),
])
def test_more_poolings_than_the_image_allows_is_one_line(
    request, tmp_path, capsys, model, data, argv, flag
):
    code = cli.main(["train", "--model", model, *argv, "--data_path",
                     str(request.getfixturevalue(data)), "--num_workers", "0", "--logger", "csv",
                     "--no_progress_bar", "--max_epochs", "1",
                     "--default_root_dir", str(tmp_path / "run")])
    assert code == 2
    one_line_error(capsys, "32x32 images are too small for " + flag, f"{flag.split()[0]} 4 or")


@pytest.mark.parametrize("folder", ["singlecoil_test", "singlecoil_test_gt"])
def test_a_folder_named_like_a_volume_stops_predict_before_writing(
    knee_data, checkpoint, tmp_path, capsys, folder
):
    root = copy_dataset(knee_data, tmp_path)
    (root / folder / "x.h5").mkdir()
    out = tmp_path / "sub"
    assert cli.main(["predict", "--checkpoint", str(checkpoint), "--data_path",
                     str(root / "singlecoil_test"), "--output", str(out), "--quiet"]) == 2
    one_line_error(capsys, str(root / folder / "x.h5"), "a folder, not an HDF5 file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_a_folder_named_like_a_volume_stops_train_test_before_writing(
    knee_data, checkpoint, tmp_path, capsys, caplog
):
    root = copy_dataset(knee_data, tmp_path)
    (root / "singlecoil_test_gt" / "x.h5").mkdir()
    run = tmp_path / "run"
    args = ["train", "--mode", "test", "--checkpoint", str(checkpoint), "--data_path",
            str(root), "--default_root_dir", str(run), "--num_workers", "0", "--logger", "csv",
            "--no_progress_bar"]
    assert cli.main(args) == 2
    one_line_error(capsys, str(root / "singlecoil_test_gt" / "x.h5"), "a folder, not an HDF5")
    assert not (run / "reconstructions").exists()
    # In a data folder it is a bad file like any other: skipped by name with --skip_bad_files.
    (root / "singlecoil_test_gt" / "x.h5").rmdir()
    (root / "singlecoil_train" / "y.h5").mkdir()
    with caplog.at_level(logging.WARNING):
        dataset = CheckedSliceDataset(root / "singlecoil_train", "singlecoil",
                                      skip_bad_files=True)
    assert list(dataset.skipped_files) == [root / "singlecoil_train" / "y.h5"]


def test_bench_speed_refuses_a_json_folder_before_benchmarking(tmp_path, capsys, monkeypatch):
    from clgnet_fastmri.bench import speed

    monkeypatch.setattr(speed, "measure_side_by_side", _crash)  # the benchmark must not run
    for target, says in ((tmp_path, "is a folder; --json names the file"),
                         (tmp_path / "no" / "r.json", "does not exist")):
        assert cli.main(["bench", "speed", "--sizes", "32", "--json", str(target)]) == 2
        one_line_error(capsys, str(target), says)


def test_weights_that_went_non_finite_are_never_checkpointed(tmp_path):
    """A finite loss with NaN weights (NaN gradients of a finite loss) is caught at the save."""
    from types import SimpleNamespace

    from clgnet_fastmri.divergence import Diverged, DivergenceGuard

    best, last = tmp_path / "best.ckpt", tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, best)
    # Newer, and NaN (written before this guard existed, then resumed): not offered.
    torch.save({"state_dict": {"w": torch.full((2,), np.nan)}}, last)
    trainer = SimpleNamespace(
        global_step=7, strategy=SimpleNamespace(reduce_boolean_decision=lambda ok, all: ok),
        checkpoint_callbacks=[SimpleNamespace(last_model_path=str(last),
                                              best_model_path=str(best))])
    guard = DivergenceGuard()
    guard.on_save_checkpoint(trainer, None, {"state_dict": {"w": torch.ones(2)}})
    with pytest.raises(Diverged, match=rf"step 7: weight w \(not saved\) is NaN.*{best},"):
        guard.on_save_checkpoint(trainer, None, {"state_dict": {"w": torch.tensor([1, np.nan])}})


def test_a_checkpoint_with_nan_weights_is_refused_for_resume_and_test(
    knee_data, checkpoint, tmp_path, capsys
):
    state = torch.load(checkpoint, weights_only=True)
    state["state_dict"]["clgnet.net_out.weight"].fill_(float("nan"))
    torch.save(state, tmp_path / "nan.ckpt")
    for option in (["--resume", str(tmp_path / "nan.ckpt")],
                   ["--mode", "test", "--checkpoint", str(tmp_path / "nan.ckpt")]):
        assert cli.main(["train", *TINY, "--alpha", "0", "--num_workers", "0", "--data_path",
                         str(knee_data), "--default_root_dir", str(tmp_path / "run"),
                         *option]) == 2
        one_line_error(capsys, "nan.ckpt: weight clgnet.net_out.weight holds NaN or Inf")
