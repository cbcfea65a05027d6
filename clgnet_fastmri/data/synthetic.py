"""Synthetic knee and brain MRI in the fastMRI HDF5 layout (``clgnet-fastmri make-data``).

No real fastMRI or CC-359 data can be downloaded on this project's machines, and a new user
should be able to run training, evaluation and submission export before downloading
anything. This module writes a dataset that the unmodified ``fastmri`` package reads exactly
as it reads the real one::

    <out>/{challenge}_train/*.h5    fully-sampled k-space and target
    <out>/{challenge}_val/*.h5      the same
    <out>/{challenge}_test/*.h5     k-space masked like the challenge set, ``mask``, no target
    <out>/{challenge}_test_gt/*.h5  the fully-sampled targets of the test volumes (same file
                                    names), what ``fastmri.evaluate.evaluate`` scores against

Library API
-----------
``make_volume(anatomy, ...) -> SyntheticVolume``
    One volume in memory (k-space, target, noise-free target, header, attributes); no files.
``make_dataset(out_dir, ...) -> DatasetSummary``
    A whole dataset on disk; this is what ``make-data`` runs.
``volume_seed(seed, split, index)``
    The seed ``make_dataset`` gives volume ``index`` of ``split``: ``make_volume(...,
    seed=volume_seed(0, "train", 3))`` rebuilds that volume in memory.
``kspace_shape(anatomy, size)``, ``center_fraction(acceleration)``, ``sample_mask(...)``
    The k-space grid, the fastMRI centre fraction rule and the test-set mask.
``GENERATOR_VERSION``
    Changes whenever the same arguments would give different data (for cache keys).

Files
-----
Every file has ``kspace`` (complex64; ``(slices, rows, cols)`` singlecoil, ``(slices, coils,
rows, cols)`` multicoil; DC at the centre, ``fastmri.fft2c`` convention), a scalar
``ismrmrd_header`` (ISMRMRD XML modelled on the real fastMRI headers) and the attributes
``acquisition`` and ``patient_id``. Training and validation files add the target
(``reconstruction_esc`` singlecoil, ``reconstruction_rss`` multicoil: float32 ``(slices,
size, size)``, the centre crop (fastmri's ``center_crop``) of ``|ifft2c(kspace)|``, RSS over
coils for multicoil, computed from the final noisy k-space so it is exactly consistent) and
the attributes ``max`` and ``norm`` (maximum and L2 norm of the volume's target). Test files
hold the masked k-space, ``mask`` (bool, ``(cols,)``) and the attributes ``acceleration`` and
``num_low_frequency``; the matching ``_test_gt`` file holds the fully-sampled target with
``acquisition``, ``acceleration``, ``num_low_frequency``, ``max``, ``norm`` and
``patient_id``. Masks come from ``fastmri.data.subsample.RandomMaskFunc`` with the fastMRI
challenge convention (centre fraction 0.32 / acceleration: 4x -> 0.08, 8x -> 0.04), one mask
per volume, the acceleration drawn from the list given.

Content
-------
Both anatomies are rendered from a 3-D model, so the slices of a volume are coherent (the
same bones, ventricles and folds, cut at other depths) yet all differ. As in a real volume
the slices span the whole object, so their number sets their spacing (default as in the real
data: 35 knee slices, about 3 mm apart; 16 brain slices, about 6 mm). Every volume draws its
own size, position, in-plane rotation, proportions, tissue contrasts, coil geometry, phase,
bias and SNR. Edges are partial-volume (box-filtered) at the pixel scale, and the fine
textures are band-limited noise defined in millimetres, so a smaller ``size`` is the same
object at a lower resolution.

* Knee (fastMRI coronal knee): k-space ``(2 size) x (1.15 size)`` (640 x 368 at full size:
  the readout is 2x oversampled, so the object fills the central half of the rows), target
  ``size x size`` (320 x 320; 140 mm field of view), slices through the whole knee from
  anterior (patella, patellar tendon) to posterior (separate condyles, popliteal vessels,
  muscle). The leg always fits the phase-encoding field of view (no wrap-around).
  Femur with condyles and notch, tibia with plateau, spines and fibula, fatty marrow with
  trabecular texture and a physeal scar, thin cortex, cartilage layers (zonal contrast), a
  fluid film, dark menisci, collateral and cruciate ligaments, iliotibial band, striated
  muscle with fat septa, subcutaneous fat with fibrous septa, skin. As in the real data the
  outermost ~4.6 % of k-space columns on each side are not acquired (zero); the header's
  ``encodingLimits`` say so, giving ``padding_left > 0``. ``CORPD_FBK`` (proton density) and
  ``CORPDFS_FBK`` (fat suppressed: fat and marrow dark, fluid bright, lower SNR) are drawn
  with equal probability.
* Brain (CC-359 style axial T1, ``AXT1``): k-space and target ``size x size`` (256 x 256 at
  full size, 1 mm pixels), slices from the midbrain to just below the vertex. Scalp
  (skin, fat, temporalis muscle), skull (tables and diploe), CSF, a cortical grey-matter
  ribbon folded around sulci that run in from the surface (plus the interhemispheric and
  Sylvian fissures), white matter, lateral (with septum), third and temporal-horn
  ventricles, caudate, putamen, thalamus, midbrain with its cistern.

Physics: the magnetisation is multiplied by coil sensitivities (multicoil: loop coils around
the object, magnitude ``(r^2 / (r^2 + d^2))^1.5`` and smooth phase; singlecoil: a smooth bias,
the square root of their root-sum-of-squares) and a smooth non-zero image phase (so k-space
is not Hermitian), transformed with ``fft2c`` and given complex white Gaussian noise. The
SNR, defined as the mean noise-free (coil-combined) magnitude over the object in the target
crop divided by the standard deviation of the real (or imaginary) part of the noise, is drawn
per volume: 22-35 for CORPD_FBK, 8-13 for CORPDFS_FBK, 28-45 for AXT1. Intensities sit on the
scale of real fastMRI data (knee singlecoil targets ~1e-5 to 5e-4). At full size, zero-filled
singlecoil reconstructions (RandomMaskFunc, per-volume PSNR and SSIM as fastmri.evaluate
computes them) score about 28 dB / 0.73 (PD knee), 31 dB / 0.78 (PD-FS knee) and 29 dB / 0.74
(brain) at 4x, and 24 dB / 0.63, 28 dB / 0.72 and 26 dB / 0.69 at 8x.

Each volume has its own random stream derived from ``(seed, split, index)``, so asking for
more volumes never changes the earlier ones.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import h5py
import numpy as np
from tqdm import tqdm

from ..errors import UserError
from ..files import atomic_output, ensure_writable_dir

# Bumped whenever the same arguments and seed would give different data (e.g. a changed
# anatomy model): caches of generated sets can put it in their key.
GENERATOR_VERSION = 1

ANATOMIES = ("knee", "brain")
CHALLENGES = ("singlecoil", "multicoil")
SPLITS = ("train", "val", "test")
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}

# Limits that make-data enforces (before anything is written).
MIN_SIZE = 16
MAX_SIZE = 1024
MAX_SLICES = 512
MAX_COILS = 64
MAX_VOLUMES = 100_000
MAX_ACCELERATION = 32

DEFAULT_SPLITS = {"train": 8, "val": 2, "test": 2}
DEFAULT_ACCELERATIONS = (4, 8)

SeedLike = Union[int, Sequence[int], np.random.SeedSequence]


@dataclass(frozen=True)
class AnatomySpec:
    """The acquisition geometry of one anatomy (full-size values; ``size`` scales pixels)."""

    name: str
    full_size: int  # target side in pixels at full size
    fov_mm: float  # field of view of the (square) target
    readout_oversampling: int  # k-space rows = size * this
    pe_ratio: float  # k-space columns ~= size * this (rounded to even)
    pe_padding: float  # fraction of columns left unacquired (zero) at each k-space edge
    slice_thickness_mm: float
    default_slices: int  # real volumes: knee ~35, brain 16
    acquisitions: Tuple[str, ...]
    default_coils: int


SPECS: Dict[str, AnatomySpec] = {
    # fastMRI knee: 640 x 368 k-space (2x readout oversampling), 320 x 320 targets, 140 mm
    # field of view, 3 mm slices, 15-channel knee coil.
    "knee": AnatomySpec("knee", 320, 140.0, 2, 368 / 320, 17 / 368, 3.0, 35,
                        ("CORPD_FBK", "CORPDFS_FBK"), 15),
    # CC-359 style brain: 256 x 256, 1 mm pixels, 12-channel head coil.
    "brain": AnatomySpec("brain", 256, 256.0, 1, 1.0, 0.0, 5.0, 16, ("AXT1",), 12),
}

# SNR ranges (mean foreground magnitude / noise std of the real part), per acquisition.
_SNR_RANGE = {"CORPD_FBK": (22.0, 35.0), "CORPDFS_FBK": (8.0, 13.0), "AXT1": (28.0, 45.0)}
# Typical magnitude of a bright tissue (fat in PD, white matter in T1) in the targets.
_SIGNAL_SCALE = 2.2e-4


# ---------------------------------------------------------------------------------------------
# Small public helpers


def _spec(anatomy: str) -> AnatomySpec:
    if anatomy not in SPECS:
        raise UserError(f"unknown anatomy {anatomy!r}; choose one of {', '.join(ANATOMIES)}")
    return SPECS[anatomy]


def kspace_shape(anatomy: str = "knee", size: Optional[int] = None) -> Tuple[int, int]:
    """``(rows, cols)`` of one k-space slice for a ``size x size`` target."""
    spec = _spec(anatomy)
    size = spec.full_size if size is None else int(size)
    return size * spec.readout_oversampling, 2 * int(round(size * spec.pe_ratio / 2))


def acquired_columns(anatomy: str, cols: int) -> Tuple[int, int]:
    """``(padding_left, padding_right)``: the acquired k-space columns are ``[left, right)``."""
    pad = int(round(cols * _spec(anatomy).pe_padding))
    return pad, cols - pad


def center_fraction(acceleration: int) -> float:
    """fastMRI's challenge convention: 4x -> 0.08, 8x -> 0.04 (0.32 / acceleration)."""
    return 0.32 / acceleration


def sample_mask(num_cols: int, acceleration: int, seed: int) -> Tuple[np.ndarray, int]:
    """A test-set mask from ``fastmri.data.subsample.RandomMaskFunc``.

    Returns ``(mask, num_low_frequencies)`` with ``mask`` a bool array of shape
    ``(num_cols,)``. Deterministic for a given ``seed``.
    """
    from fastmri.data.subsample import RandomMaskFunc

    mask_func = RandomMaskFunc([center_fraction(acceleration)], [acceleration])
    mask, num_low = mask_func((1, num_cols, 1), seed=seed)
    return mask.numpy().reshape(num_cols) > 0, int(num_low)


def volume_seed(seed: int, split: str, index: int) -> Tuple[int, int, int]:
    """The seed of volume ``index`` of ``split`` in ``make_dataset(..., seed=seed)``."""
    return (int(seed), _SPLIT_CODES[split], int(index))


