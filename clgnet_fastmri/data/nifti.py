"""NIfTI magnitude volumes as fastMRI slices, for ``clgnet-fastmri convert --format nifti``.

Orientation: the volume is brought to RAS+ (``nibabel.as_closest_canonical``: voxel axes
pointing to the patient's Right, Anterior, Superior) and cut along one of them, axial by
default. Slices are shown as radiologists read them: axial and coronal with the patient's
right on the image's left and anterior (axial) or superior (coronal) at the top; sagittal
with superior at the top and anterior on the left. Each slice is centre-cropped or zero-padded
to ``size x size`` (fastmri's ``center_crop`` offsets, ``(side - size) // 2``), intensities
unchanged (nibabel's scaling applied).

The image becomes k-space by ``fastmri.fft2c``; with a phase (``--phase``) it is first
multiplied by ``exp(i phi)``, a smooth random field (a constant, linear and quadratic terms
in the in-plane coordinates, drawn per volume), so that k-space is not Hermitian as a real
image's is. The target is the image itself.

Empty end slices: a slice is empty when no pixel exceeds ``EMPTY_FRACTION`` of the volume's
99th intensity percentile; runs of them at both ends of the volume are dropped, those
between anatomy are kept.

Negative voxels: resampled or normalised brains (SPM, FSL, ANTs outputs) have a few small
negative values from interpolation undershoot; a magnitude cannot be negative, so they are
clipped to zero and counted. A volume whose negative values hold more than
``NEGATIVE_LIMIT`` of its absolute intensity is no magnitude image (phase, CT, a difference)
and is refused, as are complex and RGB volumes and headers that claim more than
``MAX_VOXELS`` voxels, more data than the file holds, or no usable orientation.
"""

from __future__ import annotations

import argparse
import gzip
import os
import zlib
from pathlib import Path
from typing import Optional, Tuple, Union

import fastmri
import nibabel as nib
import numpy as np
import torch

from ..errors import DataError, UserError, one_line
from .formats import Converted, Format, Slices, Source
from .synthetic import MAX_SIZE

SUFFIXES = (".nii", ".nii.gz")
AXES = {"sagittal": 0, "coronal": 1, "axial": 2}
EMPTY_FRACTION = 0.05
NEGATIVE_LIMIT = 0.05
# 1 GiB as float32, four times a 0.5 mm whole head: a header beyond it is damaged or not MRI.
MAX_VOXELS = 2**28
PAD_LIMIT = 4


def open_volume(path: Union[str, os.PathLike]) -> nib.Nifti1Image:
    """The NIfTI image of ``path`` (header read, data not yet), its header checked: a 3-D
    real volume of at most ``MAX_VOXELS`` voxels that the file holds, with an orientation."""
    path = Path(path)
    try:
        image = nib.load(path)
    except Exception as exc:  # nibabel raises many types (ImageFileError, EOFError, ...)
        raise DataError(path, f"not a readable NIfTI file ({one_line(exc)})",
                        "re-download it or move it out of the folder") from None
    shape = image.shape
    if len(shape) != 3:
        raise DataError(path, f"is a {len(shape)}-D image {tuple(shape)}, expected a 3-D "
                              "volume", "convert 3-D magnitude volumes (split a 4-D series "
                                        "into volumes first)")
    if min(shape) < 1:
        raise DataError(path, f"has an empty shape {tuple(shape)}")
    _check_header(path, image)
    return image


def _check_header(path: Path, image: nib.Nifti1Image) -> None:
    dtype = image.get_data_dtype()
    if dtype.fields is not None or not np.issubdtype(dtype, np.number):
        raise DataError(path, f"holds {dtype.names or dtype} voxels (e.g. RGB), not intensities",
                        "convert a grey-level magnitude volume")
    if np.issubdtype(dtype, np.complexfloating):
        raise DataError(path, "holds complex voxels; magnitude images are expected",
                        "convert its magnitude (abs) instead")
    voxels = int(np.prod(image.shape, dtype=np.int64))
    if voxels > MAX_VOXELS:
        raise DataError(path, f"its header claims {' x '.join(map(str, image.shape))} voxels, "
                              f"more than the {MAX_VOXELS} convert handles",
                        "check the file (a damaged header?)")
    if not path.name.lower().endswith(".gz"):
        needed = int(image.header.get_data_offset()) + voxels * dtype.itemsize
        if path.stat().st_size < needed:
            raise DataError(path, f"its header claims {needed} bytes of data and header, the "
                                  f"file holds {path.stat().st_size}",
                            "the file is truncated or its header damaged; re-download it")
    affine = image.affine
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise DataError(path, "has no usable orientation (its affine is NaN, Inf or singular)",
                        "repair the header's sform/qform (e.g. with fslorient)")


