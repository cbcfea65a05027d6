"""Shared fixtures: tiny synthetic datasets in the fastMRI layout, made once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clgnet_fastmri.data.synthetic import make_dataset

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
