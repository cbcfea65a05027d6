"""``clgnet-fastmri train --banding``: this package as a training extension of clgnet_fastmri.

Declared in ``pyproject.toml`` as the ``banding`` entry point of the
``clgnet_fastmri.extensions`` group, which the training command discovers
(``clgnet_fastmri.extensions``); clgnet_fastmri itself never imports this package.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable, Dict, Mapping

import pytorch_lightning as pl

from .augment import RandomTranspose
from .module import add_banding_arguments, banding_settings, build_module


class BandingExtension:
    """Orientation-adversarial training (``module``) on randomly transposed slices."""

    name = "banding"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_banding_arguments(parser)

    def enabled(self, args: argparse.Namespace) -> bool:
        return bool(getattr(args, "banding", False))

    def settings(self, args: argparse.Namespace) -> Dict[str, Any]:
        return banding_settings(args)

    def train_transform(self, config: Any) -> Callable[..., Any]:
        return RandomTranspose

    def build_module(self, config: Any, module_kwargs: Mapping[str, Any]) -> pl.LightningModule:
        return build_module(config, module_kwargs)


EXTENSION = BandingExtension()
