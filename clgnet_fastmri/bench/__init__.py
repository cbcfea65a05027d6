"""``clgnet-fastmri bench speed|quality``: CLGNet against fastmri's U-Net and its variants.

``speed`` measures parameters, FLOPs, inference and training-step time and peak memory,
side by side in one process (``speed.py``); ``quality`` trains each model for the same
budget on the same data and scores it with the official fastMRI metrics (``quality.py``).
Results and the commands that produced them: ``BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse

from ..cli import HelpFormatter
from ..quiet import quiet_lightning
from . import curves, quality, speed

_SUBCOMMANDS = {
    "speed": (speed, "parameters, FLOPs, time per slice and per training step, peak memory"),
    "quality": (quality, "train every model for the same budget, score NMSE/PSNR/SSIM"),
    "curves": (curves, "validation learning curves of every model, each until it plateaus"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", metavar="{speed,quality,curves}", required=True)
    for name, (module, help_text) in _SUBCOMMANDS.items():
        module.add_arguments(sub.add_parser(
            name, help=help_text, description=module.__doc__.split("\n\n")[0],
            formatter_class=HelpFormatter,
        ))


def run(args: argparse.Namespace) -> int:
    module, _ = _SUBCOMMANDS[args.bench]
    with quiet_lightning():  # quality and curves train with Lightning too
        return module.run(args)
