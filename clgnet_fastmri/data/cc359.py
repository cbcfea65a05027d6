"""Calgary-Campinas (CC-359) raw k-space, for ``clgnet-fastmri convert --format cc359-raw``.

Files are ``.h5`` (``kspace`` dataset) or ``.npy`` arrays ``(slices, rows, cols, 2 x coils)``:
the 12-channel ``.h5`` release centred in ky/kz, the single-channel ``.npy`` release
uncentred, each volume's centring checked on its data (``--centred`` / ``--uncentred`` to
state it). Written as ``multicoil`` files (``reconstruction_rss``); with ``--singlecoil``, or
when every source has one coil (the single-channel release), as ``singlecoil`` files
(``reconstruction_esc``) of the first virtual coil of a per-volume SVD coil compression.
``--drop-end-slices N`` drops the outer, nearly empty slices (default: DIRECT's 50 at each end
for multi-channel volumes, none for single-channel ones).
"""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path
from typing import Iterator, Optional, Tuple, Union

import fastmri
import h5py
import numpy as np
import torch

from ..errors import DataError, UserError, one_line
from .formats import Converted, Format, Slices, Source
from .synthetic import MAX_COILS, MAX_SIZE, MAX_SLICES

SUFFIXES = (".h5", ".npy")
LAYOUTS = ("centred", "uncentred")
# The energy near one candidate DC position must beat the other's by this factor to count as
# found: natural images put most of it within an eighth of each side of DC.
LAYOUT_RATIO = 4.0
_LAYOUT = ("CC-359 raw k-space is a real array (slices, rows, cols, 2 x coils), real and "
           "imaginary parts interleaved on the last axis")
_REDOWNLOAD = "re-download it or move it out of the folder"
# CC-359's T1 scans have 1 mm voxels; the raw files do not say, the header wants a FOV.
VOXEL_MM = 1.0
# DIRECT's CC-359 loader drops the 50 outer, nearly empty slices at each end of a
# 12-channel volume; the single-channel release (the paper's) keeps all.
DROP_END_SLICES = 50


@contextlib.contextmanager
def open_raw(path: Union[str, os.PathLike]) -> Iterator[np.ndarray]:
    """Yield the raw ``(slices, rows, cols, 2 x coils)`` array of ``path`` (read lazily: an
    h5py dataset or a memory-mapped ``.npy``) after checking its layout."""
    path = Path(path)
    if path.suffix == ".npy":
        try:
            data = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(path, f"not a readable .npy array ({one_line(exc)})",
                            _REDOWNLOAD) from None
        if not isinstance(data, np.ndarray):  # np.load opens a zip archive whatever its name
            data.close()
            raise DataError(path, "is a .npz archive named .npy",
                            "extract its k-space array with numpy and save it with np.save")
        _check_layout(path, data)
        yield data
        return
    try:
        hf = h5py.File(path, "r")
    except OSError:
        raise DataError(path, "not a readable HDF5 file (truncated, corrupt, or another "
                              "format)", _REDOWNLOAD) from None
    with hf:
        if "ismrmrd_header" in hf:
            raise DataError(path, "is a fastMRI file (it has an 'ismrmrd_header'), not CC-359 "
                                  "raw k-space", "give the folder of the original release")
        if "kspace" not in hf or not isinstance(hf["kspace"], h5py.Dataset):
            raise DataError(path, "has no 'kspace' dataset", _LAYOUT)
        _check_layout(path, hf["kspace"])
        yield hf["kspace"]


def _check_layout(path: Path, data) -> None:
    if data.ndim != 4:
        raise DataError(path, f"'kspace' has {data.ndim} dimensions {tuple(data.shape)}, "
                              "expected 4", _LAYOUT)
    if not np.issubdtype(data.dtype, np.floating):
        raise DataError(path, f"'kspace' has dtype {data.dtype}, expected real floats", _LAYOUT)
    slices, rows, cols, channels = data.shape
    if channels == 0 or channels % 2:
        raise DataError(path, f"'kspace' has {channels} values on its last axis, an odd "
                              "number", _LAYOUT)
    if slices == 0 or rows < 2 or cols < 2:
        raise DataError(path, f"'kspace' has an empty shape {tuple(data.shape)}", _LAYOUT)
    if rows % 2 or cols % 2:
        raise DataError(path, f"'kspace' slices are {rows} x {cols}; odd sides are not "
                              "supported", "fastmri's transforms and CLGNet need even sides")
    # The header's claims, before anything of that size is allocated.
    if slices > MAX_SLICES or max(rows, cols) > MAX_SIZE or channels // 2 > MAX_COILS:
        raise DataError(path, f"'kspace' has shape {tuple(data.shape)}, beyond the "
                              f"{MAX_SLICES} slices, {MAX_SIZE} x {MAX_SIZE} k-space and "
                              f"{MAX_COILS} coils convert handles",
                        "check the file (a damaged header?)")