# ---------------------------------------------------------------------------------------------
# Geometry helpers: soft (partial-volume) shapes on a pixel grid


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _ramp(d, edge: float):
    """Occupancy of the region ``d < 0`` (``d`` a signed distance): a box-filtered edge."""
    return np.clip(0.5 - d / edge, 0.0, 1.0)


def _band(d, width: float, edge: float):
    """Box-filtered occupancy of the band ``|d| < width / 2`` (exact for thin lines too)."""
    a = np.abs(d)
    hi = np.minimum(a + 0.5 * edge, 0.5 * width)
    lo = np.maximum(a - 0.5 * edge, -0.5 * width)
    return np.clip(hi - lo, 0.0, None) / edge


def _paint(img: np.ndarray, occupancy, value) -> None:
    """Lay a tissue over ``img`` (in place) where ``occupancy`` (0..1) says it is."""
    img += occupancy * (value - img)


def _ellipse_sd(u, v, cu, cv, a, b, angle: float = 0.0):
    """Approximate signed distance to an ellipse (first-order, accurate near the edge)."""
    x = u - cu
    y = v - cv
    if angle:
        c, s = math.cos(angle), math.sin(angle)
        x, y = c * x + s * y, c * y - s * x
    xa, yb = x / a, y / b
    k = np.sqrt(xa * xa + yb * yb)
    g = np.sqrt((xa / a) ** 2 + (yb / b) ** 2)
    return (k - 1.0) * np.where(g > 1e-6, k / np.maximum(g, 1e-6), np.minimum(a, b))


def _segment_sd(u, v, p0, p1, radius: float):
    """Signed distance to a capsule (segment ``p0``-``p1`` thickened by ``radius``)."""
    bu, bv = p1[0] - p0[0], p1[1] - p0[1]
    pu, pv = u - p0[0], v - p0[1]
    h = np.clip((pu * bu + pv * bv) / (bu * bu + bv * bv), 0.0, 1.0)
    return np.hypot(pu - bu * h, pv - bv * h) - radius


def _smin(a, b, k: float):
    """Smooth union of two signed distances (blend radius ``k``)."""
    h = np.clip(k - np.abs(a - b), 0.0, None) / k
    return np.minimum(a, b) - h * h * k * 0.25


def _smax(a, b, k: float):
    """Smooth intersection of two signed distances."""
    return -_smin(-a, -b, k)


def _trumpet(x, length: float):
    """1 for ``x <= 0``, then a concave (metaphysis-like) decay over ``length``."""
    x = np.maximum(x, 0.0) / length
    return np.exp(-x * x / (1.0 + x))


def _box_profile(x):
    """Half-width of a rounded box (superellipse, power 4) at relative position ``x``."""
    x2 = x * x
    return np.sqrt(np.sqrt(np.clip(1.0 - x2 * x2, 0.0, 1.0)))


def _depth_factor(w: float, centre: float, half_depth: float) -> float:
    """Relative width of an ellipsoid-like body cut at depth ``w`` (0 where it is absent)."""
    q = 1.0 - ((w - centre) / half_depth) ** 2
    return math.sqrt(q) if q > 0 else 0.0


