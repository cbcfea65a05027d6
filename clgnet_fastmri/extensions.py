"""Training extensions: packages that add a training method to ``clgnet-fastmri train``.

An extension adds options to the training command and, when its options enable it, replaces
the training transform and the ``LightningModule`` (the ``banding`` package's orientation
adversary is one). Packages built on ``clgnet_fastmri`` declare theirs as an entry point::

    [project.entry-points."clgnet_fastmri.extensions"]
    banding = "banding.extension:EXTENSION"

so this package never imports them: dependencies go one way, from the extension to
``clgnet_fastmri``. Entry points are read from the installed package metadata (re-run
``pip install -e .`` after declaring one); ``register`` adds an extension directly.
"""

from __future__ import annotations

import argparse
from importlib.metadata import entry_points
from typing import Any, Callable, Dict, List, Mapping, Optional, Protocol

import pytorch_lightning as pl

from .errors import UserError

GROUP = "clgnet_fastmri.extensions"


class TrainingExtension(Protocol):
    """What ``clgnet-fastmri train`` asks of an extension.

    Its options are enabled by the switch ``--<name>``; ``settings`` reads the others once,
    into the run's ``TrainConfig`` (``config.extension_args``), which is all the other methods
    read.
    """

    name: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add the extension's options (``--<name>`` enables it)."""

    def enabled(self, args: argparse.Namespace) -> bool:
        """Whether the parsed options ask for this extension."""

    def settings(self, args: argparse.Namespace) -> Dict[str, Any]:
        """The extension's settings (``{option: value}``) from the parsed options."""

    def train_transform(self, config: Any) -> Callable[..., Any]:
        """The training transform class (``CLGNetDataTransform``'s arguments) of a run
        (``config.TrainConfig``)."""

    def build_module(self, config: Any, module_kwargs: Mapping[str, Any]) -> pl.LightningModule:
        """The module a run (``config.TrainConfig``) trains, from ``CLGNetModule``'s
        arguments."""


_registered: Dict[str, TrainingExtension] = {}
_discovered = False


def register(extension: TrainingExtension) -> TrainingExtension:
    """Make ``extension`` available to the training command (idempotent by name)."""
    _registered[extension.name] = extension
    return extension


def discover() -> None:
    """Load the extensions declared as entry points of ``GROUP`` (once)."""
    global _discovered
    if not _discovered:
        for point in entry_points(group=GROUP):
            register(point.load())
        _discovered = True


def extensions() -> List[TrainingExtension]:
    """The registered extensions, entry points included."""
    discover()
    return list(_registered.values())


def enabled_extension(args: argparse.Namespace) -> Optional[TrainingExtension]:
    """The extension the options enable, or None; two at once is an error."""
    chosen = [ext for ext in extensions() if ext.enabled(args)]
    if len(chosen) > 1:
        names = " and ".join(ext.name for ext in chosen)
        raise UserError(f"training extensions {names} cannot be combined; choose one")
    return chosen[0] if chosen else None


def extension_named(name: str) -> TrainingExtension:
    """The registered extension ``name`` (a run's ``config.extension``)."""
    for extension in extensions():
        if extension.name == name:
            return extension
    raise UserError(f"training extension {name!r} is not installed; install it or train "
                    "without it")
