"""3-D model of a coronal knee (fastMRI knee, ``CORPD_FBK`` and ``CORPDFS_FBK``).

Coordinates (mm): ``u`` medial-lateral (image columns), ``v`` superior-inferior (rows,
downwards), ``w`` anterior-posterior (slices, anterior positive); the joint line is at
``v = 0``. Slices run through the whole knee, from the patella in front to the separate
condyles and popliteal vessels behind. The model: femur (condyles, notch), tibia (plateau,
spines), fibula and patella with cortex, trabecular marrow and physeal scars; cartilage with a
darker deep zone, joint fluid, menisci, ligaments and tendons; skin, subcutaneous fat with
fibrous strands and vessels, striated muscle with fat septa. Fat suppression darkens fat and
marrow and brightens fluid. The leg always fits the phase-encoding field of view (no wrap).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional, Tuple

import numpy as np

from .phantoms import (
    SPECS,
    Slice,
    Texture,
    Waves,
    band,
    box_profile,
    depth_factor,
    ellipse_sd,
    jitter,
    lines,
    paint,
    ramp,
    segment_sd,
    smooth_intersection,
    smooth_union,
    smoothstep,
    trumpet,
)

# Relative tissue magnetisations, proton density and fat suppressed.
_PD = dict(skin=0.50, fat=1.00, muscle=0.33, cartilage=0.58, fluid=0.66, ligament=0.06,
           meniscus=0.05, cortex=0.04, marrow=0.86, vessel=0.12)
_FS = dict(skin=0.40, fat=0.10, muscle=0.36, cartilage=0.62, fluid=0.95, ligament=0.06,
           meniscus=0.06, cortex=0.04, marrow=0.14, vessel=0.30)


@dataclass(frozen=True)
class Physis:
    """The physeal scar: a dark wavy line across the marrow at ``v``."""

    v: float
    amplitude: float
    wavelength: float
    phases: Tuple[float, float]

    @classmethod
    def draw(cls, rng: np.random.Generator, v: float) -> "Physis":
        U = rng.uniform
        return cls(v, U(0.8, 2.0), U(14.0, 24.0), (U(0, 2 * np.pi), U(0, 2 * np.pi)))

    def offset(self, u):
        lam, (ph1, ph2) = self.wavelength, self.phases
        return self.amplitude * (np.sin(2 * np.pi * u / lam + ph1)
                                 + 0.5 * np.sin(2 * np.pi * u / (0.43 * lam) + ph2))


@dataclass(frozen=True)
class Condyle:
    """An ellipsoid: centre ``(u, v)``, semi-axes ``(half_width, half_height)`` in-plane."""

    u: float
    v: float
    half_width: float
    half_height: float
    depth_centre: float
    half_depth: float


@dataclass(frozen=True)
class Femur:
    """Two condyles on a shaft that flares towards them; a notch between them at the back."""

    centre_u: float
    notch_half_width: float
    condyle_depth: float  # depth centre of the condyles
    bottom_v: float  # lowest point of the bone
    condyle_v: float  # where the condyles meet the shaft
    condyles: Tuple[Condyle, Condyle]  # medial, lateral
    half_width: float  # across both condyles
    shaft_radius: float
    flare_length: float
    half_depth: float  # at the condyles
    notch_height: float
    physis: Physis

    def distance(self, u, v, w):
        t = trumpet(self.condyle_v - v, self.flare_length)  # 1 at the condyles, 0 up the shaft
        half = self.shaft_radius + (self.half_width - self.shaft_radius) * t
        depth = self.shaft_radius + (self.half_depth - self.shaft_radius) * t
        q = box_profile((w - (self.condyle_depth + 6.0)) / depth)
        d = np.maximum(np.abs(u - self.centre_u) - half * q, v - self.condyle_v)
        d = np.where(q > 0, d, 1e3)
        for c in self.condyles:
            f = depth_factor(w, c.depth_centre, c.half_depth)
            if f > 0.05:
                d = smooth_union(d, ellipse_sd(u, v, c.u, c.v, c.half_width * f ** 0.35,
                                               c.half_height * f), 5.0)
        # The intercondylar notch: an arch between the condyles, absent in front (trochlea).
        front = smoothstep((self.condyle_depth + 12.0 - w) / 10.0)
        if front > 0.05:
            deep = 1.0 + 0.8 * smoothstep((self.condyle_depth - 12.0 - w) / 10.0)  # back: higher
            notch = ellipse_sd(u, v, self.centre_u, self.bottom_v + 2.0,
                               self.notch_half_width * 1.1, self.notch_height * front * deep)
            d = smooth_intersection(d, -notch, 2.0)
        return d


@dataclass(frozen=True)
class Tibia:
    """A plateau (a little wider than the condyles) with spines, narrowing to the shaft."""

    centre_u: float
    plateau_v: float
    half_width: float  # of the plateau
    shaft_radius: float
    flare_length: float
    half_depth: float  # of the plateau
    depth_centre: float
    spine_height: float
    physis: Physis

    def half_width_at(self, v, w):
        t = trumpet(v - self.plateau_v - 4.0, self.flare_length)  # 1 at the plateau
        half = self.shaft_radius + (self.half_width - self.shaft_radius) * t
        depth = self.shaft_radius + 2.0 + (self.half_depth - self.shaft_radius - 2.0) * t
        return half * box_profile((w - self.depth_centre) / depth)

    def top(self, u, w):
        """The plateau surface ``v(u)``: concave facets, spines in the middle, a raised rim."""
        x = u - self.centre_u
        f_sp = math.exp(-(((w - self.depth_centre) / 10.0) ** 2))
        spines = np.exp(-(((x - 4.0) / 2.5) ** 2)) + np.exp(-(((x + 4.0) / 2.5) ** 2))
        concave = np.exp(-(((np.abs(x) - self.half_width * 0.5) / 10.0) ** 2))
        rim = 2.5 * smoothstep((np.abs(x) - (self.half_width - 4.0)) / 4.0) ** 2
        return self.plateau_v + 0.8 * concave - self.spine_height * f_sp * spines + rim

    def distance(self, u, v, w, top):
        half = self.half_width_at(v, w)
        d = smooth_intersection(np.abs(u - self.centre_u) - half, top - v, 2.0)
        return np.where(half > 0, d, 1e3)


@dataclass(frozen=True)
class Fibula:
    head_u: float
    head_v: float
    depth_centre: float
    foot_u: float  # where the shaft leaves the image

    def distance(self, u, v, w) -> Optional[np.ndarray]:
        f = depth_factor(w, self.depth_centre, 12.0)
        if f < 0.05:
            return None
        head = ellipse_sd(u, v, self.head_u, self.head_v, 9.5 * f ** 0.5, 10.0 * f ** 0.7)
        shaft = segment_sd(u, v, (self.head_u, self.head_v), (self.foot_u, 170.0),
                           7.0 * f ** 0.5)
        return smooth_union(head, shaft, 8.0)


@dataclass(frozen=True)
class Patella:
    u: float
    v: float
    depth_centre: float
    semi_axes: Tuple[float, float]

    def distance(self, u, v, w) -> Optional[np.ndarray]:
        f = depth_factor(w, self.depth_centre, 9.0)
        if f < 0.05:
            return None
        a, b = self.semi_axes
        return ellipse_sd(u, v, self.u, self.v, a * f ** 0.5, b * f ** 0.7)


@dataclass(frozen=True)
class Leg:
    """The soft-tissue envelope and the smooth fields that vary it."""

    flare: float  # extra half width at the joint line
    half_width: float
    half_depth: float
    depth_centre: float
    bend: float  # slope of the leg's axis
    skin: float  # thickness
    fat: float  # mean subcutaneous fat thickness
    muscle_gap: float  # half height of the fat-filled gap around the joint line
    outline: Waves
    fat_variation: Waves
    muscle_edge: Waves
    muscle_septa: Waves
    fat_strands: Waves
    strand_gate: Waves  # where the fat holds strands rather than vessels
    fat_vessels: Waves
    variation: Waves  # of fat and muscle intensity


class _Textures(NamedTuple):
    trabecular: Texture
    fibres: Texture  # muscle fibres, along v
    mottle: Texture
    variation: np.ndarray
    gate: np.ndarray


class _Bones(NamedTuple):
    femur: np.ndarray
    tibia_top: np.ndarray
    tibia: np.ndarray
    fibula: Optional[np.ndarray]
    patella: Optional[np.ndarray]


class Knee:
    """The knee model of one volume, drawn from ``rng``; ``render`` paints one slice.

    Parameters are drawn in the order they are written (arguments left to right): reordering
    them changes the data, which needs a new ``GENERATOR_VERSION``.
    """

    texture_spacing = 2.0
    map_spacing = 8.0
    loop_radius = 50.0

    def __init__(self, rng: np.random.Generator, acquisition: str):
        U = rng.uniform
        self.tissue = jitter(rng, _FS if acquisition == "CORPDFS_FBK" else _PD)
        self.scale = U(0.9, 1.1)
        self.angle = math.radians(U(-4.0, 4.0))
        self.shift = (U(-5.0, 5.0), U(-10.0, 10.0))
        self.middle_depth = U(-8.0, 4.0)  # of a one-slice volume
        self.side = float(rng.choice([-1.0, 1.0]))  # +1: medial side towards +u
        gap = U(0.3, 0.9)  # joint space
        self.femoral_cartilage, self.tibial_cartilage = U(1.8, 3.0), U(1.5, 2.6)
        self.femur = self._draw_femur(rng, gap)
        self.tibia = self._draw_tibia(rng, gap)
        f, t = self.femur, self.tibia
        head_u = t.centre_u - self.side * (t.half_width - U(4.0, 7.0))
        self.fibula = Fibula(head_u=head_u, head_v=t.plateau_v + U(21.0, 26.0),
                             depth_centre=t.depth_centre - U(14.0, 20.0),
                             foot_u=head_u - self.side * 4.0)
        self.patella = Patella(u=f.centre_u + U(-4.0, 4.0), v=f.bottom_v - U(22.0, 32.0),
                               depth_centre=f.condyle_depth + U(36.0, 44.0),
                               semi_axes=(U(19.0, 23.0), U(15.0, 19.0)))
        self.meniscus_widths = (U(9.0, 13.0), U(9.0, 13.0))
        self.meniscus_heights = (U(5.0, 8.0), U(5.0, 8.0))
        self.effusion = U(0.5, 3.0)
        self.popliteal_depth = self.tibia.depth_centre - U(30.0, 36.0)
        self.popliteal_u = self.tibia.centre_u + self.side * U(0.0, 8.0)
        self.leg = self._draw_leg(rng)
        self.marrow_variation = Waves(rng, 16.0)

    def _draw_femur(self, rng: np.random.Generator, gap: float) -> Femur:
        U, s = rng.uniform, self.side
        centre_u, notch, condyle_depth = U(-3.0, 3.0), U(5.0, 7.0), U(-12.0, -4.0)
        a_med, a_lat = U(13.5, 16.5), U(13.0, 16.0)  # condyle half widths
        b_med, b_lat = U(17.0, 22.0), U(16.0, 21.0)  # condyle half heights
        bottom_v = -(gap / 2 + self.femoral_cartilage)
        medial = Condyle(u=centre_u + s * (a_med + notch), half_width=a_med, half_height=b_med,
                         depth_centre=condyle_depth, half_depth=U(28.0, 34.0),
                         v=bottom_v - b_med)
        lateral = Condyle(u=centre_u - s * (a_lat + notch), half_width=a_lat, half_height=b_lat,
                          depth_centre=condyle_depth + U(-3, 3), half_depth=U(27.0, 33.0),
                          v=bottom_v - b_lat)
        condyle_v = bottom_v - 0.5 * (b_med + b_lat)
        return Femur(centre_u=centre_u, notch_half_width=notch, condyle_depth=condyle_depth,
                     bottom_v=bottom_v, condyle_v=condyle_v, condyles=(medial, lateral),
                     half_width=notch + 0.5 * (a_med + a_lat) * 1.9,
                     shaft_radius=U(12.0, 15.0), flare_length=U(14.0, 20.0),
                     half_depth=U(28.0, 34.0), notch_height=U(14.0, 20.0),
                     physis=Physis.draw(rng, condyle_v - U(6.0, 12.0)))

    def _draw_tibia(self, rng: np.random.Generator, gap: float) -> Tibia:
        U, f = rng.uniform, self.femur
        plateau_v = gap / 2 + self.tibial_cartilage
        widest = max(f.condyles[0].half_width, f.condyles[1].half_width)
        return Tibia(centre_u=f.centre_u + U(-2.0, 2.0), plateau_v=plateau_v,
                     half_width=f.notch_half_width + widest * 2.0 + U(1.5, 4.0),
                     shaft_radius=U(11.0, 14.0), flare_length=U(12.0, 18.0),
                     half_depth=U(24.0, 30.0), depth_centre=f.condyle_depth + U(0.0, 6.0),
                     spine_height=U(3.5, 6.5),
                     physis=Physis.draw(rng, plateau_v + U(15.0, 22.0)))

    def _draw_leg(self, rng: np.random.Generator) -> Leg:
        U = rng.uniform
        flare = U(2.0, 6.0)
        spec = SPECS["knee"]
        pe_half = spec.fov_mm * spec.pe_ratio / 2
        room = (0.97 * pe_half - abs(self.shift[0])) / self.scale - 90 * abs(math.sin(self.angle))
        return Leg(flare=flare, half_width=min(U(50.0, 58.0), room - flare - 5.0),
                   half_depth=U(55.0, 62.0),
                   depth_centre=self.femur.condyle_depth + U(-4.0, 4.0),
                   bend=U(-0.03, 0.03), skin=U(1.2, 2.0), fat=U(3.0, 11.0),
                   muscle_gap=U(16.0, 28.0), outline=Waves(rng, 45.0),
                   fat_variation=Waves(rng, 50.0),
                   muscle_edge=Waves(rng, 35.0, stretch=(1.0, 2.0, 1.0)),
                   muscle_septa=Waves(rng, 20.0, stretch=(1.0, 2.5, 1.0)),
                   fat_strands=Waves(rng, 12.0), strand_gate=Waves(rng, 25.0),
                   fat_vessels=Waves(rng, 16.0, stretch=(1.0, 1.5, 1.0)),
                   variation=Waves(rng, 30.0))

    def coil_centres(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """A cylinder of ``n`` loops around the leg (axis along ``v``)."""
        rings = [(-32.0, (n + 1) // 2), (32.0, n // 2)] if n > 8 else [(0.0, n)]
        radius = self.leg.half_width + self.leg.flare + 22.0
        out = []
        for v_ring, count in rings:
            start = rng.uniform(0, 2 * np.pi)
            for j in range(count):
                a = start + 2 * np.pi * j / count
                out.append((self.femur.centre_u + radius * math.cos(a), v_ring,
                            self.leg.depth_centre + radius * math.sin(a)))
        return np.asarray(out)

    def centre_point(self) -> Tuple[float, float, float]:
        """Where the coil sensitivities' root-sum-of-squares is 1."""
        return (self.femur.centre_u, 0.0, self.leg.depth_centre)

    def depth_range(self) -> Tuple[float, float]:
        """Slice depths through the knee (front to back)."""
        return (self.leg.depth_centre - self.leg.half_depth + 8.0,
                self.leg.depth_centre + self.leg.half_depth - 8.0)

    def render(self, sl: Slice) -> np.ndarray:
        u, v, w = sl.u, sl.v, sl.w
        img = np.zeros(u.shape, np.float32)
        fw = depth_factor(w, self.leg.depth_centre, self.leg.half_depth)
        if fw < 0.02:
            return img  # beyond the leg: noise only
        tx = _Textures(sl.texture(3.0), sl.texture(2.2, aspect=6.0, angle=math.pi / 2),
                       sl.texture(6.0), sl.smooth(self.leg.variation),
                       smoothstep(sl.smooth(self.leg.strand_gate) + 0.5))
        deep_fat = self._paint_leg(img, sl, tx, fw)
        top = self.tibia.top(u, w)
        bones = _Bones(self.femur.distance(u, v, w), top, self.tibia.distance(u, v, w, top),
                       self.fibula.distance(u, v, w), self.patella.distance(u, v, w))
        self._paint_fluid_and_vessels(img, sl, tx, bones, deep_fat)
        self._paint_ligaments(img, sl, tx)
        # Tibial cartilage thins out towards the rim of the plateau.
        art_t = 1.0 - smoothstep((np.abs(u - self.tibia.centre_u)
                                  - (self.tibia.half_width - 10.0)) / 5.0)
        tibial_cartilage = self.tibial_cartilage * art_t
        self._paint_menisci(img, sl, tx, top - tibial_cartilage)
        self._paint_cartilage(img, sl, tx, bones, tibial_cartilage)
        self._paint_bones(img, sl, tx, bones)
        # The knee coil covers about 25 cm: signal fades towards the ends of the readout.
        img *= 1.0 - smoothstep((np.abs(v) - 70.0) / 55.0)
        return img

    def _paint_leg(self, img, sl: Slice, tx: _Textures, fw: float):
        """Skin, subcutaneous fat (fibrous strands, small vessels), muscle with fat septa.

        Returns the signed distance to the inner boundary of the subcutaneous fat.
        """
        u, v, e, T, leg = sl.u, sl.v, sl.edge, self.tissue, self.leg
        oblique = min(1.0 / fw, 3.0)  # layers cut obliquely look thicker
        mot1, mot2, rho_m = tx.mottle
        half = (leg.half_width + leg.flare * np.exp(-((v / 45.0) ** 2))) * fw
        half = half + 2.0 * sl.smooth(leg.outline)
        d_leg = np.abs(u - self.femur.centre_u - leg.bend * v) - half
        paint(img, ramp(d_leg, e), T["skin"] * (1 + 0.06 * rho_m * mot2))
        fat = T["fat"] * (1 + 0.05 * tx.variation + 0.04 * rho_m * mot1)
        strands = band(sl.zero_distance(leg.fat_strands), 0.3, e) * tx.gate * tx.gate
        vessels = band(sl.zero_distance(leg.fat_vessels), 0.9, e) * (1 - tx.gate) ** 2
        fat_val = fat + 0.4 * strands * (T["muscle"] - fat) + 0.7 * vessels * (T["vessel"] - fat)
        d_fat = d_leg + leg.skin * oblique
        paint(img, ramp(d_fat, e), fat_val)
        t_fat = np.maximum(leg.fat * oblique + 2.5 * sl.smooth(leg.fat_variation), 1.0)
        g_m = np.abs(v + 5.0) - leg.muscle_gap + 12.0 * sl.smooth(leg.muscle_edge)
        septa = band(sl.zero_distance(leg.muscle_septa), 0.5, e) * tx.gate
        fib, _, rho_f = tx.fibres
        muscle = T["muscle"] * (1 + 0.10 * tx.variation + 0.12 * rho_f * fib + 0.05 * rho_m * mot2)
        m_occ = ramp(-g_m, e) * (1 - 0.8 * septa)
        paint(img, ramp(d_fat + t_fat, e), fat_val + m_occ * (muscle - fat_val))
        return d_fat + t_fat

    def _paint_fluid_and_vessels(self, img, sl: Slice, tx: _Textures, bones: _Bones,
                                 deep_fat) -> None:
        """Joint fluid (joint space and recesses at its margins); popliteal vessels behind."""
        u, v, w, e, T, tibia = sl.u, sl.v, sl.w, sl.edge, self.tissue, self.tibia
        d_fl = np.maximum(np.minimum(bones.femur, bones.tibia) - self.effusion,
                          np.abs(v) - (3.0 + 2.0 * self.effusion))
        d_fl = np.maximum(d_fl, np.abs(u - tibia.centre_u) - (tibia.half_width + 4.0))
        paint(img, ramp(d_fl, e), T["fluid"] * (1 + 0.05 * tx.mottle.rho * tx.mottle.a))
        # Vertical tubes, dark (flowing blood): artery and vein.
        for du, r in ((0.0, 3.2), (-self.side * 7.5, 4.5)):
            f = depth_factor(w, self.popliteal_depth, r)
            if f > 0:
                d = np.maximum(np.abs(u - self.popliteal_u - du) - r * f, deep_fat)
                paint(img, ramp(d, e), T["vessel"])

    def _paint_ligaments(self, img, sl: Slice, tx: _Textures) -> None:
        """Ligaments and tendons: dark capsules with a faint fibrous texture."""
        f, t, p, s = self.femur, self.tibia, self.patella, self.side
        fib = self.fibula
        lig = self.tissue["ligament"] * (1 + 0.6 * tx.fibres.rho * tx.fibres.b)
        v_mcl = t.plateau_v + 40.0
        cond_v = f.condyle_v
        bands = [  # (p0, p1, radius, depth centre, half depth)
            ((f.centre_u + s * (f.half_width + 1.2), cond_v - 18.0),
             (t.centre_u + s * (float(t.half_width_at(v_mcl, t.depth_centre)) + 1.5), v_mcl),
             1.4, t.depth_centre, 13.0),  # medial collateral
            ((f.centre_u - s * (f.half_width + 1.0), cond_v - 10.0),
             (fib.head_u - s * 4.0, fib.head_v - 4.0), 1.7, fib.depth_centre + 6.0,
             11.0),  # lateral collateral
            ((f.centre_u - s * (f.notch_half_width - 1.0), cond_v - 4.0),
             (t.centre_u + s * 3.0, t.plateau_v - 1.0), 2.8, t.depth_centre - 3.0, 10.0),  # ACL
            ((f.centre_u + s * (f.notch_half_width - 1.5), cond_v - 1.0),
             (t.centre_u - s * 1.0, t.plateau_v + 11.0), 3.2, t.depth_centre - 16.0,
             9.0),  # PCL
            ((f.centre_u - s * (f.half_width + 7.0), -60.0),
             (t.centre_u - s * (t.half_width + 2.5), t.plateau_v + 8.0), 1.0,
             t.depth_centre + 4.0, 16.0),  # iliotibial band
            ((p.u, p.v + 10.0), (t.centre_u + s * 2.0, t.plateau_v + 42.0), 11.0,
             p.depth_centre - 5.0, 6.0),  # patellar tendon
            ((p.u, p.v - 12.0), (f.centre_u, -130.0), 10.0, p.depth_centre - 3.0,
             7.0),  # quadriceps tendon
        ]
        for p0, p1, r, wc, hd in bands:
            k = depth_factor(sl.w, wc, hd)
            if k > 0.05:
                paint(img, ramp(segment_sd(sl.u, sl.v, p0, p1, r * k), sl.edge), lig)

    def _paint_menisci(self, img, sl: Slice, tx: _Textures, surface) -> None:
        """Dark wedges on the plateau rim (``surface``: the top of the tibial cartilage),
        filling the gap the rounded condyles leave (the femur is painted over them)."""
        u, v, w, t = sl.u, sl.v, sl.w, self.tibia
        q_t = depth_factor(w, t.depth_centre, t.half_depth * 0.95)
        if q_t <= 0:
            return
        post = smoothstep((t.depth_centre - 6.0 - w) / 10.0)  # posterior horns: wider
        value = self.tissue["meniscus"] * (1 + 0.4 * tx.mottle.rho * tx.mottle.a)
        for sgn, wm, hm in zip((self.side, -self.side), self.meniscus_widths,
                               self.meniscus_heights):
            width = wm * (1.0 + 0.8 * post) * q_t ** 0.3
            xm = sgn * (u - t.centre_u) - (t.half_width + 1.0 - width)
            h = hm * q_t ** 0.5 * np.clip(xm / width, 0.0, 1.0) + 0.5
            d = np.maximum(np.maximum(-xm, xm - width),
                           np.maximum(surface - h - v, v - surface))
            paint(img, ramp(d, sl.edge), value)

    def _paint_cartilage(self, img, sl: Slice, tx: _Textures, bones: _Bones,
                         tibial_cartilage) -> None:
        """Femoral cartilage on the lower condyles, tibial on the plateau; darker deep zone."""
        v, e, T = sl.v, sl.edge, self.tissue
        mottle = 0.05 * tx.mottle.rho * tx.mottle.b
        art_f = smoothstep((v - (self.femur.condyle_v - 4.0)) / 8.0)
        zone = np.clip(bones.femur / self.femoral_cartilage, 0.0, 1.0)
        cart = T["cartilage"] * (0.8 + 0.3 * zone) * (1 + mottle)
        paint(img, ramp(bones.femur - self.femoral_cartilage * art_f, e), cart)
        zone_t = np.clip(bones.tibia / self.tibial_cartilage, 0.0, 1.0)
        cart_t = T["cartilage"] * (0.8 + 0.3 * zone_t) * (1 + mottle)
        in_top = 1.0 - smoothstep((v - bones.tibia_top - 3.0) / 3.0)
        paint(img, ramp(bones.tibia - tibial_cartilage * in_top, e), cart_t)

    def _paint_bones(self, img, sl: Slice, tx: _Textures, bones: _Bones) -> None:
        """Cortex, then marrow with trabeculae, heterogeneity and (femur, tibia) a physeal
        scar."""
        u, v, e, T = sl.u, sl.v, sl.edge, self.tissue
        trab1, trab2, rho_t = tx.trabecular
        trab = np.maximum(lines(trab1, rho_t, 0.4), 0.6 * lines(trab2, rho_t, 0.3))
        marrow = T["marrow"] * (1 - 0.16 * trab) * (1 + 0.07 * sl.smooth(self.marrow_variation))
        cortex = 0.9 + 3.0 * smoothstep((np.abs(v) - 28.0) / 45.0)  # thicker along the shafts
        for d, thickness, physis in ((bones.femur, cortex, self.femur.physis),
                                     (bones.tibia, cortex, self.tibia.physis),
                                     (bones.fibula, 1.5, None), (bones.patella, 1.3, None)):
            if d is None:
                continue
            paint(img, ramp(d, e), T["cortex"])
            m = marrow
            if physis is not None:
                scar = band(v - physis.v - physis.offset(u), 0.7, e)
                m = marrow * (1 - 0.35 * scar * (0.4 + 0.6 * tx.gate))
            paint(img, ramp(d + thickness, e), m)