class _Waves:
    """A smooth 3-D random field of unit variance: a sum of random plane waves.

    Evaluated on the coarse grids only; ``stretch`` > 1 elongates structures along an axis.
    """

    def __init__(self, rng: np.random.Generator, wavelength: float, n: int = 24,
                 stretch: Tuple[float, float, float] = (1.0, 1.0, 1.0)):
        d = rng.standard_normal((n, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        d /= np.asarray(stretch, dtype=float)
        lam = wavelength * rng.uniform(0.75, 1.3, n)
        self.k = (2 * np.pi / lam)[:, None] * d
        self.phase = rng.uniform(0, 2 * np.pi, n)
        self.amp = math.sqrt(2.0 / n)

    def __call__(self, u, v, w):
        """The field at points ``(u, v, w)`` (arrays of one shape; ``w`` may be a number)."""
        k = self.k.astype(np.float32)
        w = np.asarray(w, dtype=np.float32)
        arg = u[..., None] * k[:, 0] + v[..., None] * k[:, 1] + w[..., None] * k[:, 2] \
            + self.phase.astype(np.float32)
        return self.amp * np.cos(arg).sum(axis=-1)


def _lerp_index(fine: np.ndarray, coarse: np.ndarray):
    """Indices and weights that interpolate linearly from ``coarse`` positions to ``fine``."""
    i = np.clip(np.searchsorted(coarse, fine) - 1, 0, len(coarse) - 2)
    t = ((fine - coarse[i]) / (coarse[i + 1] - coarse[i])).astype(np.float32)
    return i, np.clip(t, 0.0, 1.0)


class _Coarse:
    """A coarse grid over the image with bilinear upsampling to the pixel grid."""

    def __init__(self, x: np.ndarray, y: np.ndarray, spacing: float):
        nx = max(2, int(math.ceil((x[-1] - x[0]) / spacing)) + 1)
        ny = max(2, int(math.ceil((y[-1] - y[0]) / spacing)) + 1)
        self.x = np.linspace(x[0], x[-1], nx)
        self.y = np.linspace(y[0], y[-1], ny)
        self.spacing = (self.y[1] - self.y[0], self.x[1] - self.x[0])
        self._ix, self._tx = _lerp_index(x, self.x)
        self._iy, self._ty = _lerp_index(y, self.y)

    def up(self, a: np.ndarray) -> np.ndarray:
        """Upsample ``(..., ny, nx)`` coarse values to the pixel grid (bilinear)."""
        ix, tx, iy, ty = self._ix, self._tx, self._iy, self._ty
        a = a[..., ix] + (a[..., ix + 1] - a[..., ix]) * tx
        return a[..., iy, :] + (a[..., iy + 1, :] - a[..., iy, :]) * ty[:, None]


@functools.lru_cache(maxsize=32)
def _ring_filter(rows: int, cols: int, pixel: float, wavelength: float, aspect: float,
                 angle: float):
    """Spectrum of ``_bandpass`` (cached: every slice of a volume uses the same ones)."""
    fy = np.fft.fftfreq(rows, d=pixel).astype(np.float32)[:, None]
    fx = np.fft.fftfreq(cols, d=pixel).astype(np.float32)[None, :]
    c, s = math.cos(angle), math.sin(angle)
    fa = fx * c + fy * s
    fb = fy * c - fx * s
    k = np.sqrt((fa * aspect) ** 2 + fb * fb)
    k0 = 1.0 / wavelength
    width = 0.3 * k0
    g = np.exp(((k - k0) / width) ** 2 * -0.5)
    # Continuous integral of g^2 over the frequency plane (a thin ring of radius k0).
    energy = 2.0 * math.pi * k0 * width * math.sqrt(math.pi) / aspect
    grid = float(np.mean(g * g))
    rho = min(1.0, math.sqrt(grid / (energy * pixel * pixel)))
    g = g / math.sqrt(max(grid, 1e-30))
    g.setflags(write=False)
    return g, rho


def _bandpass(rng: np.random.Generator, shape: Tuple[int, int], pixel: float,
              wavelength: float, aspect: float = 1.0, angle: float = 0.0):
    """Two independent band-pass Gaussian textures around ``wavelength`` mm on the pixel grid.

    Returns ``(f1, f2, rho)``: ``f1`` and ``f2`` have unit variance on this grid and ``rho``
    (0..1) is the fraction of the texture's standard deviation at infinite resolution that
    the grid resolves, so ``rho * f`` is the partial-volume (band-limited) texture.
    ``aspect`` > 1 elongates the texture along ``angle``.
    """
    g, rho = _ring_filter(shape[0], shape[1], float(pixel), float(wavelength), float(aspect),
                          float(angle))
    noise = rng.standard_normal((2,) + tuple(shape), dtype=np.float32)
    f = np.fft.ifft2((noise[0] + 1j * noise[1]) * g, norm="ortho")
    return f.real.astype(np.float32), f.imag.astype(np.float32), rho


def _lines(f: np.ndarray, rho: float, width: float = 0.45):
    """A network of thin soft lines along the zero set of a unit texture ``f`` (0..1).

    Blended towards its mean where the grid cannot resolve the texture (``rho`` < 1).
    """
    t = np.clip(1.0 - np.abs(f) / width, 0.0, 1.0)
    mean = 0.5 * width * math.sqrt(2 / math.pi) * (1 - width / 6)  # E[t] for a unit Gaussian
    return rho * t + (1.0 - rho) * mean


class _Frame:
    """Pixel and coarse grids of one volume, in the anatomy's coordinates (mm).

    Image coordinates ``x`` (columns, phase encoding) and ``y`` (rows, readout) are in mm
    with the origin at pixel ``(rows // 2, cols // 2)``; the anatomy's ``(u, v)`` are
    ``(x, y)`` shifted, rotated and divided by the volume's scale.
    """

    def __init__(self, rows: int, cols: int, pixel: float, scale: float, angle: float,
                 shift: Tuple[float, float], texture_spacing: float, map_spacing: float):
        self.shape = (rows, cols)
        self.pixel = pixel
        self.scale = scale
        self.edge = pixel / scale  # one pixel in anatomical mm
        x = ((np.arange(cols) - cols // 2) * pixel).astype(np.float32)
        y = ((np.arange(rows) - rows // 2) * pixel).astype(np.float32)
        self._pose = (math.cos(angle), math.sin(angle), shift, scale)
        self.u, self.v = self._to_anatomy(x[None, :], y[:, None])
        self.tex = _Coarse(x, y, texture_spacing)
        self.tex_uv = self._to_anatomy(self.tex.x[None, :], self.tex.y[:, None])
        self.maps = _Coarse(x, y, map_spacing)
        self.maps_uv = self._to_anatomy(self.maps.x[None, :], self.maps.y[:, None])

    def _to_anatomy(self, x, y):
        c, s, (tx, ty), scale = self._pose
        xs, ys = x - tx, y - ty
        u = (c * xs + s * ys) / scale
        v = (c * ys - s * xs) / scale
        return u.astype(np.float32), v.astype(np.float32)


@dataclass
class _Slice:
    """What a renderer needs for one slice: pixel coordinates, depth and texture sources."""

    frame: _Frame
    w: float  # anatomical depth of the slice (mm)
    rng: np.random.Generator  # this slice's texture stream

    @property
    def u(self):
        return self.frame.u

    @property
    def v(self):
        return self.frame.v

    @property
    def edge(self) -> float:
        return self.frame.edge

    def smooth(self, fn: Callable) -> np.ndarray:
        """A smooth field ``fn(u, v, w)`` evaluated on the coarse grid, upsampled."""
        uc, vc = self.frame.tex_uv
        return self.frame.tex.up(fn(uc, vc, self.w).astype(np.float32))

    def zero_distance(self, fn: Callable, clip: float = 20.0) -> np.ndarray:
        """Signed distance (anatomical mm) to the zero set of the smooth field ``fn``."""
        uc, vc = self.frame.tex_uv
        f = fn(uc, vc, self.w)
        gy, gx = np.gradient(f, *self.frame.tex.spacing)
        sd = f / np.maximum(np.hypot(gx, gy), 1e-6) / self.frame.scale
        return self.frame.tex.up(np.clip(sd, -clip, clip).astype(np.float32))

    def texture(self, wavelength: float, aspect: float = 1.0, angle: float = 0.0):
        """Two fine band-pass textures (see ``_bandpass``), rotated with the anatomy."""
        c, s, _, scale = self.frame._pose
        return _bandpass(self.rng, self.frame.shape, self.frame.pixel, wavelength * scale,
                         aspect, angle + math.atan2(s, c))


def _jitter(rng: np.random.Generator, values: Mapping[str, float], spread: float = 0.07):
    return {k: v * float(np.exp(rng.normal(0.0, spread))) for k, v in values.items()}


# ---------------------------------------------------------------------------------------------
# Knee


class _Knee:
    """Coronal knee: ``u`` medial-lateral (columns), ``v`` superior-inferior (rows, down),
    ``w`` anterior-posterior (slices, anterior positive); the joint line is at ``v = 0``."""

    spec = SPECS["knee"]
    texture_spacing = 2.0
    map_spacing = 8.0
    loop_radius = 50.0

    _PD = dict(skin=0.50, fat=1.00, muscle=0.33, cartilage=0.58, fluid=0.66, ligament=0.06,
               meniscus=0.05, cortex=0.04, marrow=0.86, vessel=0.12)
    _FS = dict(skin=0.40, fat=0.10, muscle=0.36, cartilage=0.62, fluid=0.95, ligament=0.06,
               meniscus=0.06, cortex=0.04, marrow=0.14, vessel=0.30)

    def __init__(self, rng: np.random.Generator, acquisition: str):
        U = rng.uniform
        self.fat_suppressed = acquisition == "CORPDFS_FBK"
        self.tissue = _jitter(rng, self._FS if self.fat_suppressed else self._PD)
        self.scale = U(0.9, 1.1)
        self.angle = math.radians(U(-4.0, 4.0))
        self.shift = (U(-5.0, 5.0), U(-10.0, 10.0))
        self.w_centre = U(-8.0, 4.0)  # depth of the middle slice
        side = float(rng.choice([-1.0, 1.0]))  # +1: medial side towards +u
        self.side = s = side
        gap = U(0.3, 0.9)
        self.t_cf, self.t_ct = U(1.8, 3.0), U(1.5, 2.6)  # femoral / tibial cartilage
        # Femur: two condyles (ellipsoids) on a shaft that flares towards them, a notch
        # between them at the back.
        self.u_f = U(-3.0, 3.0)
        self.notch = U(5.0, 7.0)
        self.w_c = U(-12.0, -4.0)
        a_m, a_l = U(13.5, 16.5), U(13.0, 16.0)
        b_m, b_l = U(17.0, 22.0), U(16.0, 21.0)
        self.v_fb = -(gap / 2 + self.t_cf)  # bottom of the femoral bone
        self.cond_v = self.v_fb - 0.5 * (b_m + b_l)
        self.condyles = [  # (centre u, a, b, depth centre, half depth, centre v)
            (self.u_f + s * (a_m + self.notch), a_m, b_m, self.w_c, U(28.0, 34.0),
             self.v_fb - b_m),
            (self.u_f - s * (a_l + self.notch), a_l, b_l, self.w_c + U(-3, 3), U(27.0, 33.0),
             self.v_fb - b_l),
        ]
        self.H_f = self.notch + 0.5 * (a_m + a_l) * 1.9
        self.r_fs = U(12.0, 15.0)
        self.L_f = U(14.0, 20.0)
        self.D_f = U(28.0, 34.0)
        self.notch_h = U(14.0, 20.0)
        self.v_phys_f = self.cond_v - U(6.0, 12.0)
        self.phys_f = (U(0.8, 2.0), U(14.0, 24.0), U(0, 2 * np.pi), U(0, 2 * np.pi))
        # Tibia: plateau (a little wider than the condyles) with spines, narrowing to the
        # shaft; fibula behind it on the lateral side.
        self.u_t = self.u_f + U(-2.0, 2.0)
        self.v_tp = gap / 2 + self.t_ct
        self.H_t = self.notch + max(a_m, a_l) * 2.0 + U(1.5, 4.0)
        self.r_ts = U(11.0, 14.0)
        self.L_t = U(12.0, 18.0)
        self.D_t = U(24.0, 30.0)
        self.w_t = self.w_c + U(0.0, 6.0)
        self.spine_h = U(3.5, 6.5)
        self.v_phys_t = self.v_tp + U(15.0, 22.0)
        self.phys_t = (U(0.8, 2.0), U(14.0, 24.0), U(0, 2 * np.pi), U(0, 2 * np.pi))
        self.u_fh = self.u_t - s * (self.H_t - U(4.0, 7.0))
        self.v_fh = self.v_tp + U(21.0, 26.0)
        self.w_fib = self.w_t - U(14.0, 20.0)
        # Patella and its tendons (anterior slices).
        self.u_p = self.u_f + U(-4.0, 4.0)
        self.v_p = self.v_fb - U(22.0, 32.0)
        self.w_p = self.w_c + U(36.0, 44.0)
        self.pat_ab = (U(19.0, 23.0), U(15.0, 19.0))
        # Menisci, fluid, popliteal vessels.
        self.men_w = (U(9.0, 13.0), U(9.0, 13.0))
        self.men_h = (U(5.0, 8.0), U(5.0, 8.0))
        self.effusion = U(0.5, 3.0)
        self.w_pop = self.w_t - U(30.0, 36.0)
        self.u_pop = self.u_t + s * U(0.0, 8.0)
        # Soft tissue envelope; it must fit in the phase-encoding field of view (no wrap).
        self.leg_flare = U(2.0, 6.0)
        pe_half = self.spec.fov_mm * self.spec.pe_ratio / 2
        room = (0.97 * pe_half - abs(self.shift[0])) / self.scale - 90 * abs(math.sin(self.angle))
        self.leg_half = min(U(50.0, 58.0), room - self.leg_flare - 5.0)
        self.leg_depth = U(55.0, 62.0)
        self.w_leg = self.w_c + U(-4.0, 4.0)
        self.leg_bend = U(-0.03, 0.03)
        self.skin_t = U(1.2, 2.0)
        self.fat_t = U(3.0, 11.0)
        self.muscle_gap = U(16.0, 28.0)
        self.n_leg = _Waves(rng, 45.0)
        self.n_fat = _Waves(rng, 50.0)
        self.n_muscle = _Waves(rng, 35.0, stretch=(1.0, 2.0, 1.0))
        self.n_septa = _Waves(rng, 20.0, stretch=(1.0, 2.5, 1.0))
        self.n_fatsep = _Waves(rng, 12.0)
        self.n_gate = _Waves(rng, 25.0)
        self.n_vessel = _Waves(rng, 16.0, stretch=(1.0, 1.5, 1.0))
        self.n_tissue = _Waves(rng, 30.0)
        self.n_marrow = _Waves(rng, 16.0)

    # Coil geometry: a cylinder of loops around the leg (axis along v).
    def coil_centres(self, n: int, rng: np.random.Generator) -> np.ndarray:
        rings = [(-32.0, (n + 1) // 2), (32.0, n // 2)] if n > 8 else [(0.0, n)]
        radius = self.leg_half + self.leg_flare + 22.0
        out = []
        for v_ring, count in rings:
            start = rng.uniform(0, 2 * np.pi)
            for j in range(count):
                a = start + 2 * np.pi * j / count
                out.append((self.u_f + radius * math.cos(a), v_ring,
                            self.w_leg + radius * math.sin(a)))
        return np.asarray(out)

    def centre_point(self) -> Tuple[float, float, float]:
        return (self.u_f, 0.0, self.w_leg)

    def depth_range(self) -> Tuple[float, float]:
        """Slice depths through the knee (front to back)."""
        return self.w_leg - self.leg_depth + 8.0, self.w_leg + self.leg_depth - 8.0

    # -- bones --------------------------------------------------------------------------------
    def _femur(self, u, v, w):
        t = _trumpet(self.cond_v - v, self.L_f)  # 1 at the condyles, 0 up the shaft
        half = self.r_fs + (self.H_f - self.r_fs) * t
        depth = self.r_fs + (self.D_f - self.r_fs) * t
        q = _box_profile((w - (self.w_c + 6.0)) / depth)
        d = np.maximum(np.abs(u - self.u_f) - half * q, v - self.cond_v)
        d = np.where(q > 0, d, 1e3)
        for cu, a, b, wc, c, cv in self.condyles:
            f = _depth_factor(w, wc, c)
            if f > 0.05:
                d = _smin(d, _ellipse_sd(u, v, cu, cv, a * f ** 0.35, b * f), 5.0)
        # The intercondylar notch: an arch between the condyles, absent in front (trochlea).
        fn = _smoothstep((self.w_c + 12.0 - w) / 10.0)
        if fn > 0.05:
            deep = 1.0 + 0.8 * _smoothstep((self.w_c - 12.0 - w) / 10.0)  # back: higher
            notch = _ellipse_sd(u, v, self.u_f, self.v_fb + 2.0, self.notch * 1.1,
                                self.notch_h * fn * deep)
            d = _smax(d, -notch, 2.0)
        return d

    def _tibia_half(self, v, w):
        t = _trumpet(v - self.v_tp - 4.0, self.L_t)  # 1 at the plateau, 0 down the shaft
        half = self.r_ts + (self.H_t - self.r_ts) * t
        depth = self.r_ts + 2.0 + (self.D_t - self.r_ts - 2.0) * t
        return half * _box_profile((w - self.w_t) / depth)

    def _tibia_top(self, u, w):
        x = u - self.u_t
        f_sp = math.exp(-(((w - self.w_t) / 10.0) ** 2))
        spines = np.exp(-(((x - 4.0) / 2.5) ** 2)) + np.exp(-(((x + 4.0) / 2.5) ** 2))
        concave = np.exp(-(((np.abs(x) - self.H_t * 0.5) / 10.0) ** 2))
        rim = 2.5 * _smoothstep((np.abs(x) - (self.H_t - 4.0)) / 4.0) ** 2
        return self.v_tp + 0.8 * concave - self.spine_h * f_sp * spines + rim

    def _tibia(self, u, v, w, top):
        half = self._tibia_half(v, w)
        d = _smax(np.abs(u - self.u_t) - half, top - v, 2.0)
        return np.where(half > 0, d, 1e3)

    def _fibula(self, u, v, w):
        f = _depth_factor(w, self.w_fib, 12.0)
        if f < 0.05:
            return None
        head = _ellipse_sd(u, v, self.u_fh, self.v_fh, 9.5 * f ** 0.5, 10.0 * f ** 0.7)
        shaft = _segment_sd(u, v, (self.u_fh, self.v_fh),
                            (self.u_fh - self.side * 4.0, 170.0), 7.0 * f ** 0.5)
        return _smin(head, shaft, 8.0)

    def _patella(self, u, v, w):
        f = _depth_factor(w, self.w_p, 9.0)
        if f < 0.05:
            return None
        a, b = self.pat_ab
        return _ellipse_sd(u, v, self.u_p, self.v_p, a * f ** 0.5, b * f ** 0.7)

    # -- rendering ----------------------------------------------------------------------------
    def render(self, sl: _Slice) -> np.ndarray:
        u, v, w, e = sl.u, sl.v, sl.w, sl.edge
        T = self.tissue
        img = np.zeros(u.shape, np.float32)
        fw = _depth_factor(w, self.w_leg, self.leg_depth)
        if fw < 0.02:
            return img  # beyond the leg: noise only
        oblique = min(1.0 / fw, 3.0)  # layers cut obliquely look thicker
        s = self.side

        # Textures: marrow trabeculae, muscle fibres (along v), mottle; smooth variations.
        trab1, trab2, rho_t = sl.texture(3.0)
        fib, fib2, rho_f = sl.texture(2.2, aspect=6.0, angle=math.pi / 2)
        mot1, mot2, rho_m = sl.texture(6.0)
        var = sl.smooth(self.n_tissue)
        gate = _smoothstep(sl.smooth(self.n_gate) + 0.5)

        # Skin, subcutaneous fat (with fibrous septa and small vessels), deep fat and muscle.
        half = (self.leg_half + self.leg_flare * np.exp(-((v / 45.0) ** 2))) * fw
        half = half + 2.0 * sl.smooth(self.n_leg)
        d_leg = np.abs(u - self.u_f - self.leg_bend * v) - half
        _paint(img, _ramp(d_leg, e), T["skin"] * (1 + 0.06 * rho_m * mot2))
        fat = T["fat"] * (1 + 0.05 * var + 0.04 * rho_m * mot1)
        strands = _band(sl.zero_distance(self.n_fatsep), 0.3, e) * gate * gate
        vessels = _band(sl.zero_distance(self.n_vessel), 0.9, e) * (1 - gate) ** 2
        fat_val = fat + 0.4 * strands * (T["muscle"] - fat) + 0.7 * vessels * (T["vessel"] - fat)
        d_fat = d_leg + self.skin_t * oblique
        _paint(img, _ramp(d_fat, e), fat_val)
        t_fat = np.maximum(self.fat_t * oblique + 2.5 * sl.smooth(self.n_fat), 1.0)
        g_m = np.abs(v + 5.0) - self.muscle_gap + 12.0 * sl.smooth(self.n_muscle)
        septa = _band(sl.zero_distance(self.n_septa), 0.5, e) * gate
        muscle = T["muscle"] * (1 + 0.10 * var + 0.12 * rho_f * fib + 0.05 * rho_m * mot2)
        m_occ = _ramp(-g_m, e) * (1 - 0.8 * septa)
        _paint(img, _ramp(d_fat + t_fat, e), fat_val + m_occ * (muscle - fat_val))

        # Bones (signed distances), needed for the layers around them.
        d_fem = self._femur(u, v, w)
        top = self._tibia_top(u, w)
        d_tib = self._tibia(u, v, w, top)
        d_fib = self._fibula(u, v, w)
        d_pat = self._patella(u, v, w)

        # Joint fluid in the joint space and small recesses at its margins.
        d_fl = np.maximum(np.minimum(d_fem, d_tib) - self.effusion,
                          np.abs(v) - (3.0 + 2.0 * self.effusion))
        d_fl = np.maximum(d_fl, np.abs(u - self.u_t) - (self.H_t + 4.0))
        _paint(img, _ramp(d_fl, e), T["fluid"] * (1 + 0.05 * rho_m * mot1))

        # Popliteal vessels (posterior slices): vertical tubes, dark (flowing blood).
        for du, r in ((0.0, 3.2), (-s * 7.5, 4.5)):
            f = _depth_factor(w, self.w_pop, r)
            if f > 0:
                d = np.maximum(np.abs(u - self.u_pop - du) - r * f, d_fat + t_fat)
                _paint(img, _ramp(d, e), T["vessel"])

        # Ligaments and tendons: dark bands with a faint fibrous texture.
        lig = T["ligament"] * (1 + 0.6 * rho_f * fib2)
        v_mcl = self.v_tp + 40.0
        bands = [  # (p0, p1, radius, depth centre, half depth)
            ((self.u_f + s * (self.H_f + 1.2), self.cond_v - 18.0),
             (self.u_t + s * (float(self._tibia_half(v_mcl, self.w_t)) + 1.5), v_mcl),
             1.4, self.w_t, 13.0),  # medial collateral
            ((self.u_f - s * (self.H_f + 1.0), self.cond_v - 10.0),
             (self.u_fh - s * 4.0, self.v_fh - 4.0), 1.7, self.w_fib + 6.0, 11.0),  # lateral coll.
            ((self.u_f - s * (self.notch - 1.0), self.cond_v - 4.0),
             (self.u_t + s * 3.0, self.v_tp - 1.0), 2.8, self.w_t - 3.0, 10.0),  # ACL
            ((self.u_f + s * (self.notch - 1.5), self.cond_v - 1.0),
             (self.u_t - s * 1.0, self.v_tp + 11.0), 3.2, self.w_t - 16.0, 9.0),  # PCL
            ((self.u_f - s * (self.H_f + 7.0), -60.0),
             (self.u_t - s * (self.H_t + 2.5), self.v_tp + 8.0), 1.0, self.w_t + 4.0, 16.0),  # ITB
            ((self.u_p, self.v_p + 10.0), (self.u_t + s * 2.0, self.v_tp + 42.0),
             11.0, self.w_p - 5.0, 6.0),  # patellar tendon
            ((self.u_p, self.v_p - 12.0), (self.u_f, -130.0), 10.0, self.w_p - 3.0, 7.0),  # quad.
        ]
        for p0, p1, r, wc, hd in bands:
            f = _depth_factor(w, wc, hd)
            if f > 0.05:
                _paint(img, _ramp(_segment_sd(u, v, p0, p1, r * f), e), lig)

        # Menisci: dark wedges on the plateau rim, filling the gap the rounded condyles leave
        # (the femur is painted over them below).
        x = np.abs(u - self.u_t)
        art_t = 1.0 - _smoothstep((x - (self.H_t - 10.0)) / 5.0)
        t_ct = self.t_ct * art_t
        q_t = _depth_factor(w, self.w_t, self.D_t * 0.95)
        if q_t > 0:
            post = _smoothstep((self.w_t - 6.0 - w) / 10.0)  # posterior horns: wider
            surf = top - t_ct
            for sgn, wm, hm in zip((s, -s), self.men_w, self.men_h):
                width = wm * (1.0 + 0.8 * post) * q_t ** 0.3
                xm = sgn * (u - self.u_t) - (self.H_t + 1.0 - width)
                h = hm * q_t ** 0.5 * np.clip(xm / width, 0.0, 1.0) + 0.5
                d = np.maximum(np.maximum(-xm, xm - width), np.maximum(surf - h - v, v - surf))
                _paint(img, _ramp(d, e), T["meniscus"] * (1 + 0.4 * rho_m * mot1))

        # Articular cartilage, with a darker deep zone: femoral on the lower condyles,
        # tibial on the plateau.
        art_f = _smoothstep((v - (self.cond_v - 4.0)) / 8.0)
        zone = np.clip(d_fem / self.t_cf, 0.0, 1.0)
        cart = T["cartilage"] * (0.8 + 0.3 * zone) * (1 + 0.05 * rho_m * mot2)
        _paint(img, _ramp(d_fem - self.t_cf * art_f, e), cart)
        zone_t = np.clip(d_tib / self.t_ct, 0.0, 1.0)
        cart_t = T["cartilage"] * (0.8 + 0.3 * zone_t) * (1 + 0.05 * rho_m * mot2)
        in_top = 1.0 - _smoothstep((v - top - 3.0) / 3.0)
        _paint(img, _ramp(d_tib - t_ct * in_top, e), cart_t)

        # Bone: cortex, then marrow with trabeculae, heterogeneity and a physeal scar.
        trab = np.maximum(_lines(trab1, rho_t, 0.4), 0.6 * _lines(trab2, rho_t, 0.3))
        marrow = T["marrow"] * (1 - 0.16 * trab) * (1 + 0.07 * sl.smooth(self.n_marrow))
        cortex_t = 0.9 + 3.0 * _smoothstep((np.abs(v) - 28.0) / 45.0)
        bones = [(d_fem, cortex_t, (self.v_phys_f, self.phys_f)),
                 (d_tib, cortex_t, (self.v_phys_t, self.phys_t)),
                 (d_fib, 1.5, None), (d_pat, 1.3, None)]
        for d, tc, phys in bones:
            if d is None:
                continue
            _paint(img, _ramp(d, e), T["cortex"])
            m = marrow
            if phys is not None:
                vp, (amp, lam, ph1, ph2) = phys
                wave = amp * (np.sin(2 * np.pi * u / lam + ph1)
                              + 0.5 * np.sin(2 * np.pi * u / (0.43 * lam) + ph2))
                m = marrow * (1 - 0.35 * _band(v - vp - wave, 0.7, e) * (0.4 + 0.6 * gate))
            _paint(img, _ramp(d + tc, e), m)

        # The knee coil covers about 25 cm: signal fades towards the ends of the readout.
        img *= 1.0 - _smoothstep((np.abs(v) - 70.0) / 55.0)
        return img


# ---------------------------------------------------------------------------------------------
# Brain


class _Brain:
    """Axial brain: ``u`` left-right (columns), ``v`` anterior-posterior (rows, anterior at
    the top), ``w`` inferior-superior (slices); ``w = 0`` is the level of the lateral
    ventricles' bodies."""

    spec = SPECS["brain"]
    texture_spacing = 1.25
    map_spacing = 8.0
    loop_radius = 50.0

    _T1 = dict(skin=0.55, fat=1.05, muscle=0.35, cortex=0.04, diploe=0.72, csf=0.10,
               gm=0.50, wm=0.82, deep=0.62, midbrain=0.68, plexus=0.35)

    def __init__(self, rng: np.random.Generator, acquisition: str):
        U = rng.uniform
        self.tissue = _jitter(rng, self._T1)
        self.scale = U(0.92, 1.08)
        self.angle = math.radians(U(-7.0, 7.0))
        self.shift = (U(-8.0, 8.0), U(-8.0, 8.0))
        self.w_centre = U(14.0, 26.0)
        # Head: an egg-shaped dome on a cylinder.
        self.A0, self.B0 = U(72.0, 80.0), U(92.0, 102.0)
        self.taper = U(0.04, 0.10)
        self.w_h, self.C0 = U(-30.0, -20.0), U(92.0, 100.0)
        self.skin_t, self.scalp_t = U(1.2, 2.0), U(2.5, 5.5)
        self.table_t, self.diploe_t = U(1.1, 1.7), U(1.8, 3.8)
        self.csf_t = U(1.0, 3.0)  # more with atrophy
        self.gm_t = U(2.3, 3.0)
        self.sulc_hw = U(0.35, 0.8)
        self.sulc_depth = U(10.0, 15.0)
        self.u_mid = U(-2.0, 2.0)
        # Ventricles and deep grey matter.
        self.vent_a, self.vent_b = U(3.5, 8.0), U(20.0, 28.0)
        self.vent_v = U(-6.0, 2.0)
        self.vent_w = U(1.0, 7.0)
        self.sep = U(0.5, 1.1)
        self.vent_angle = math.radians(U(6.0, 14.0))
        self.cc_len = U(32.0, 38.0)
        self.n_head = _Waves(rng, 50.0)
        self.n_layers = _Waves(rng, 35.0)
        self.n_csf = _Waves(rng, 40.0)
        self.n_sulci = _Waves(rng, U(14.0, 18.0), n=40)
        self.n_sulci2 = _Waves(rng, 18.0, n=32)
        self.n_depth = _Waves(rng, 30.0)
        self.n_mid = _Waves(rng, 60.0)
        self.n_gm = _Waves(rng, 30.0)
        self.n_wm = _Waves(rng, 25.0)

    def coil_centres(self, n: int, rng: np.random.Generator) -> np.ndarray:
        rings = [(self.w_h + 35.0, (n + 1) // 2), (self.w_h + 80.0, n // 2)] if n > 8 \
            else [(self.w_h + 55.0, n)]
        out = []
        for w_ring, count in rings:
            start = rng.uniform(0, 2 * np.pi)
            for j in range(count):
                a = start + 2 * np.pi * j / count
                out.append(((self.A0 + 18.0) * math.cos(a), (self.B0 + 18.0) * math.sin(a),
                            w_ring))
        return np.asarray(out)

    def centre_point(self) -> Tuple[float, float, float]:
        return (0.0, 0.0, 10.0)

    def depth_range(self) -> Tuple[float, float]:
        """Slice depths with brain in them: skull base to just below the vertex."""
        return -22.0, self.w_h + self.C0 - 14.0

    def render(self, sl: _Slice) -> np.ndarray:
        u, v, w, e = sl.u, sl.v, sl.w, sl.edge
        T = self.tissue
        img = np.zeros(u.shape, np.float32)
        f = _depth_factor(w, self.w_h, self.C0) if w > self.w_h else 1.0
        if f < 0.08:
            return img
        oblique = min(1.0 / f, 3.0)  # layers cut obliquely (near the vertex) look thicker
        A, B = self.A0 * f, self.B0 * f
        a_u = A * (1.0 + self.taper * v / B)  # narrower in front
        d_head = _ellipse_sd(u, v, 0.0, 0.0, a_u, B) + 1.5 * sl.smooth(self.n_head)
        mot1, mot2, rho_m = sl.texture(4.0)
        fine1, fine2, rho_f = sl.texture(1.6)
        layers = sl.smooth(self.n_layers)

        # Scalp: skin, fat, temporalis muscle low on the sides.
        _paint(img, _ramp(d_head, e), T["skin"] * (1 + 0.05 * rho_m * mot2))
        depth0 = self.skin_t * oblique
        _paint(img, _ramp(d_head + depth0, e), T["fat"] * (1 + 0.05 * rho_m * mot1))
        theta = np.arctan2(np.abs(u) / A, -v / B)  # 0 in front, pi/2 at the sides
        temporal = 7.0 * np.exp(-(((theta - 1.55) / 0.45) ** 2)) * _smoothstep((25.0 - w) / 20.0)
        depth1 = depth0 + self.scalp_t * oblique * (1 + 0.25 * layers)
        muscle = np.clip(temporal / 1.5, 0, 1)
        _paint(img, _ramp(d_head + depth1, e), T["fat"] + muscle * (
            T["muscle"] * (1 + 0.1 * rho_f * fine2) - T["fat"]))
        # Skull: outer table, diploe, inner table.
        depth2 = depth1 + temporal
        _paint(img, _ramp(d_head + depth2, e), T["cortex"])
        depth3 = depth2 + self.table_t * oblique
        _paint(img, _ramp(d_head + depth3, e), T["diploe"] * (1 + 0.15 * rho_f * fine1))
        depth4 = depth3 + self.diploe_t * oblique * np.maximum(1 - 0.4 * layers, 0.3)
        _paint(img, _ramp(d_head + depth4, e), T["cortex"])
        depth5 = depth4 + self.table_t * oblique
        _paint(img, _ramp(d_head + depth5, e), T["csf"] * (1 + 0.3 * rho_m * mot2))

        # Brain: the distance from the nearest CSF surface decides CSF, grey or white matter.
        csf = np.maximum(self.csf_t * oblique * (1 + 0.4 * sl.smooth(self.n_csf)), 0.4)
        db = -(d_head + depth5) - csf  # depth below the brain surface
        A_n, B_n = self.A0, self.B0
        radial = 1.0 - _smoothstep((w - 25.0) / 40.0)  # near the vertex: cut tangentially

        def folds(uc, vc, wc):
            # Sulci run in from the surface: a field constant along rays from the centre,
            # plus an isotropic part that makes them meander.
            # Evaluated at the point's projection on the brain surface, with the depth as a
            # third (slower) coordinate, so that they bend and join at their fundi.
            r = np.maximum(np.sqrt((uc / A_n) ** 2 + (vc / B_n) ** 2), 0.05)
            depth = (1.0 - r) * A_n
            return radial * self.n_sulci(uc / r, vc / r, wc + 0.6 * depth) \
                + (1.25 - radial) * self.n_sulci2(uc, vc, wc)

        sd = sl.zero_distance(folds, clip=15.0)
        s_depth = np.clip(self.sulc_depth + 5.0 * sl.smooth(self.n_depth), 4.0, 24.0) * oblique
        ds = np.sqrt(sd * sd + np.maximum(db - s_depth, 0.0) ** 2) - self.sulc_hw
        tissue = np.minimum(db, ds)
        # Interhemispheric fissure: in front and behind only, at and below the corpus
        # callosum (the midline there is callosum, septum, third ventricle, thalami).
        d_mid = np.abs(u - self.u_mid - 1.5 * sl.smooth(self.n_mid)) - 0.9
        cc = float(_smoothstep((22.0 - w) / 6.0)) * self.cc_len
        if cc > 0:
            d_mid = np.maximum(d_mid, cc - np.abs(v - self.vent_v))
        tissue = np.minimum(tissue, d_mid)
        # Sylvian fissures.
        fs = _depth_factor(w, -8.0, 18.0)
        if fs > 0:
            for sgn in (-1.0, 1.0):
                p0 = (sgn * A * 0.98, -8.0)
                p1 = (sgn * (A * 0.98 - 30.0 * fs), 2.0)
                tissue = np.minimum(tissue, _segment_sd(u, v, p0, p1, 1.2))
        gm_t = self.gm_t * (1 + 0.2 * sl.smooth(self.n_gm))
        _paint(img, _ramp(-tissue, e), T["gm"] * (1 + 0.05 * rho_m * mot2))
        wm = T["wm"] * (1 + 0.04 * sl.smooth(self.n_wm) + 0.03 * rho_m * mot1
                        + 0.02 * rho_f * fine2)
        _paint(img, _ramp(gm_t - tissue, e), wm)

        # Deep grey matter, midbrain, ventricles.
        s = self.sep
        a, b = self.vent_a, self.vent_b
        deep = T["deep"] * (1 + 0.04 * rho_m * mot2)
        for sgn in (-1.0, 1.0):
            ang = sgn * math.radians(10.0)
            for cu, cv, ea, eb, wc, hd, an in (
                    (sgn * (s + 2 * a + 4.0), self.vent_v - 0.45 * b, 5.0, 9.0,
                     self.vent_w - 2.0, 14.0, 0.0),  # caudate head
                    (sgn * 9.0, self.vent_v + 10.0, 8.5, 12.0, -7.0, 12.0, 0.0),  # thalamus
                    (sgn * 24.0, self.vent_v - 2.0, 5.0, 14.0, -8.0, 11.0, ang)):  # putamen
                k = _depth_factor(w, wc, hd)
                if k > 0.05:
                    d = _ellipse_sd(u, v, cu, cv, ea * k ** 0.5, eb * k ** 0.5, an)
                    _paint(img, _ramp(d, e), deep)
        fm = _depth_factor(w, -26.0, 14.0)
        if fm > 0.05:  # midbrain: two peduncles, the tectum, and the cistern around them
            k = fm ** 0.5
            cistern = _ellipse_sd(u, v, 0.0, 12.0, 19.0 * k, 16.0 * k)
            _paint(img, _ramp(cistern, e), T["csf"])
            mb = _smin(_ellipse_sd(u, v, -7.0 * k, 8.0, 8.0 * k, 10.0 * k, 0.5),
                       _ellipse_sd(u, v, 7.0 * k, 8.0, 8.0 * k, 10.0 * k, -0.5), 3.0)
            mb = _smin(mb, _ellipse_sd(u, v, 0.0, 17.0, 11.0 * k, 6.0 * k), 3.0)
            _paint(img, _ramp(mb, e), T["midbrain"] * (1 + 0.04 * rho_m * mot1))
            _paint(img, _ramp(_ellipse_sd(u, v, 0.0, 14.0, 1.2, 1.2), e), T["csf"])
        vents, plexus = [], []
        for sgn in (-1.0, 1.0):
            k = _depth_factor(w, self.vent_w, 15.0)
            if k > 0.05:  # frontal horns and bodies
                vents.append(_ellipse_sd(u, v, sgn * (s + a * k), self.vent_v,
                                         a * k, b * k ** 0.4, -sgn * self.vent_angle))
            k = _depth_factor(w, self.vent_w - 5.0, 11.0)
            if k > 0.05:  # atria and occipital horns, with choroid plexus
                cu, cv = sgn * (9.0 + a), self.vent_v + 0.8 * b
                vents.append(_ellipse_sd(u, v, cu, cv, a * 0.8 * k, 11.0 * k ** 0.5,
                                         sgn * math.radians(35)))
                plexus.append(_ellipse_sd(u, v, cu, cv + 2.0, a * 0.4 * k, 4.0 * k ** 0.5))
            k = _depth_factor(w, -24.0, 10.0)
            if k > 0.05:  # temporal horns
                vents.append(_ellipse_sd(u, v, sgn * 31.0, 6.0, 2.0 * k, 9.0 * k, sgn * 0.35))
        k = _depth_factor(w, -12.0, 10.0)
        if k > 0.05:  # third ventricle
            vents.append(_ellipse_sd(u, v, self.u_mid * 0.5, self.vent_v + 6.0, 1.6 * k,
                                     11.0 * k))
        for d in vents:
            _paint(img, _ramp(d, e), T["csf"])
        for d in plexus:
            _paint(img, _ramp(d, e), T["plexus"] * (1 + 0.2 * rho_f * fine1))
        return img


_MODELS = {"knee": _Knee, "brain": _Brain}


# ---------------------------------------------------------------------------------------------
# One volume


def _fft2c(x: np.ndarray) -> np.ndarray:
    axes = (-2, -1)
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=axes), norm="ortho"), axes=axes)


def _ifft2c(x: np.ndarray) -> np.ndarray:
    axes = (-2, -1)
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(x, axes=axes), norm="ortho"), axes=axes)


def _center_crop(x: np.ndarray, size: int) -> np.ndarray:
    """fastmri's ``center_crop`` on the last two axes."""
    r0 = (x.shape[-2] - size) // 2
    c0 = (x.shape[-1] - size) // 2
    return x[..., r0:r0 + size, c0:c0 + size]


def _header(spec: AnatomySpec, acquisition: str, size: int, rows: int, cols: int,
            num_slices: int, num_coils: int, padding: Tuple[int, int],
            rng: np.random.Generator) -> bytes:
    """ISMRMRD XML header modelled on the real fastMRI ones."""
    field_t = float(rng.choice([1.494, 2.89362]))
    fov = spec.fov_mm
    enc_fov_x = fov * spec.readout_oversampling
    enc_fov_y = fov * cols / size
    seq = {
        "CORPD_FBK": (rng.uniform(2750, 3100), rng.uniform(25, 33), 90.0, "TurboSpinEcho"),
        "CORPDFS_FBK": (rng.uniform(2850, 3500), rng.uniform(30, 40), 90.0, "TurboSpinEcho"),
        "AXT1": (rng.uniform(250, 750), rng.uniform(6, 12), 70.0, "SpinEcho"),
    }[acquisition]
    left, right = padding
    center = cols // 2 - left
    n_acq = right - left
    lim = "<minimum>0</minimum><maximum>0</maximum><center>0</center>"
    hour, minute, second = int(rng.integers(7, 19)), int(rng.integers(60)), int(rng.integers(60))
    study_time = f"{hour:02d}:{minute:02d}:{second:02d}"
    thick = f"{spec.slice_thickness_mm:g}"
    xml = f"""<?xml version="1.0" encoding="utf-8"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"
    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
    xmlns:xs="http://www.w3.org/2001/XMLSchema"
    xsi:schemaLocation="http://www.ismrm.org/ISMRMRD ismrmrd.xsd">
  <studyInformation>
    <studyTime>{study_time}</studyTime>
  </studyInformation>
  <measurementInformation>
    <measurementID>synthetic_{rng.integers(10**8):08d}</measurementID>
    <patientPosition>{"FFS" if spec.name == "knee" else "HFS"}</patientPosition>
    <protocolName>{acquisition} (clgnet-fastmri synthetic)</protocolName>
  </measurementInformation>
  <acquisitionSystemInformation>
    <systemVendor>SIEMENS</systemVendor>
    <systemModel>{"Skyra" if field_t > 2 else "Aera"}</systemModel>
    <systemFieldStrength_T>{field_t}</systemFieldStrength_T>
    <relativeReceiverNoiseBandwidth>0.793</relativeReceiverNoiseBandwidth>
    <receiverChannels>{num_coils}</receiverChannels>
    <institutionName>synthetic</institutionName>
  </acquisitionSystemInformation>
  <experimentalConditions>
    <H1resonanceFrequency_Hz>{int(round(42.577478e6 * field_t))}</H1resonanceFrequency_Hz>
  </experimentalConditions>
  <encoding>
    <encodedSpace>
      <matrixSize><x>{rows}</x><y>{cols}</y><z>1</z></matrixSize>
      <fieldOfView_mm><x>{enc_fov_x:g}</x><y>{enc_fov_y:.4f}</y><z>{thick}</z></fieldOfView_mm>
    </encodedSpace>
    <reconSpace>
      <matrixSize><x>{size}</x><y>{size}</y><z>1</z></matrixSize>
      <fieldOfView_mm><x>{fov:g}</x><y>{fov:g}</y><z>{thick}</z></fieldOfView_mm>
    </reconSpace>
    <trajectory>cartesian</trajectory>
    <encodingLimits>
      <kspace_encoding_step_1>
        <minimum>0</minimum><maximum>{n_acq - 1}</maximum><center>{center}</center>
      </kspace_encoding_step_1>
      <kspace_encoding_step_2>{lim}</kspace_encoding_step_2>
      <average>{lim}</average>
      <slice><minimum>0</minimum><maximum>{num_slices - 1}</maximum><center>0</center></slice>
      <contrast>{lim}</contrast>
      <phase>{lim}</phase>
      <repetition>{lim}</repetition>
      <set>{lim}</set>
      <segment>{lim}</segment>
    </encodingLimits>
    <parallelImaging>
      <accelerationFactor><kspace_encoding_step_1>1</kspace_encoding_step_1><kspace_encoding_step_2>1</kspace_encoding_step_2></accelerationFactor>
      <calibrationMode>other</calibrationMode>
    </parallelImaging>
  </encoding>
  <sequenceParameters>
    <TR>{seq[0]:.1f}</TR>
    <TE>{seq[1]:.2f}</TE>
    <flipAngle_deg>{seq[2]:g}</flipAngle_deg>
    <sequence_type>{seq[3]}</sequence_type>
  </sequenceParameters>
</ismrmrdHeader>
"""
    return xml.encode("utf-8")


@dataclass
class SyntheticVolume:
    """One synthetic volume in memory (see ``make_volume``).

    Attributes:
        kspace: complex64, fully sampled and noisy; ``(slices, rows, cols)`` singlecoil or
            ``(slices, coils, rows, cols)`` multicoil, DC centred (``fastmri.fft2c``).
        target: float32 ``(slices, size, size)``: centre crop of ``|ifft2c(kspace)|`` (RSS
            over coils for multicoil); what the files store as ``reconstruction_esc/_rss``.
        clean_target: the same computed without noise (same k-space column support).
        image: complex64 ``(slices, rows, cols)``: the noise-free coil-combined image on the
            k-space grid (magnetisation x bias x phase; multicoil: x RSS of the maps).
        sens_maps: complex64 ``(slices, coils, rows, cols)`` (multicoil with
            ``return_maps=True``), else None.
        header: the ``ismrmrd_header`` XML bytes.
        attrs: the file attributes ``acquisition``, ``max``, ``norm``, ``patient_id``.
        noise_std: standard deviation of the real (and of the imaginary) part of the noise
            in k-space (and, the FFT being orthonormal, in the image).
        snr: mean noise-free foreground magnitude in the target crop / ``noise_std``.
        padding: ``(left, right)``: the acquired k-space columns; outside them k-space is 0.
    """

    anatomy: str
    challenge: str
    acquisition: str
    kspace: np.ndarray
    target: np.ndarray
    clean_target: Optional[np.ndarray]
    image: Optional[np.ndarray]
    sens_maps: Optional[np.ndarray]
    header: bytes
    attrs: Dict[str, object]
    noise_std: float
    snr: float
    padding: Tuple[int, int]

    @property
    def recons_key(self) -> str:
        return "reconstruction_esc" if self.challenge == "singlecoil" else "reconstruction_rss"


class _Synth:
    """Builds one volume slice by slice (so a dataset never holds a whole volume's k-space).

    Random streams (all derived from ``seed``): anatomy, textures, noise, and ``misc``
    (acquisition, coils, phase, header, mask); each is used in a fixed order.
    """

    def __init__(self, anatomy: str, challenge: str, size: Optional[int], num_slices: int,
                 num_coils: Optional[int], seed: SeedLike, acquisition: Optional[str] = None,
                 snr: Optional[float] = None):
        spec = _spec(anatomy)
        self.spec = spec
        self.anatomy = anatomy
        self.challenge = challenge
        self.size = spec.full_size if size is None else int(size)
        self.num_slices = spec.default_slices if num_slices is None else int(num_slices)
        if challenge == "singlecoil":
            self.num_coils = 1
        else:
            self.num_coils = spec.default_coils if num_coils is None else int(num_coils)
        self.rows, self.cols = kspace_shape(anatomy, self.size)
        coils = () if challenge == "singlecoil" else (self.num_coils,)
        self.kspace_shape = (self.num_slices, *coils, self.rows, self.cols)
        self.padding = acquired_columns(anatomy, self.cols)
        ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
        r_anat, r_tex, r_noise, r_misc = (np.random.default_rng(s) for s in ss.spawn(4))
        self.rng_noise, self.rng_misc = r_noise, r_misc
        if acquisition is None:
            acquisition = str(r_misc.choice(spec.acquisitions))
        self.acquisition = acquisition
        self.target_snr = float(r_misc.uniform(*_SNR_RANGE[acquisition])) if snr is None \
            else float(snr)
        self.amplitude = _SIGNAL_SCALE * float(np.exp(r_misc.uniform(-0.4, 0.4)))
        self.patient_id = r_misc.bytes(16).hex()
        model = _MODELS[anatomy](r_anat, acquisition)
        self.model = model
        pixel = spec.fov_mm / self.size
        # Coarse grids never finer than the pixels (tiny test-sized sets stay fast).
        self.frame = _Frame(self.rows, self.cols, pixel, model.scale, model.angle, model.shift,
                            max(model.texture_spacing, pixel), max(model.map_spacing, pixel))
        self.depths = _slice_depths(model, self.num_slices)
        self.coils = model.coil_centres(max(self.num_coils, 8), r_misc)
        if self.num_coils < 8:  # keep the geometry of a full array, use a subset
            self.coils = self.coils[r_misc.permutation(len(self.coils))[: self.num_coils]]
        self.coil_phase = r_misc.uniform(0, 2 * np.pi, len(self.coils))
        g = r_misc.standard_normal((len(self.coils), 3))
        self.coil_grad = g / np.linalg.norm(g, axis=1, keepdims=True)
        self.sens_norm = 1.0
        cu, cv, cw = model.centre_point()  # RSS of the sensitivities is 1 there
        self.sens_norm = float(np.sqrt((np.abs(self._sens(
            np.array([[cu]]), np.array([[cv]]), cw)) ** 2).sum()))
        self.phase_lin = r_misc.uniform(-1.0, 1.0, 3)
        self.phase_field = _Waves(r_misc, 150.0, n=12)
        self.header = _header(spec, acquisition, self.size, self.rows, self.cols,
                              self.num_slices, self.num_coils, self.padding, r_misc)
        # Pass 1: the noise-free magnetisation of every slice (float32; modest) and the
        # noise level that gives the drawn SNR.
        self.magnetisation = np.stack([
            model.render(_Slice(self.frame, w, r_tex)) for w in self.depths])
        fg = np.stack([_center_crop(self.magnetisation[k] * np.abs(
            self.frame.maps.up(self._fields(k)[1])), self.size) for k in range(self.num_slices)])
        peak = np.percentile(fg, 99.5)
        sel = fg > 0.1 * peak if peak > 0 else np.ones(fg.shape, bool)
        self.noise_std = float(self.amplitude * fg[sel].mean() / self.target_snr) if peak > 0 \
            else float(self.amplitude * 0.02)

    # -- coil sensitivities and phase (coarse grids, upsampled) -------------------------------
    def _sens(self, u, v, w: float) -> np.ndarray:
        """Complex sensitivities ``(coils, ...)`` of the loop coils at points ``(u, v, w)``."""
        rho = self.model.loop_radius
        c, g = self.coils, self.coil_grad
        du = u[None] - c[:, 0, None, None]
        dv = v[None] - c[:, 1, None, None]
        dw = w - c[:, 2, None, None]
        mag = (rho * rho / (rho * rho + du * du + dv * dv + dw * dw)) ** 1.5
        ph = self.coil_phase[:, None, None] + 1.1 * (
            du * g[:, 0, None, None] + dv * g[:, 1, None, None] + dw * g[:, 2, None, None]) / rho
        return mag / self.sens_norm * np.exp(1j * ph)

    def _fields(self, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """Coarse complex fields of slice ``k``: ``(maps, combined)``.

        ``maps`` (coils, ny, nx): the coil sensitivities times the object phase;
        ``combined`` (ny, nx): their root-sum-of-squares times the object phase (singlecoil:
        the square root of the RSS, a milder bias, as the emulated single coil shows).
        """
        uc, vc = self.frame.maps_uv
        w = self.depths[k]
        lin = self.phase_lin
        phase = np.exp(1j * (lin[0] * uc / 60.0 + lin[1] * vc / 60.0
                             + lin[2] * (uc * uc + vc * vc) / 8000.0
                             + 0.6 * self.phase_field(uc, vc, w)))
        sens = self._sens(uc, vc, w)
        rss = np.sqrt((np.abs(sens) ** 2).sum(axis=0))
        if self.challenge == "singlecoil":
            rss = np.sqrt(rss)
        return (sens * phase).astype(np.complex64), (rss * phase).astype(np.complex64)

    def coil_images(self, k: int, combined: bool = False):
        """Noise-free complex images of slice ``k``: ``(images, maps, combined)``.

        Singlecoil: ``images`` is the one image (and ``combined``), ``maps`` is None.
        Multicoil: ``images`` and ``maps`` are ``(coils, rows, cols)``; ``combined`` (only
        when asked for) is the magnetisation x RSS of the maps x object phase.
        """
        maps_c, comb_c = self._fields(k)
        m = self.magnetisation[k] * self.amplitude
        if self.challenge == "singlecoil":
            img = m * self.frame.maps.up(comb_c)
            return img, None, img
        maps = self.frame.maps.up(maps_c)
        comb = m * self.frame.maps.up(comb_c) if combined else None
        return m[None] * maps, maps, comb

    def slices(self, clean: bool = False) -> Iterator[Dict[str, np.ndarray]]:
        """Per slice: ``kspace`` (noisy, zero outside the acquired columns), ``target`` and,
        with ``clean``, ``clean_target``, ``image`` (combined) and ``maps``."""
        left, right = self.padding
        sigma = self.noise_std
        for k in range(self.num_slices):
            img, maps, comb = self.coil_images(k, combined=clean)
            ks = _fft2c(img.astype(np.complex64))
            noise = self.rng_noise.standard_normal((2,) + ks.shape, dtype=np.float32)
            ks_noisy = ks + sigma * (noise[0] + 1j * noise[1])
            ks_noisy[..., :left] = 0
            ks_noisy[..., right:] = 0
            ks_noisy = ks_noisy.astype(np.complex64)
            out = {"kspace": ks_noisy, "target": self._target(ks_noisy)}
            if clean:
                ks[..., :left] = 0
                ks[..., right:] = 0
                out["clean_target"] = self._target(ks)
                out["image"] = comb.astype(np.complex64)
                if maps is not None:
                    out["maps"] = maps.astype(np.complex64)
            yield out

    def _target(self, ks: np.ndarray) -> np.ndarray:
        mag = np.abs(_ifft2c(ks))
        if mag.ndim == 3:
            mag = np.sqrt((mag * mag).sum(axis=0))
        return np.ascontiguousarray(_center_crop(mag, self.size), dtype=np.float32)


def _slice_depths(model, num_slices: int) -> List[float]:
    """Anatomical depths of the slices: like a real volume, they span the whole object
    (knee: front to back; brain: basal ganglia to vertex), so ``num_slices`` sets the
    spacing (35 knee slices: about 3 mm, as in fastMRI)."""
    lo, hi = model.depth_range()
    if num_slices == 1:
        return [min(max(model.w_centre, lo), hi)]
    return [float(w) for w in np.linspace(lo, hi, num_slices)]


def _check_volume_args(anatomy, challenge, size, num_slices, num_coils,
                       acquisition: Optional[str] = None, snr: Optional[float] = None) -> None:
    spec = _spec(anatomy)
    if acquisition is not None and acquisition not in spec.acquisitions:
        raise UserError(f"acquisition {acquisition!r} is not a {anatomy} acquisition "
                        f"({', '.join(spec.acquisitions)})")
    if snr is not None and not (isinstance(snr, (int, float)) and 0 < snr < 1e6):
        raise UserError(f"snr must be a positive number, not {snr!r}")
    if challenge not in CHALLENGES:
        raise UserError(f"unknown challenge {challenge!r}; choose singlecoil or multicoil")
    if size is not None:
        size = _check_int("size", size, MIN_SIZE, MAX_SIZE)
        if size % 2:
            raise UserError(f"size must be even (fastmri crops and FFTs need even sizes), "
                            f"not {size}")
    if num_slices is not None:
        _check_int("number of slices", num_slices, 1, MAX_SLICES)
    if num_coils is not None:
        if challenge == "singlecoil" and num_coils != 1:
            raise UserError("the number of coils applies to --challenge multicoil only")
        _check_int("number of coils", num_coils, 1, MAX_COILS)


def _check_int(name: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise UserError(f"{name} must be a whole number, not {value!r}")
    if not low <= value <= high:
        raise UserError(f"{name} must be between {low} and {high}, not {value}")
    return int(value)


def make_volume(anatomy: str = "knee", *, challenge: str = "singlecoil",
                size: Optional[int] = None, num_slices: Optional[int] = None,
                num_coils: Optional[int] = None, seed: SeedLike = 0,
                acquisition: Optional[str] = None, snr: Optional[float] = None,
                return_maps: bool = False) -> SyntheticVolume:
    """Build one synthetic volume in memory (no files).

    Args:
        anatomy: "knee" (coronal PD / PD-FS, fastMRI knee geometry) or "brain" (axial T1,
            CC-359 geometry).
        challenge: "singlecoil" or "multicoil".
        size: target side in pixels (even, 16..1024); default full size (knee 320, brain
            256). The k-space grid scales with it (see ``kspace_shape``).
        num_slices: slices of the volume, spread over the whole object like a real volume;
            default as in real data (knee 35, brain 16).
        num_coils: multicoil only; default 15 (knee) or 12 (brain).
        seed: an int, a sequence of ints or a ``numpy.random.SeedSequence``;
            ``volume_seed(seed, split, index)`` reproduces a volume of ``make_dataset``.
        acquisition: force the contrast ("CORPD_FBK", "CORPDFS_FBK", "AXT1"); default drawn.
        snr: force the SNR (see the module docstring); default drawn from the realistic range.
        return_maps: keep the multicoil sensitivity maps (memory: slices x coils x k-space).

    Returns:
        A ``SyntheticVolume``; ``kspace``, ``target``, ``header`` and ``attrs`` are exactly
        what ``make_dataset`` writes for a training file.
    """
    _check_volume_args(anatomy, challenge, size, num_slices, num_coils, acquisition, snr)
    synth = _Synth(anatomy, challenge, size, num_slices, num_coils, seed, acquisition, snr)
    parts: Dict[str, List[np.ndarray]] = {}
    for sl in synth.slices(clean=True):
        for key, value in sl.items():
            if key == "maps" and not return_maps:
                continue
            parts.setdefault(key, []).append(value)
    stacked = {k: np.stack(v) for k, v in parts.items()}
    target = stacked["target"]
    return SyntheticVolume(
        anatomy=anatomy, challenge=challenge, acquisition=synth.acquisition,
        kspace=stacked["kspace"], target=target, clean_target=stacked["clean_target"],
        image=stacked["image"], sens_maps=stacked.get("maps"), header=synth.header,
        attrs=_target_attrs(synth, target), noise_std=synth.noise_std,
        snr=synth.target_snr, padding=synth.padding)


def _target_attrs(synth: _Synth, target: np.ndarray) -> Dict[str, object]:
    return {"acquisition": synth.acquisition, "max": float(target.max()),
            "norm": float(np.linalg.norm(target.astype(np.float64))),
            "patient_id": synth.patient_id}


# ---------------------------------------------------------------------------------------------
# Datasets on disk


@dataclass
class DatasetSummary:
    """What ``make_dataset`` wrote."""

    root: Path
    anatomy: str
    challenge: str
    seed: int
    folders: Dict[str, Path]  # "train", "val", "test", "test_gt" -> folder (those written)
    files: Dict[str, List[Path]]  # the same keys -> the .h5 files
    num_slices: int
    kspace_shape: Tuple[int, ...]  # one volume's k-space
    target_shape: Tuple[int, ...]  # one volume's target
    accelerations: Tuple[int, ...]
    bytes_written: int
    seconds: float
    acquisitions: Dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"wrote a synthetic {self.anatomy} {self.challenge} dataset to {self.root} "
                 f"(seed {self.seed}, {self.seconds:.1f} s, {self.bytes_written / 1e6:.1f} MB)"]
        for key, folder in self.folders.items():
            n = len(self.files[key])
            note = ""
            if key == "test":
                accs = "/".join(f"{a}x" for a in self.accelerations)
                note = f", k-space masked ({accs}), no targets"
            elif key == "test_gt":
                note = f", fully-sampled targets for scoring {self.challenge}_test"
            lines.append(f"  {folder.name + '/':<22} {n:4d} volume{'s' if n != 1 else ' '} x "
                         f"{self.num_slices} slices{note}")
        lines.append(f"  k-space {self.kspace_shape} complex64 per volume, target "
                     f"{self.target_shape} float32; acquisitions: "
                     + ", ".join(f"{k} {v}" for k, v in sorted(self.acquisitions.items())))
        return "\n".join(lines)


_STAGING_PREFIX = ".make-data-"


def _check_splits(splits: Optional[Mapping[str, int]]) -> Dict[str, int]:
    if splits is None:
        splits = DEFAULT_SPLITS
    if not isinstance(splits, Mapping):
        raise UserError("splits must map split names (train, val, test) to volume counts")
    out = {}
    for name, count in splits.items():
        if name not in SPLITS:
            raise UserError(f"unknown split {name!r}; choose from {', '.join(SPLITS)}")
        out[name] = _check_int(f"number of {name} volumes", count, 0, MAX_VOLUMES)
    if sum(out.values()) == 0:
        raise UserError("nothing to write: ask for at least one train, val or test volume")
    return {name: out[name] for name in SPLITS if out.get(name)}


def _check_accelerations(accelerations, cols: int) -> Tuple[int, ...]:
    try:
        accs = tuple(accelerations)
    except TypeError:
        raise UserError(f"accelerations must be a list of whole numbers, not {accelerations!r}")
    if not accs:
        raise UserError("give at least one acceleration (e.g. 4 8)")
    for a in accs:
        _check_int("acceleration", a, 2, MAX_ACCELERATION)
        num_low = round(cols * center_fraction(a))
        if num_low < 1 or cols / a < num_low:
            raise UserError(f"acceleration {a} is too high for {cols} k-space columns; use a "
                            "larger --size or a lower acceleration")
    return tuple(int(a) for a in accs)


def make_dataset(out_dir: Union[str, os.PathLike], anatomy: str = "knee",
                 challenge: str = "singlecoil", splits: Optional[Mapping[str, int]] = None,
                 num_slices: Optional[int] = None, size: Optional[int] = None,
                 num_coils: Optional[int] = None,
                 accelerations: Sequence[int] = DEFAULT_ACCELERATIONS, seed: int = 0,
                 overwrite: bool = False, progress: bool = True) -> DatasetSummary:
    """Write a synthetic dataset in the fastMRI layout under ``out_dir`` (see the module doc).

    Args:
        out_dir: the dataset root (``data_path`` of ``FastMriDataModule``); created if needed.
        anatomy, challenge, num_slices, size, num_coils: as in ``make_volume``.
        splits: volumes per split, e.g. ``{"train": 8, "val": 2, "test": 2}`` (the default);
            a split with 0 volumes (or left out) is not written. ``test`` also writes
            ``{challenge}_test_gt``.
        accelerations: the test masks' accelerations, one drawn per volume.
        seed: a non-negative int; volume ``i`` of split ``s`` uses ``volume_seed(seed, s, i)``.
        overwrite: allow a non-empty ``out_dir``; the split folders written are replaced,
            nothing else there is touched.
        progress: show a tqdm progress bar over volumes (on stderr).

    All arguments are checked before anything is written (``UserError`` on bad input). The
    run is staged in a hidden folder inside ``out_dir`` and the split folders are moved into
    place only at the end, so an error or Ctrl-C leaves nothing half-written.
    """
    _check_volume_args(anatomy, challenge, size, num_slices, num_coils)
    counts = _check_splits(splits)
    seed = _check_int("seed", seed, 0, 2**63 - 1)
    spec = _spec(anatomy)
    size = spec.full_size if size is None else int(size)
    num_slices = spec.default_slices if num_slices is None else int(num_slices)
    rows, cols = kspace_shape(anatomy, size)
    accs = _check_accelerations(accelerations, cols)
    coils = () if challenge == "singlecoil" else (num_coils or spec.default_coils,)
    kshape = (num_slices, *coils, rows, cols)
    tshape = (num_slices, size, size)
    # Per volume: k-space and target (a test volume: masked k-space and its _test_gt target).
    needed = sum(counts.values()) * (int(np.prod(kshape)) * 8 + int(np.prod(tshape)) * 4 + 20_000)

    out = Path(out_dir)
    names = {s: f"{challenge}_{s}" for s in counts}
    if "test" in counts:
        names["test_gt"] = f"{challenge}_test_gt"
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder; choose another output path")
    if out.is_dir():
        present = [p for p in out.iterdir() if not p.name.startswith(_STAGING_PREFIX)]
        if present and not overwrite:
            raise UserError(f"{out}: the folder is not empty; pass --overwrite to replace its "
                            f"{', '.join(names.values())} folders (nothing else is touched)")
        for name in names.values():
            p = out / name
            if p.is_symlink() or (p.exists() and not p.is_dir()):
                raise UserError(f"{p}: exists and is not a folder; move it away first")
    created = not out.exists()
    out = ensure_writable_dir(out)
    started = time.perf_counter()
    staging = None
    try:
        free = shutil.disk_usage(out).free
        if needed > free:
            raise UserError(f"{out}: this dataset needs about {needed / 1e9:.2f} GB but only "
                            f"{free / 1e9:.2f} GB are free; use fewer or smaller volumes")
        try:
            staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, suffix=".partial", dir=out))
        except OSError as exc:
            raise UserError(f"{out}: cannot write there ({exc.strerror})") from None
        files, acq_counts = _write_splits(staging, names, counts, anatomy, challenge, size,
                                          num_slices, num_coils, accs, seed, progress)
        _swap_into_place(staging, out, list(names.values()))
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if created:
            try:
                out.rmdir()  # only if still empty
            except OSError:
                pass
        raise
    shutil.rmtree(staging, ignore_errors=True)
    folders = {key: out / name for key, name in names.items()}
    files = {key: [folders[key] / p.name for p in paths] for key, paths in files.items()}
    written = sum(p.stat().st_size for paths in files.values() for p in paths)
    return DatasetSummary(root=out, anatomy=anatomy, challenge=challenge, seed=seed,
                          folders=folders, files=files, num_slices=num_slices,
                          kspace_shape=kshape, target_shape=tshape, accelerations=accs,
                          bytes_written=written, seconds=time.perf_counter() - started,
                          acquisitions=acq_counts)


def _write_splits(staging: Path, names: Dict[str, str], counts: Dict[str, int], anatomy: str,
                  challenge: str, size: int, num_slices: int, num_coils: Optional[int],
                  accs: Tuple[int, ...], seed: int, progress: bool):
    for name in names.values():
        (staging / name).mkdir()
    files: Dict[str, List[Path]] = {key: [] for key in names}
    acq_counts: Dict[str, int] = {}
    key = "reconstruction_esc" if challenge == "singlecoil" else "reconstruction_rss"
    total = sum(counts.values())
    with tqdm(total=total, disable=not progress, unit="vol", desc="make-data",
              dynamic_ncols=True) as bar:
        for split, count in counts.items():
            for i in range(count):
                bar.set_postfix_str(split)
                synth = _Synth(anatomy, challenge, size, num_slices, num_coils,
                               volume_seed(seed, split, i))
                acq_counts[synth.acquisition] = acq_counts.get(synth.acquisition, 0) + 1
                fname = f"file_{anatomy}_{split}_{i:04d}.h5"
                path = staging / names[split] / fname
                if split == "test":
                    gt_path = staging / names["test_gt"] / fname
                    _write_test(synth, path, gt_path, key, accs)
                    files["test_gt"].append(gt_path)
                else:
                    _write_volume(synth, path, key)
                files[split].append(path)
                bar.update(1)
    return files, acq_counts


def _write_volume(synth: _Synth, path: Path, key: str, mask: Optional[np.ndarray] = None,
                  test_attrs: Optional[Dict[str, int]] = None) -> np.ndarray:
    """Write one volume's file, slice by slice; return its target.

    Without ``mask``: a training/validation file (k-space, target, ``max``, ``norm``). With
    ``mask``: a test file (masked k-space, ``mask``, ``test_attrs``, no target).
    """
    with atomic_output(path) as tmp, h5py.File(tmp, "w") as hf:
        hf.create_dataset("ismrmrd_header", data=synth.header)
        kspace = hf.create_dataset("kspace", shape=synth.kspace_shape, dtype=np.complex64)
        targets = []
        for k, sl in enumerate(synth.slices()):
            kspace[k] = sl["kspace"] if mask is None else sl["kspace"] * mask
            targets.append(sl["target"])
        target = np.stack(targets)
        attrs = _target_attrs(synth, target)
        if mask is None:
            hf.create_dataset(key, data=target)
        else:
            hf.create_dataset("mask", data=mask)
            attrs = {k: v for k, v in attrs.items() if k not in ("max", "norm")}
            attrs.update(test_attrs or {})
        hf.attrs.update(attrs)
    return target


def _write_test(synth: _Synth, path: Path, gt_path: Path, key: str,
                accs: Tuple[int, ...]) -> None:
    """A test file (masked like the challenge set) and its ``_test_gt`` twin."""
    rng = synth.rng_misc
    acc = int(accs[int(rng.integers(len(accs)))])
    mask, num_low = sample_mask(synth.cols, acc, int(rng.integers(2**32 - 1)))
    test_attrs = {"acceleration": acc, "num_low_frequency": num_low}
    target = _write_volume(synth, path, key, mask, test_attrs)
    with atomic_output(gt_path) as tmp, h5py.File(tmp, "w") as gt:
        gt.create_dataset(key, data=target)
        gt.attrs.update({**_target_attrs(synth, target), **test_attrs})


def _swap_into_place(staging: Path, out: Path, names: List[str]) -> None:
    """Move the staged split folders into ``out``, replacing (only) those folders."""
    aside = staging / ".replaced"
    aside.mkdir()
    moved, placed = [], []
    try:
        for name in names:
            if (out / name).exists():
                os.rename(out / name, aside / name)
                moved.append(name)
        for name in names:
            os.rename(staging / name, out / name)
            placed.append(name)
    except BaseException:
        for name in placed:  # undo, best effort: the user's old folders come back
            try:
                os.rename(out / name, staging / name)
            except OSError:
                pass
        for name in moved:
            try:
                os.rename(aside / name, out / name)
            except OSError:
                pass
        raise


# ---------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # "%(default).0s" prints nothing; it keeps the CLI's ArgumentDefaultsHelpFormatter from
    # adding "(default: None)" where the help says what the default is.
    none = "%(default).0s"
    parser.add_argument("out", metavar="OUT", type=Path,
                        help="dataset root to write (the data_path of FastMriDataModule)")
    parser.add_argument("--anatomy", choices=ANATOMIES, default="knee",
                        help="knee: coronal PD/PD-FS, 640x368 k-space, 320x320 targets; "
                             "brain: axial T1 (CC-359 style), 256x256")
    parser.add_argument("--challenge", choices=CHALLENGES, default="singlecoil",
                        help="singlecoil: reconstruction_esc targets; multicoil: coil k-space "
                             "and reconstruction_rss targets")
    parser.add_argument("--train-volumes", type=int, default=DEFAULT_SPLITS["train"],
                        metavar="N", help="training volumes")
    parser.add_argument("--val-volumes", type=int, default=DEFAULT_SPLITS["val"], metavar="N",
                        help="validation volumes")
    parser.add_argument("--test-volumes", type=int, default=DEFAULT_SPLITS["test"],
                        metavar="N", help="test volumes (masked k-space; their targets go to "
                                          "{challenge}_test_gt)")
    parser.add_argument("--slices", type=int, default=None, metavar="N",
                        help="slices per volume, spread over the whole knee or brain "
                             "(default as in real data: knee 35, brain 16)" + none)
    parser.add_argument("--size", type=int, default=None, metavar="N",
                        help="target side in pixels, even; k-space scales with it "
                             "(default: full size, knee 320, brain 256)" + none)
    parser.add_argument("--coils", type=int, default=None, metavar="N",
                        help="coils, for --challenge multicoil (default: knee 15, brain 12)"
                             + none)
    parser.add_argument("--accelerations", type=int, nargs="+",
                        default=list(DEFAULT_ACCELERATIONS), metavar="A",
                        help="test-set accelerations, one drawn per volume (RandomMaskFunc, "
                             "centre fraction 0.32/A)")
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed; volume i of a split is the same whatever the "
                             "number of volumes")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty OUT, replacing only the split folders "
                             "this run writes")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")


def run(args: argparse.Namespace) -> int:
    summary = make_dataset(
        args.out, anatomy=args.anatomy, challenge=args.challenge,
        splits={"train": args.train_volumes, "val": args.val_volumes,
                "test": args.test_volumes},
        num_slices=args.slices, size=args.size, num_coils=args.coils,
        accelerations=args.accelerations, seed=args.seed, overwrite=args.overwrite,
        progress=not args.quiet)
    if not args.quiet:
        print(summary)
    return 0
