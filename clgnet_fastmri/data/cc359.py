"""Calgary-Campinas (CC-359) raw k-space volumes, read for ``clgnet-fastmri convert``.

Layout of the releases (single-channel ``.npy``, 12-channel ``.h5`` with a ``kspace``
dataset): real float array ``(slices, rows, cols, 2 x coils)``, real and imaginary parts
interleaved on the last axis. The readout direction has already been inverse-Fourier
transformed, so each slice is one 2-D k-space (rows: phase encode, cols: slice encode; the
12-channel data is zero beyond 85 % of the slice-encode lines, partial Fourier). The k-space
is *not* centred: the releases' reference image is ``ifft2`` of it, DC at index 0.

Conversion to fastMRI's convention (DC in the middle, image = ``fastmri.ifft2c(kspace)``):
with ``x = ifft2(K, norm="ortho")`` the source's coil image, the written k-space is
``fft2c(x)``. For even sides this is exactly ``fftshift(K * (-1)^(ky + kx))``: the same
samples, moved and sign-flipped, nothing interpolated. The orthonormal FFT keeps the
source's k-space values, so images are ``sqrt(rows x cols)`` times the releases' numpy
``ifft2`` reference (NMSE, PSNR and SSIM as fastmri computes them do not change with a
global scale). The partial-Fourier zeros are kept as they are.

Emulated single coil (``--singlecoil``): the first virtual coil of a per-volume SVD coil
compression (Buehrer et al., MRM 2007): ``v = u^H k`` with ``u`` the principal eigenvector
of the coil covariance ``sum k k^H`` over all k-space samples of the volume (equal to the
image-domain one, the FFT being unitary), its global phase fixed so that its largest entry is
real and positive. It keeps the coil's phase (k-space is not Hermitian); a one-coil source
is its own single coil (``u = [1]``).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Tuple, Union

import fastmri
import h5py
import numpy as np
import torch

from ..errors import DataError

SUFFIXES = (".h5", ".npy")
_LAYOUT = ("CC-359 raw k-space is a real array (slices, rows, cols, 2 x coils), real and "
           "imaginary parts interleaved on the last axis")


@contextlib.contextmanager
def open_raw(path: Union[str, os.PathLike]) -> Iterator[np.ndarray]:
    """Yield the raw ``(slices, rows, cols, 2 x coils)`` array of ``path`` (read lazily: an
    h5py dataset or a memory-mapped ``.npy``) after checking its layout."""
    path = Path(path)
    if path.suffix == ".npy":
        try:
            data = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(path, f"not a readable .npy array ({' '.join(str(exc).split())})",
                            "re-download it or move it out of the folder") from None
        _check_layout(path, data)
        yield data
        return
    try:
        hf = h5py.File(path, "r")
    except OSError:
        raise DataError(path, "not a readable HDF5 file (truncated, corrupt, or another "
                              "format)", "re-download it or move it out of the folder") from None
    with hf:
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


def coil_kspace(raw_slice: np.ndarray, path: Union[str, os.PathLike],
                index: int) -> np.ndarray:
    """One raw slice ``(rows, cols, 2 x coils)`` as complex128 ``(coils, rows, cols)``."""
    try:
        raw = np.asarray(raw_slice, dtype=np.float64)
    except (OSError, ValueError):
        raise DataError(path, f"slice {index} cannot be read (truncated or corrupt file)",
                        "re-download it or move it out of the folder") from None
    if not np.isfinite(raw).all():
        raise DataError(path, f"k-space slice {index} contains NaN or Inf values",
                        "repair the file, or leave it out with --skip-bad-files")
    return np.ascontiguousarray((raw[..., 0::2] + 1j * raw[..., 1::2]).transpose(2, 0, 1))


def centred(kspace: np.ndarray) -> np.ndarray:
    """Uncentred k-space (DC at index 0, even sides) in fastMRI's centred convention:
    ``fastmri.ifft2c`` of the result is ``ifft2(kspace, norm="ortho")``."""
    rows, cols = kspace.shape[-2:]
    sign = 1 - 2 * ((np.arange(rows)[:, None] + np.arange(cols)[None, :]) % 2)
    return np.fft.fftshift(kspace * sign, axes=(-2, -1))


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
