"""The fastMRI dataset layout: the names and limits every reader and writer of it shares, and
the one writer of its raw-data files.

fastMRI's data root holds ``<challenge>_<split>/`` folders of HDF5 volumes (``kspace``, the
target ``reconstruction_esc`` or ``reconstruction_rss``, the ISMRMRD ``ismrmrd_header`` and the
``acquisition`` attribute); test volumes hold masked k-space and its ``mask``. This module is
the one place those names live: convert and make-data write them (``write_raw_volume``), the
data checks, evaluate, predict and the command-line options read them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Mapping, Optional, Tuple, Union
from xml.sax.saxutils import escape

import numpy as np
from fastmri.data.subsample import create_mask_for_mask_type

from ..files import h5_disk_output, h5_output

#: fastMRI's two challenges (``<challenge>_<split>`` folder prefixes).
CHALLENGES = ("singlecoil", "multicoil")
#: The splits this project writes and reads (fastMRI's ``challenge`` split is read only).
SPLITS = ("train", "val", "test")
#: The built-in synthetic anatomies: fastMRI's knee, CC-359's brain.
ANATOMIES = ("knee", "brain")
#: fastMRI's acquisition attributes: what convert writes and evaluate filters on.
ACQUISITIONS = ("CORPD_FBK", "CORPDFS_FBK", "AXT1", "AXT1PRE", "AXT1POST", "AXT2", "AXFLAIR")
#: The target dataset of each challenge.
TARGET_KEYS = {"singlecoil": "reconstruction_esc", "multicoil": "reconstruction_rss"}
#: fastmri's ``create_mask_for_mask_type`` names.
MASK_TYPES = ("random", "equispaced", "equispaced_fraction", "magic", "magic_fraction")
#: Undersampling factors: 1 is no undersampling; beyond 64 a 320-line k-space keeps < 5 lines.
MIN_ACCELERATION = 2
MAX_ACCELERATION = 64


def center_fraction(acceleration: int) -> float:
    """fastMRI's challenge convention: 4x -> 0.08, 8x -> 0.04 (0.32 / acceleration)."""
    return 0.32 / acceleration


# ---------------------------------------------------------------------------------------------
# The ISMRMRD header


@dataclass(frozen=True)
class Scan:
    """What a header may say about the scan beyond the fields fastmri reads."""

    fov_mm: Tuple[float, float, float]
    num_slices: int
    num_coils: int
    protocol: str


def ismrmrd_header(kspace_size: Tuple[int, int], recon_size: Tuple[int, int],
                   acquired: Tuple[int, int], scan: Optional[Scan] = None) -> bytes:
    """The ``ismrmrd_header`` of a volume of ``rows x cols`` k-space slices.

    fastmri's ``SliceDataset`` reads ``encodedSpace`` and ``reconSpace`` ``matrixSize``
    (x, y, z) and ``encodingLimits/kspace_encoding_step_1`` ``center`` and ``maximum``, from
    which it derives the acquired k-space columns ``[cols // 2 - center, cols // 2 - center
    + maximum + 1)``: here ``acquired = (left, right)``, the columns ``[left, right)``. Without
    ``scan`` the header holds those fields and nothing else (make-data, whose scans are
    made up); with it, also the protocol, coils, field of view and slice count (convert).
    """
    rows, cols = kspace_size
    recon_x, recon_y = recon_size
    left, right = acquired
    described = fov = trajectory = minimum = more_limits = ""
    if scan is not None:
        fx, fy, fz = (f"{v:g}" for v in scan.fov_mm)
        described = f"""  <measurementInformation>
    <protocolName>{escape(scan.protocol)}</protocolName>
  </measurementInformation>
  <acquisitionSystemInformation>
    <receiverChannels>{scan.num_coils}</receiverChannels>
  </acquisitionSystemInformation>
"""
        fov = f"      <fieldOfView_mm><x>{fx}</x><y>{fy}</y><z>{fz}</z></fieldOfView_mm>\n"
        trajectory = "    <trajectory>cartesian</trajectory>\n"
        minimum = "<minimum>0</minimum>"
        zero = "<minimum>0</minimum><maximum>0</maximum><center>0</center>"
        more_limits = (f"      <kspace_encoding_step_2>{zero}</kspace_encoding_step_2>\n"
                       f"      <slice><minimum>0</minimum><maximum>{scan.num_slices - 1}"
                       "</maximum><center>0</center></slice>\n")
    xml = f"""<?xml version="1.0" encoding="utf-8"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">
{described}  <encoding>
    <encodedSpace>
      <matrixSize><x>{rows}</x><y>{cols}</y><z>1</z></matrixSize>
{fov}    </encodedSpace>
    <reconSpace>
      <matrixSize><x>{recon_x}</x><y>{recon_y}</y><z>1</z></matrixSize>
{fov}    </reconSpace>
{trajectory}    <encodingLimits>
      <kspace_encoding_step_1>
        {minimum}<maximum>{right - left - 1}</maximum><center>{cols // 2 - left}</center>
      </kspace_encoding_step_1>
{more_limits}    </encodingLimits>
  </encoding>
</ismrmrdHeader>
"""
    return xml.encode("utf-8")


