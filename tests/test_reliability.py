"""Bad input at every entry point, hard interruption, atomic checkpoints.

Run alone with ``python -m pytest -m reliability``. (The DDP equality test is in
test_train_demo.py, the pickle-cache and bad-file tests of the datasets in test_data.py, the
interrupted export in test_predict.py, make-data's bad input in test_synthetic.py.)
"""

from __future__ import annotations

import os
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

from clgnet_fastmri import cli
from clgnet_fastmri.checkpoints import AtomicCheckpointIO
from clgnet_fastmri.pl_modules.clgnet_module import CLGNetModule

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


def test_train_with_skip_bad_files_runs_past_them(knee_data, tmp_path, capsys):
    root = copy_dataset(knee_data, tmp_path)
    (root / "singlecoil_train" / "notes.txt").write_text("not data")
    code = cli.main(["train", *TINY, "--num_workers", "0", "--data_path", str(root),
                     "--default_root_dir", str(tmp_path / "run"), "--max_epochs", "1",
                     "--skip_bad_files"])
    assert code == 0


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
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
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