def check_size(path: Path, image: nib.Nifti1Image, axis: str, size: int) -> None:
    """Refuse a ``--size`` far beyond the volume (mostly padding) or one whose slices
    would exceed ``MAX_VOXELS``: from the header, before any data is read."""
    sides = image.shape
    if size > PAD_LIMIT * max(sides):
        raise DataError(path, f"--size {size} is over {PAD_LIMIT}x the volume's largest side "
                              f"({' x '.join(map(str, sides))}); the slices would be nearly "
                              "all padding", f"use a --size near {max(sides)}")
    slices = sides[list(nib.io_orientation(image.affine)[:, 0]).index(AXES[axis])]
    if slices * size * size > MAX_VOXELS:
        raise DataError(path, f"{slices} slices of {size} x {size} exceed the {MAX_VOXELS} "
                              "voxels convert handles", "use a smaller --size")


def read_slices(path: Union[str, os.PathLike], axis: str, size: int,
                keep_empty: bool) -> Tuple[np.ndarray, Tuple[float, float, float], int]:
    """float32 slices ``(n, size, size)`` of the volume at ``path``, the voxel size in mm
    ``(row, col, slice)`` of those slices, and the number of negative voxels clipped."""
    path = Path(path)
    image = nib.as_closest_canonical(open_volume(path))
    try:
        with np.errstate(over="ignore"):  # values beyond float32 are reported below
            data = image.get_fdata(dtype=np.float32)
    except (OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(path, f"the image data cannot be read ({one_line(exc)})",
                        "the file is truncated or corrupt; re-download it or move it out of "
                        "the folder") from None
    if not np.isfinite(data).all():
        _refuse_non_finite(path, image)
    clipped = _clip_negative(path, data)
    zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
    slices, (row_mm, col_mm) = _radiological(data, AXES[axis], zooms)
    if not keep_empty:
        slices = _trim_empty(slices)
    if len(slices) == 0 or not slices.any():
        raise DataError(path, "holds no anatomy (every slice is empty)",
                        "check the file" + ("" if keep_empty else
                                            ", or keep all slices with --keep-empty"))
    return _crop_or_pad(slices, size), (row_mm, col_mm, zooms[AXES[axis]]), clipped


def _refuse_non_finite(path: Path, image: nib.Nifti1Image) -> None:
    """NaN or Inf in the float32 data: in the file, or finite values beyond float32."""
    if np.isfinite(np.asanyarray(image.dataobj)).all():
        raise DataError(path, "has values beyond the float32 range",
                        "rescale the volume (its intensities are far beyond any MRI's)")
    raise DataError(path, "contains NaN or Inf values",
                    "repair the file, or leave it out with --skip-bad-files")


def _clip_negative(path: Path, data: np.ndarray) -> int:
    """Clip negative voxels to zero in place; return how many there were."""
    negative = data < 0
    count = int(negative.sum())
    if count == 0:
        return 0
    below = -float(data[negative].sum(dtype=np.float64))
    total = float(np.abs(data).sum(dtype=np.float64))
    if below > NEGATIVE_LIMIT * total:
        raise DataError(path, f"is no magnitude image: its negative values hold "
                              f"{100 * below / total:.0f} % of its absolute intensity "
                              f"(minimum {data.min():g})",
                        "convert magnitude images (a few small negative values from "
                        f"interpolation, under {100 * NEGATIVE_LIMIT:g} %, are clipped to 0)")
    np.maximum(data, 0, out=data)
    return count


def _radiological(data: np.ndarray, axis: int,
                  zooms: Tuple[float, ...]) -> Tuple[np.ndarray, Tuple[float, float]]:
    """Slices ``(n, rows, cols)`` of a RAS+ volume along ``axis``, in display orientation."""
    if axis == 2:  # rows: anterior -> posterior, cols: right -> left
        return data[::-1, ::-1, :].transpose(2, 1, 0), (zooms[1], zooms[0])
    if axis == 1:  # rows: superior -> inferior, cols: right -> left
        return data[::-1, :, ::-1].transpose(1, 2, 0), (zooms[2], zooms[0])
    # rows: superior -> inferior, cols: anterior -> posterior
    return data[:, ::-1, ::-1].transpose(0, 2, 1), (zooms[2], zooms[1])


def _trim_empty(slices: np.ndarray) -> np.ndarray:
    reference = np.percentile(slices, 99)
    full = np.flatnonzero(slices.reshape(len(slices), -1).max(axis=1)
                          > EMPTY_FRACTION * reference)
    if len(full) == 0:
        return slices[:0]
    return slices[full[0]: full[-1] + 1]


def _crop_or_pad(slices: np.ndarray, size: int) -> np.ndarray:
    out = np.zeros((len(slices), size, size), dtype=np.float32)
    src, dst = [], []
    for side in slices.shape[1:]:
        if side >= size:
            start = (side - size) // 2
            src.append(slice(start, start + size))
            dst.append(slice(0, size))
        else:
            start = (size - side) // 2
            src.append(slice(0, side))
            dst.append(slice(start, start + side))
    out[:, dst[0], dst[1]] = slices[:, src[0], src[1]]
    return out


def smooth_phase(size: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth random phase field ``(size, size)`` in radians."""
    y, x = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    c = rng.uniform(-1.0, 1.0, 6) * np.array([np.pi, 1.5, 1.5, 1.0, 1.0, 1.0])
    return c[0] + c[1] * x + c[2] * y + c[3] * x * x + c[4] * y * y + c[5] * x * y


# ---------------------------------------------------------------------------------------------
# The format, for convert


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--axis", choices=tuple(AXES), default="axial",
                        help="nifti: slicing direction, in RAS+ orientation")
    parser.add_argument("--size", type=int, default=256,
                        help="nifti: slices are centre-cropped or zero-padded to SIZE x SIZE")
    parser.add_argument("--phase", action="store_true",
                        help="nifti: multiply each image by a smooth random phase before the "
                             "FFT, so that k-space is not Hermitian")
    parser.add_argument("--keep-empty", action="store_true",
                        help="nifti: keep empty (background-only) slices at the volume ends")


def check_options(args: argparse.Namespace) -> None:
    if args.size < 16 or args.size % 2 or args.size > MAX_SIZE:
        raise UserError(f"--size must be an even number from 16 to {MAX_SIZE}, not "
                        f"{args.size}")


def check(source: Source, args: argparse.Namespace) -> Source:
    """The source's header checked, ``--size`` against it included."""
    check_size(source.path, open_volume(source.path), args.axis, args.size)
    source.coils, source.cols = 1, args.size
    return source


def read(source: Source, args: argparse.Namespace, singlecoil: bool,
         rng: np.random.Generator) -> Converted:
    """A volume as ``fft2c`` k-space (with a smooth phase with ``--phase``) and the image as
    target; always one coil."""
    size = args.size
    images, (row_mm, col_mm, slice_mm), clipped = read_slices(source.path, args.axis, size,
                                                              args.keep_empty)
    phase = None
    if args.phase:
        phase = np.exp(1j * smooth_phase(size, rng)).astype(np.complex64)
    return Converted(images.shape, (row_mm * size, col_mm * size, slice_mm), 1,
                     _slices(images, phase), clipped)


def _slices(images: np.ndarray, phase: Optional[np.ndarray]) -> Slices:
    for image in images:
        x = image.astype(np.complex64) if phase is None else image * phase
        kspace = fastmri.fft2c(torch.view_as_real(torch.from_numpy(x)))
        yield torch.view_as_complex(kspace).numpy(), image


FORMAT = Format(
    name="nifti", help="3-D magnitude volumes (.nii, .nii.gz)", suffixes=SUFFIXES,
    default_split=(0.6, 0.2, 0.2), split_help="0.6 0.2 0.2",
    add_arguments=add_arguments, check_options=check_options, check=check, read=read)
