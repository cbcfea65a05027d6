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


def test_staged_folder_swaps_only_on_success_and_recovers_a_kill(tmp_path):
    final = tmp_path / "sub"
    final.mkdir()
    (final / "old.h5").write_text("old")
    with pytest.raises(RuntimeError):
        with files.staged_folder(final) as staging:
            (staging / "new.h5").write_text("new")
            raise RuntimeError("fails before the swap")
    assert listing(tmp_path) == ["sub", "sub/old.h5"]
    with files.staged_folder(final) as staging:
        (staging / "new.h5").write_text("new")
    assert listing(tmp_path) == ["sub", "sub/new.h5"]
    os.rename(final, tmp_path / ".sub.previous")  # killed between the swap's two renames
    files.recover_folder(final)
    assert listing(tmp_path) == ["sub", "sub/new.h5"]
    shutil.copytree(final, tmp_path / ".sub.previous")  # killed after them
    files.recover_folder(final)
    assert listing(tmp_path) == ["sub", "sub/new.h5"]


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