# ---------------------------------------------------------------------------------------------
# Test masks


@dataclass(frozen=True)
class SampledMask:
    """The mask of one test volume and the attributes that describe it."""

    mask: np.ndarray  # (cols,) bool
    acceleration: int
    num_low_frequency: int

    @property
    def attrs(self) -> Dict[str, int]:
        return {"acceleration": self.acceleration, "num_low_frequency": self.num_low_frequency}


@dataclass(frozen=True)
class MaskSpec:
    """How test volumes are masked: fastmri's ``mask_type`` with one (centre fraction,
    acceleration) pair drawn per volume."""

    mask_type: str
    center_fractions: Tuple[float, ...]
    accelerations: Tuple[int, ...]

    def problem(self, cols: int) -> Optional[str]:
        """Why ``cols`` k-space columns cannot be masked so (None if they can): a pair that
        keeps no centre line, or more centre lines than the acceleration allows in all."""
        for cf, acc in zip(self.center_fractions, self.accelerations):
            num_low = round(cols * cf)
            if num_low < 1 or cols / acc < num_low:
                return (f"{cols} k-space columns are too few for {acc}x with centre fraction "
                        f"{cf:g}")
        return None

    def sample(self, cols: int, rng: np.random.Generator) -> SampledMask:
        """One test volume's mask; two draws from ``rng``: the pair, then the mask's seed."""
        i = int(rng.integers(len(self.accelerations)))
        acc = int(self.accelerations[i])
        mask_func = create_mask_for_mask_type(self.mask_type, [self.center_fractions[i]], [acc])
        mask, num_low = mask_func((1, cols, 1), seed=int(rng.integers(2**32 - 1)))
        return SampledMask(mask.numpy().reshape(cols) > 0, acc, int(num_low))


# ---------------------------------------------------------------------------------------------
# Writing a volume


def write_raw_volume(path: Union[str, os.PathLike], challenge: str, header: bytes,
                     kspace_shape: Tuple[int, ...],
                     slices: Iterable[Tuple[np.ndarray, np.ndarray]],
                     attrs: Mapping[str, object], test: Optional[SampledMask] = None,
                     gt_path: Optional[Union[str, os.PathLike]] = None,
                     in_memory: bool = False) -> np.ndarray:
    """Write one fastMRI raw-data file from ``(kspace, target)`` slices; return the target.

    A training or validation file holds ``kspace``, the challenge's target and the
    attributes ``attrs`` plus the target's ``max`` and ``norm``. With ``test``, a test file
    as the challenge's: k-space masked, ``mask``, ``attrs`` plus ``acceleration`` and
    ``num_low_frequency``, no target; its ``_test_gt`` twin at ``gt_path`` holds the target
    and every attribute. ``in_memory`` builds the file in memory (``h5_output``: every write
    error is raised); else libhdf5 writes it slice by slice (``h5_disk_output``), so memory
    stays at one target volume. Raising from ``slices`` leaves no file.
    """
    key = TARGET_KEYS[challenge]
    attrs = dict(attrs, **(test.attrs if test is not None else {}))
    rows, cols = kspace_shape[-2:]
    size = int(np.prod(kspace_shape)) * 8 + kspace_shape[0] * rows * cols * 4 + len(header)
    with (h5_output(path) if in_memory else h5_disk_output(path, size)) as hf:
        hf.create_dataset("ismrmrd_header", data=header)
        kspace = hf.create_dataset("kspace", shape=kspace_shape, dtype=np.complex64)
        targets = []
        for k, (ks, target) in enumerate(slices):
            kspace[k] = ks if test is None else ks * test.mask
            targets.append(target)
        target = np.stack(targets)
        stats = {"max": float(target.max()),
                 "norm": float(np.linalg.norm(target.astype(np.float64)))}
        if test is None:
            hf.create_dataset(key, data=target)
            attrs.update(stats)
        else:
            hf.create_dataset("mask", data=test.mask)
        hf.attrs.update(attrs)
    if test is not None:
        with h5_output(Path(gt_path)) as gt:
            gt.create_dataset(key, data=target)
            gt.attrs.update({**attrs, **stats})
    return target
