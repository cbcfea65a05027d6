"""The declared dependency floors hold in the environment under test, and they are the
versions whose APIs the package calls (so that a floor lowered by mistake fails here)."""

from __future__ import annotations

import importlib.metadata as metadata
import inspect

import pytest
import pytorch_lightning as pl
import torch
from packaging.requirements import Requirement
from packaging.version import Version

DIST = "clgnet-fastmri"


def _requirements() -> dict:
    """name -> Requirement of the installed distribution (run-time and test extras)."""
    found = {}
    for text in metadata.requires(DIST) or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": "test"}):
            found[req.name.lower()] = req
    return found


def test_installed_versions_satisfy_the_declared_ranges():
    unmet = []
    for name, req in _requirements().items():
        installed = metadata.version(name)
        if installed not in req.specifier:
            unmet.append(f"{name} {installed} not in {req.specifier}")
    assert not unmet, unmet


@pytest.mark.parametrize("name, needed_from, api", [
    ("torch", "2.6", lambda: hasattr(torch.serialization, "get_unsafe_globals_in_checkpoint")),
    ("pytorch-lightning", "2.6.0",
     lambda: "weights_only" in inspect.signature(pl.Trainer.fit).parameters),
])
def test_floors_are_the_versions_the_code_needs(name, needed_from, api):
    """The API exists here, and the floor admits no release from before it appeared."""
    assert api()
    floor = _requirements()[name].specifier
    older = Version(needed_from).release
    just_before = Version(f"{older[0]}.{older[1] - 1}.99")
    assert just_before not in floor and Version(needed_from) in floor
