"""3-D anatomy models of the synthetic knee and brain (used by ``synthetic.py``).

Each model (``MODELS[anatomy](rng, acquisition)``) is a set of 3-D signed-distance shapes with
per-volume random proportions and contrasts; ``model.render(Slice(frame, depth, rng))`` cuts
it at one depth and paints the tissues, with partial-volume edges and textures, into a real
magnetisation image on the pixel grid of ``Frame``. ``synthetic.py`` adds the physics (coils,
phase, k-space, noise) and writes the files.

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
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Mapping, Tuple

import numpy as np

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


class Waves:
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


class Frame:
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
class Slice:
    """What a renderer needs for one slice: pixel coordinates, depth and texture sources."""

    frame: Frame
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
        self.n_leg = Waves(rng, 45.0)
        self.n_fat = Waves(rng, 50.0)
        self.n_muscle = Waves(rng, 35.0, stretch=(1.0, 2.0, 1.0))
        self.n_septa = Waves(rng, 20.0, stretch=(1.0, 2.5, 1.0))
        self.n_fatsep = Waves(rng, 12.0)
        self.n_gate = Waves(rng, 25.0)
        self.n_vessel = Waves(rng, 16.0, stretch=(1.0, 1.5, 1.0))
        self.n_tissue = Waves(rng, 30.0)
        self.n_marrow = Waves(rng, 16.0)

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
    def render(self, sl: Slice) -> np.ndarray:
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
        self.n_head = Waves(rng, 50.0)
        self.n_layers = Waves(rng, 35.0)
        self.n_csf = Waves(rng, 40.0)
        self.n_sulci = Waves(rng, U(14.0, 18.0), n=40)
        self.n_sulci2 = Waves(rng, 18.0, n=32)
        self.n_depth = Waves(rng, 30.0)
        self.n_mid = Waves(rng, 60.0)
        self.n_gm = Waves(rng, 30.0)
        self.n_wm = Waves(rng, 25.0)

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

    def render(self, sl: Slice) -> np.ndarray:
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


MODELS = {"knee": _Knee, "brain": _Brain}
