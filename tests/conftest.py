"""Shared fixtures: tiny synthetic datasets in the fastMRI layout, made once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clgnet_fastmri.data.synthetic import make_dataset
from clgnet_fastmri.losses import PAPER_ALPHA

# The CI machine and the developers' have 2 cores; more threads only add contention.
torch.set_num_threads(2)


def _dataset(root: Path, **kwargs) -> Path:
    spec = dict(anatomy="knee", size=32, num_slices=3, splits={"train": 2, "val": 2, "test": 2})
    spec.update(kwargs)
    make_dataset(root, progress=False, **spec)
    return root


@pytest.fixture(scope="session")
def knee_data(tmp_path_factory) -> Path:
    """Singlecoil knee-like set: 2 train, 2 val, 2 test volumes of 3 slices, 32x32 targets."""
    return _dataset(tmp_path_factory.mktemp("knee"))


@pytest.fixture(scope="session")
def multicoil_data(tmp_path_factory) -> Path:
    """Multicoil brain-like set of the same tiny size, 4 coils."""
    return _dataset(
        tmp_path_factory.mktemp("brain_mc"), anatomy="brain", challenge="multicoil", num_coils=4
    )


@pytest.fixture(scope="session")
def tiny() -> dict:
    """``CLGNetModule`` arguments of the tiny model the tests train: every part of CLGNet and
    its loss present (the paper's contrastive loss, which the default leaves out, with a
    random VGG19: no download), a fit of a few slices in seconds."""
    return dict(chans=4, num_sfrir=1, num_sfrb=1, alpha=PAPER_ALPHA, vgg_weights=None,
                k_negatives=2)


@pytest.fixture(scope="session")
def tiny_argv(tiny) -> list:
    """The same tiny model as ``clgnet-fastmri train`` options, with a quiet batch-2 loader in
    the main process and the CSV logger."""
    model = [arg for name, value in tiny.items()
             for arg in (f"--{name}", "random" if value is None else str(value))]
    return [*model, "--batch_size", "2", "--num_workers", "0", "--no_progress_bar",
            "--logger", "csv"]


@pytest.fixture
def make_trainer():
    """``make_trainer(root, **overrides)``: a quiet 1-epoch CPU Trainer for tiny fits (no
    logger, checkpoints, progress bar, model summary or sanity validation)."""
    import pytorch_lightning as pl

    def make(root: Path, **overrides) -> pl.Trainer:
        options = dict(
            accelerator="cpu",
            devices=1,
            max_epochs=1,
            default_root_dir=root,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            log_every_n_steps=1,
        )
        options.update(overrides)
        return pl.Trainer(**options)

    return make


@pytest.fixture
def run_cli(capsys):
    """``run_cli(argv)``: ``clgnet-fastmri`` in-process; its exit code and its stderr lines."""
    from clgnet_fastmri import cli

    def run(argv):
        try:
            code = cli.main(argv)
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code
        return code, capsys.readouterr().err.strip().splitlines()

    return run


@pytest.fixture
def refused_train(run_cli, tmp_path):
    """``refused_train(argv)``: runs ``clgnet-fastmri train`` with bad options, asserts the
    one-line error (exit 2) and that no run folder was started; returns that line."""

    def run(argv):
        root = tmp_path / "run"
        code, lines = run_cli(["train", "--data_path", str(tmp_path / "nodata"),
                               "--default_root_dir", str(root), *argv])
        assert code == 2
        assert len(lines) == 1 and lines[0].startswith("clgnet-fastmri train: error:"), lines
        assert not root.exists()  # nothing was started
        return lines[0]

    return run