def coil_kspace(raw: np.ndarray, index: int, path: Union[str, os.PathLike]) -> np.ndarray:
    """Slice ``index`` of a raw array as complex128 ``(coils, rows, cols)``."""
    try:
        data = np.asarray(raw[index], dtype=np.float64)
    except (OSError, ValueError):  # truncated .npy, corrupt (compressed) HDF5 chunk
        raise DataError(path, f"slice {index} cannot be read (truncated or corrupt file)",
                        _REDOWNLOAD) from None
    if not np.isfinite(data).all():
        raise DataError(path, f"k-space slice {index} contains NaN or Inf values",
                        "repair the file, or leave it out with --skip-bad-files")
    return np.ascontiguousarray((data[..., 0::2] + 1j * data[..., 1::2]).transpose(2, 0, 1))


def release_layout(path: Path, coils: int) -> Optional[str]:
    """The centring the file's release stores: 12-channel ``.h5`` centred, single-channel
    ``.npy`` uncentred; None for a combination no release has."""
    if path.suffix == ".h5" and coils > 1:
        return "centred"
    if path.suffix == ".npy" and coils == 1:
        return "uncentred"
    return None


def found_layout(raw: np.ndarray, path: Path) -> Optional[str]:
    """Where the k-space energy of the volume's middle slice peaks: ``"centred"`` (around
    ``(rows // 2, cols // 2)``), ``"uncentred"`` (around index 0, wrapping), or None when
    neither clearly does."""
    amplitude = np.abs(coil_kspace(raw, raw.shape[0] // 2, path))
    energy = ((amplitude / (amplitude.max() or 1.0)) ** 2).sum(axis=0)  # no overflow
    rows, cols = energy.shape
    near = np.roll(energy, (rows // 8, cols // 8), axis=(0, 1))[: 2 * (rows // 8) + 1,
                                                                : 2 * (cols // 8) + 1].sum()
    middle = energy[rows // 2 - rows // 8: rows // 2 + rows // 8 + 1,
                    cols // 2 - cols // 8: cols // 2 + cols // 8 + 1].sum()
    if middle > LAYOUT_RATIO * near:
        return "centred"
    if near > LAYOUT_RATIO * middle:
        return "uncentred"
    return None


def decide_layout(path: Path, found: Optional[str], release: Optional[str],
                  override: Optional[str]) -> str:
    """The centring to convert ``path`` with: what the data shows, which must agree with
    ``override`` (``--centred``/``--uncentred``) or else the release; either of them when
    the data does not show it."""
    wanted, said_by = (override, f"--{override}") if override else (
        release, f"its release ({path.suffix}, {'multi' if release == 'centred' else 'single'}"
                 "-channel) stores it")
    if found and wanted and found != wanted:
        where = "array centre" if found == "centred" else "array corners (index 0)"
        raise DataError(path, f"its k-space energy peaks at the {where}, i.e. {found}, but "
                              f"{said_by} {wanted}",
                        f"check the file; pass --{found} to convert it as it is")
    if found or wanted:
        return found or wanted
    raise DataError(path, "cannot tell whether its k-space is centred (no clear energy peak, "
                          "and no release stores this suffix and coil count)",
                    "pass --centred or --uncentred")


def fastmri_kspace(kspace: np.ndarray, layout: str) -> np.ndarray:
    """k-space ``(..., rows, cols)`` (even sides) of ``layout`` in fastMRI's convention:
    ``fastmri.ifft2c`` of the result is ``ifft2`` (orthonormal) of the uncentred k-space."""
    rows, cols = kspace.shape[-2:]
    if layout == "centred":
        return kspace * _checkerboard(rows, cols, rows // 2 + cols // 2)
    return np.fft.fftshift(kspace * _checkerboard(rows, cols, 0), axes=(-2, -1))


def _checkerboard(rows: int, cols: int, offset: int) -> np.ndarray:
    """``(-1)^(y + z - offset)`` as integers (an exact sign flip)."""
    return 1 - 2 * ((np.arange(rows)[:, None] + np.arange(cols)[None, :] - offset) % 2)


def compression_vector(covariance: np.ndarray) -> np.ndarray:
    """The first SVD virtual coil's weights ``u`` (coils,) from the coil covariance."""
    _, vectors = np.linalg.eigh(covariance)
    u = vectors[:, -1]
    largest = u[np.argmax(np.abs(u))]
    return u * (np.conj(largest) / np.abs(largest))


def target(kspace: np.ndarray) -> np.ndarray:
    """float32 target of one centred slice: ``|ifft2c|`` ``(rows, cols)`` or, for
    ``(coils, rows, cols)``, its RSS over coils (fastmri's ``ifft2c``, ``complex_abs``,
    ``rss``)."""
    image = fastmri.complex_abs(fastmri.ifft2c(torch.view_as_real(torch.from_numpy(
        np.ascontiguousarray(kspace, dtype=np.complex64)))))
    if image.ndim == 3:
        image = fastmri.rss(image, dim=0)
    return image.numpy().astype(np.float32)


def shape_of(path: Union[str, os.PathLike]) -> Tuple[int, int, int, int]:
    """``(slices, coils, rows, cols)`` of a source file (its layout checked)."""
    with open_raw(path) as raw:
        slices, rows, cols, channels = raw.shape
    return slices, channels // 2, rows, cols


def probe(path: Union[str, os.PathLike],
          override: Optional[str]) -> Tuple[Tuple[int, int, int, int], str]:
    """``shape_of(path)`` and the centring to convert it with (``decide_layout``)."""
    path = Path(path)
    with open_raw(path) as raw:
        slices, rows, cols, channels = raw.shape
        layout = decide_layout(path, found_layout(raw, path),
                               release_layout(path, channels // 2), override)
    return (slices, channels // 2, rows, cols), layout


# ---------------------------------------------------------------------------------------------
# The format, for convert


def add_arguments(parser: argparse.ArgumentParser) -> None:
    none = "%(default).0s"  # see synthetic.add_arguments
    layout = parser.add_mutually_exclusive_group()
    for name in LAYOUTS:
        layout.add_argument(f"--{name}", dest="layout", action="store_const", const=name,
                            help=f"cc359-raw: the k-space is {name} (default: found from the "
                                 "data, which must agree with the file's release: 12-channel "
                                 ".h5 centred, single-channel .npy uncentred)" + none)
    parser.add_argument("--drop-end-slices", type=int, default=None, metavar="N",
                        help="cc359-raw: drop N slices at each end of every volume (default: "
                             f"{DROP_END_SLICES} for multi-channel volumes, as DIRECT's loader; "
                             "0 for single-channel ones, as the paper)" + none)


def check_options(args: argparse.Namespace) -> None:
    if args.drop_end_slices is not None and args.drop_end_slices < 0:
        raise UserError(f"--drop-end-slices must be 0 or more, not {args.drop_end_slices}")


def check(source: Source, args: argparse.Namespace) -> Source:
    """The source's shape and centring (``probe``) and the slices kept: ``found`` is
    ``((first, stop), layout)``."""
    (slices, coils, _, cols), layout = probe(source.path, args.layout)
    drop = args.drop_end_slices
    if drop is None:
        drop = DROP_END_SLICES if coils > 1 else 0
    if slices <= 2 * drop:
        raise DataError(source.path, f"has {slices} slices, none left after dropping {drop} "
                                     "at each end", "pass a smaller --drop-end-slices")
    source.coils, source.cols, source.found = coils, cols, ((drop, slices - drop), layout)
    return source


def read(source: Source, args: argparse.Namespace, singlecoil: bool,
         rng: np.random.Generator) -> Converted:
    """A checked volume as centred k-space and RSS (or emulated single-coil) targets."""
    _, coils, rows, cols = shape_of(source.path)
    (first, stop), _ = source.found
    fov = (rows * VOXEL_MM, cols * VOXEL_MM, VOXEL_MM)
    shape = (stop - first, rows, cols) if singlecoil else (stop - first, coils, rows, cols)
    return Converted(shape, fov, coils, _slices(source, singlecoil))


def _slices(source: Source, singlecoil: bool) -> Slices:
    path, ((first, stop), layout) = source.path, source.found
    indices = range(first, stop)
    with open_raw(path) as raw:
        weights = None
        if singlecoil:
            coils = raw.shape[-1] // 2
            covariance = np.zeros((coils, coils), dtype=np.complex128)
            for k in indices:
                flat = coil_kspace(raw, k, path).reshape(coils, -1)
                covariance += flat @ flat.conj().T
            weights = compression_vector(covariance).conj()
        for k in indices:
            kspace = coil_kspace(raw, k, path)
            if weights is not None:
                kspace = np.tensordot(weights, kspace, axes=1)
            with np.errstate(over="ignore"):  # convert names values beyond float32
                kspace = fastmri_kspace(kspace, layout).astype(np.complex64)
            yield kspace, target(kspace)


FORMAT = Format(
    name="cc359-raw",
    help="Calgary-Campinas raw k-space (.h5 or .npy, slices x rows x cols x 2*coils)",
    suffixes=SUFFIXES,
    # CC-359's single-channel release: 25 training, 10 validation, 10 test subjects.
    default_split=(25 / 45, 10 / 45, 10 / 45),
    split_help="25/45 10/45 10/45, i.e. the paper's 25/10/10 of 45",
    add_arguments=add_arguments, check_options=check_options, check=check, read=read)
