"""Toolkit of the synthetic anatomy models: acquisition geometry, soft shapes and textures.

An anatomy model (``knee_phantom``, ``brain_phantom``) is a set of 3-D signed-distance shapes
in millimetres, cut at one depth per slice and painted tissue by tissue into a real
magnetisation image. Edges are box-filtered over one pixel (partial volume) and fine textures
are band-limited noise defined in millimetres, so a smaller image is the same object at a
lower resolution. Smooth fields are evaluated on a coarse grid and upsampled bilinearly.

A model is built as ``Model(rng, acquisition)`` and has a pose (``scale``, ``angle``,
``shift``), grid spacings (``texture_spacing``, ``map_spacing``), ``loop_radius`` of its coils,
``middle_depth`` (the slice of a one-slice volume), and ``coil_centres(n, rng)``,
``centre_point()``, ``depth_range()`` and ``render(Slice) -> magnetisation``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Mapping, NamedTuple, Tuple

import numpy as np


@dataclass(frozen=True)
class AnatomySpec:
    """The acquisition geometry of one anatomy (full-size values; ``size`` scales pixels)."""

    full_size: int  # target side in pixels
    fov_mm: float  # field of view of the (square) target
    readout_oversampling: int  # k-space rows = size * this
    pe_ratio: float  # k-space columns ~= size * this (rounded to even)
    pe_padding: float  # fraction of columns left unacquired (zero) at each k-space edge
    default_slices: int
    acquisitions: Tuple[str, ...]
    default_coils: int


SPECS = {
    # fastMRI knee: 640 x 368 k-space, 320 x 320 targets, 140 mm, 35 slices, 15 coils.
    "knee": AnatomySpec(320, 140.0, 2, 368 / 320, 17 / 368, 35, ("CORPD_FBK", "CORPDFS_FBK"),
                        15),
    # CC-359 style brain: 256 x 256, 1 mm pixels, 16 slices, 12-channel head coil.
    "brain": AnatomySpec(256, 256.0, 1, 1.0, 0.0, 16, ("AXT1",), 12),
}


# ---------------------------------------------------------------------------------------------
# Soft (partial-volume) shapes: signed distances ``d`` (negative inside) and their occupancy


def smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def ramp(d, edge: float):
    """Occupancy of the region ``d < 0``: a box-filtered edge ``edge`` wide."""
    return np.clip(0.5 - d / edge, 0.0, 1.0)


def band(d, width: float, edge: float):
    """Box-filtered occupancy of the band ``|d| < width / 2`` (exact for thin lines too)."""
    a = np.abs(d)
    hi = np.minimum(a + 0.5 * edge, 0.5 * width)
    lo = np.maximum(a - 0.5 * edge, -0.5 * width)
    return np.clip(hi - lo, 0.0, None) / edge


def paint(img: np.ndarray, occupancy, value) -> None:
    """Lay a tissue over ``img`` (in place) where ``occupancy`` (0..1) says it is."""
    img += occupancy * (value - img)


def ellipse_sd(u, v, cu, cv, a, b, angle: float = 0.0):
    """Approximate signed distance to an ellipse (first order, accurate near the edge)."""
    x = u - cu
    y = v - cv
    if angle:
        c, s = math.cos(angle), math.sin(angle)
        x, y = c * x + s * y, c * y - s * x
    xa, yb = x / a, y / b
    k = np.sqrt(xa * xa + yb * yb)
    g = np.sqrt((xa / a) ** 2 + (yb / b) ** 2)
    return (k - 1.0) * np.where(g > 1e-6, k / np.maximum(g, 1e-6), np.minimum(a, b))


def segment_sd(u, v, p0, p1, radius: float):
    """Signed distance to a capsule: segment ``p0``-``p1`` thickened by ``radius``."""
    bu, bv = p1[0] - p0[0], p1[1] - p0[1]
    pu, pv = u - p0[0], v - p0[1]
    h = np.clip((pu * bu + pv * bv) / (bu * bu + bv * bv), 0.0, 1.0)
    return np.hypot(pu - bu * h, pv - bv * h) - radius


def smooth_union(a, b, k: float):
    """Union of two signed distances, blended over ``k`` mm."""
    h = np.clip(k - np.abs(a - b), 0.0, None) / k
    return np.minimum(a, b) - h * h * k * 0.25


def smooth_intersection(a, b, k: float):
    return -smooth_union(-a, -b, k)


def trumpet(x, length: float):
    """1 for ``x <= 0``, then a concave (metaphysis-like) decay over ``length``."""
    x = np.maximum(x, 0.0) / length
    return np.exp(-x * x / (1.0 + x))


def box_profile(x):
    """Half-width of a rounded box (superellipse, power 4) at relative position ``x``."""
    x2 = x * x
    return np.sqrt(np.sqrt(np.clip(1.0 - x2 * x2, 0.0, 1.0)))


def depth_factor(w: float, centre: float, half_depth: float) -> float:
    """Relative width of an ellipsoid-like body cut at depth ``w`` (0 where it is absent)."""
    q = 1.0 - ((w - centre) / half_depth) ** 2
    return math.sqrt(q) if q > 0 else 0.0


def jitter(rng: np.random.Generator, values: Mapping[str, float], spread: float = 0.07):
    """Per-volume tissue values: each multiplied by a log-normal factor."""
    return {k: v * float(np.exp(rng.normal(0.0, spread))) for k, v in values.items()}


# ---------------------------------------------------------------------------------------------
# Textures


class Waves:
    """A smooth 3-D random field of unit variance: a sum of ``n`` random plane waves.

    ``stretch`` > 1 elongates structures along an axis.
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


