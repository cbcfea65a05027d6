"""What a source format of ``clgnet-fastmri convert`` provides, and what it exchanges with it.

Each format is one module exporting a ``FORMAT`` (``cc359.py``, ``nifti.py``); ``convert.py``
registers it in its ``FORMATS``. Convert does the rest for every format alike: finding the
files, subjects and splits, test masks, headers and the atomic output.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Tuple

import numpy as np

#: ``(kspace, target)`` of each slice: complex64 ``([coils,] rows, cols)`` k-space, centred
#: as ``fastmri.fft2c`` centres it, and the float32 target image.
Slices = Iterator[Tuple[np.ndarray, np.ndarray]]


@dataclass
class Source:
    """One source volume: ``name`` is its output file name without ``.h5``; the format's
    ``check`` fills in ``coils``, ``cols`` (the k-space columns test masks sample) and
    ``found`` (what else its ``read`` needs)."""

    path: Path
    name: str
    subject: str
    coils: int = 1
    cols: int = 0
    found: Any = None


@dataclass
class Converted:
    """One source volume being converted: header facts and its slices (read lazily)."""

    kspace_shape: Tuple[int, ...]  # (slices, [coils,] rows, cols)
    fov_mm: Tuple[float, float, float]
    coils: int
    slices: Slices
    clipped: int = 0  # negative voxels clipped to zero (NIfTI)


@dataclass(frozen=True)
class Format:
    """A source format.

    Attributes:
        name: the ``--format`` value.
        help: what its files are, for ``--format``'s help.
        suffixes: the file name endings of its volumes (any case); other files are ignored.
        default_split: train/val/test shares of the subjects without ``--split``.
        split_help: where ``default_split`` comes from, for ``--split``'s help.
        add_arguments: adds the format's own options (help starting ``<name>:``).
        check_options: refuses bad values of those options, before any file is read.
        check: ``check(source, args)``: the source with its header checked (``DataError``
            otherwise) and ``coils``, ``cols``, ``found`` filled in; reads no image data.
        read: ``read(source, args, singlecoil, rng)``: the conversion of a checked source;
            ``rng`` is the volume's own random stream.
    """

    name: str
    help: str
    suffixes: Tuple[str, ...]
    default_split: Tuple[float, float, float]
    split_help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    check_options: Callable[[argparse.Namespace], None]
    check: Callable[[Source, argparse.Namespace], Source]
    read: Callable[[Source, argparse.Namespace, bool, np.random.Generator], Converted]

    def suffix_of(self, path: Path) -> Optional[str]:
        """The suffix of ``path`` that makes it one of this format's volumes, if any."""
        name = path.name.lower()
        return next((s for s in sorted(self.suffixes, key=len, reverse=True)
                     if name.endswith(s)), None)

    def stem(self, path: Path) -> str:
        """The file name of one of this format's volumes without its suffix."""
        return path.name[: -len(self.suffix_of(path))]