class Texture(NamedTuple):
    """Two independent band-pass textures of unit variance on the pixel grid, and ``rho``
    (0..1), the fraction of the texture's contrast at infinite resolution that the grid
    resolves: ``rho * a`` is the partial-volume texture."""

    a: np.ndarray
    b: np.ndarray
    rho: float


@functools.lru_cache(maxsize=32)
def _ring_filter(rows: int, cols: int, pixel: float, wavelength: float, aspect: float,
                 angle: float):
    """Spectrum of ``bandpass`` and its ``rho`` (cached: every slice uses the same ones)."""
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


def bandpass(rng: np.random.Generator, shape: Tuple[int, int], pixel: float,
             wavelength: float, aspect: float = 1.0, angle: float = 0.0) -> Texture:
    """Gaussian textures of ``wavelength`` mm (a ring in k-space), ``aspect`` > 1 elongating
    them along ``angle``."""
    g, rho = _ring_filter(shape[0], shape[1], float(pixel), float(wavelength), float(aspect),
                          float(angle))
    noise = rng.standard_normal((2,) + tuple(shape), dtype=np.float32)
    f = np.fft.ifft2((noise[0] + 1j * noise[1]) * g, norm="ortho")
    return Texture(f.real.astype(np.float32), f.imag.astype(np.float32), rho)


def lines(f: np.ndarray, rho: float, width: float = 0.45):
    """A network of thin soft lines (0..1) along the zero set of a unit texture ``f``,
    blended towards its mean where the grid cannot resolve the texture (``rho`` < 1)."""
    t = np.clip(1.0 - np.abs(f) / width, 0.0, 1.0)
    mean = 0.5 * width * math.sqrt(2 / math.pi) * (1 - width / 6)  # E[t] for a unit Gaussian
    return rho * t + (1.0 - rho) * mean


# ---------------------------------------------------------------------------------------------
# Grids


def _lerp_index(fine: np.ndarray, coarse: np.ndarray):
    """Indices and weights that interpolate linearly from ``coarse`` positions to ``fine``."""
    i = np.clip(np.searchsorted(coarse, fine) - 1, 0, len(coarse) - 2)
    t = ((fine - coarse[i]) / (coarse[i + 1] - coarse[i])).astype(np.float32)
    return i, np.clip(t, 0.0, 1.0)


class Coarse:
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


class Frame:
    """Pixel and coarse grids of one volume in the anatomy's coordinates (mm).

    Image coordinates ``x`` (columns) and ``y`` (rows) are in mm from pixel
    ``(rows // 2, cols // 2)``; the anatomy's ``(u, v)`` are ``(x, y)`` shifted, rotated by
    ``angle`` and divided by ``scale``.
    """

    def __init__(self, rows: int, cols: int, pixel: float, scale: float, angle: float,
                 shift: Tuple[float, float], texture_spacing: float, map_spacing: float):
        self.shape = (rows, cols)
        self.pixel = pixel
        self.scale = scale
        self.edge = pixel / scale  # one pixel in anatomical mm
        self._cos, self._sin, self._shift = math.cos(angle), math.sin(angle), shift
        self.rotation = math.atan2(self._sin, self._cos)
        x = ((np.arange(cols) - cols // 2) * pixel).astype(np.float32)
        y = ((np.arange(rows) - rows // 2) * pixel).astype(np.float32)
        self.u, self.v = self._to_anatomy(x[None, :], y[:, None])
        self.tex = Coarse(x, y, texture_spacing)
        self.tex_uv = self._to_anatomy(self.tex.x[None, :], self.tex.y[:, None])
        self.maps = Coarse(x, y, map_spacing)
        self.maps_uv = self._to_anatomy(self.maps.x[None, :], self.maps.y[:, None])

    def _to_anatomy(self, x, y):
        c, s, (tx, ty), scale = self._cos, self._sin, self._shift, self.scale
        xs, ys = x - tx, y - ty
        u = (c * xs + s * ys) / scale
        v = (c * ys - s * xs) / scale
        return u.astype(np.float32), v.astype(np.float32)


@dataclass
class Slice:
    """What a model's ``render`` gets for one slice: the grids, the depth ``w`` (mm) and the
    slice's texture stream."""

    frame: Frame
    w: float
    rng: np.random.Generator

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

    def texture(self, wavelength: float, aspect: float = 1.0, angle: float = 0.0) -> Texture:
        """Fine band-pass textures (see ``bandpass``), turned and scaled with the anatomy."""
        frame = self.frame
        return bandpass(self.rng, frame.shape, frame.pixel, wavelength * frame.scale, aspect,
                        angle + frame.rotation)
