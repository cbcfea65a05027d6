"""3-D model of an axial T1 brain (CC-359 style, ``AXT1``).

Coordinates (mm): ``u`` left-right (image columns), ``v`` anterior-posterior (rows, anterior
at the top), ``w`` inferior-superior (slices); ``w = 0`` is the level of the bodies of the
lateral ventricles. Slices run from the midbrain to just below the vertex. The model: scalp
(skin, fat, temporalis muscle), skull (tables and diploe), CSF, a cortical grey-matter ribbon
folded around sulci that run in from the surface (plus the interhemispheric and Sylvian
fissures), white matter, lateral (with septum), third and temporal-horn ventricles, caudate,
putamen, thalamus, midbrain with its cistern.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Tuple

import numpy as np

from .phantoms import (
    Slice,
    Texture,
    Waves,
    depth_factor,
    ellipse_sd,
    jitter,
    paint,
    ramp,
    segment_sd,
    smooth_union,
    smoothstep,
)

# Relative tissue magnetisations in T1 ("bone": cortical bone of the skull tables).
_T1 = dict(skin=0.55, fat=1.05, muscle=0.35, bone=0.04, diploe=0.72, csf=0.10, gm=0.50,
           wm=0.82, deep=0.62, midbrain=0.68, plexus=0.35)


@dataclass(frozen=True)
class Head:
    """An egg-shaped dome on a cylinder, and the thicknesses of its layers."""

    half_width: float
    half_length: float
    taper: float  # narrower in front
    dome_start: float  # depth where the dome begins
    dome_height: float
    skin: float
    scalp: float
    table: float
    diploe: float
    outline: Waves
    layers: Waves  # variation of the layers' thicknesses


@dataclass(frozen=True)
class Cortex:
    csf: float  # thickness of the CSF over the brain (more with atrophy)
    grey_matter: float
    sulcus_half_width: float
    sulcus_depth: float
    midline_u: float
    callosum_half_length: float  # the interhemispheric fissure stops there
    csf_variation: Waves
    sulci: Waves  # radial: constant along rays from the centre
    sulci_meander: Waves
    sulcus_depth_variation: Waves
    midline: Waves
    grey_variation: Waves
    white_variation: Waves


@dataclass(frozen=True)
class Ventricles:
    """The lateral ventricles (half width and length of each body); the others follow."""

    half_width: float
    half_length: float
    v: float
    depth_centre: float
    septum: float  # half thickness
    angle: float


class _Textures(NamedTuple):
    mottle: Texture
    fine: Texture


class Brain:
    """The brain model of one volume, drawn from ``rng``; ``render`` paints one slice.

    Parameters are drawn in the order they are written: reordering them changes the data,
    which needs a new ``GENERATOR_VERSION``.
    """

    texture_spacing = 1.25
    map_spacing = 8.0
    loop_radius = 50.0

    def __init__(self, rng: np.random.Generator, acquisition: str):
        U = rng.uniform
        self.tissue = jitter(rng, _T1)
        self.scale = U(0.92, 1.08)
        self.angle = math.radians(U(-7.0, 7.0))
        self.shift = (U(-8.0, 8.0), U(-8.0, 8.0))
        self.middle_depth = U(14.0, 26.0)  # of a one-slice volume
        head = dict(half_width=U(72.0, 80.0), half_length=U(92.0, 102.0), taper=U(0.04, 0.10),
                    dome_start=U(-30.0, -20.0), dome_height=U(92.0, 100.0), skin=U(1.2, 2.0),
                    scalp=U(2.5, 5.5), table=U(1.1, 1.7), diploe=U(1.8, 3.8))
        cortex = dict(csf=U(1.0, 3.0), grey_matter=U(2.3, 3.0), sulcus_half_width=U(0.35, 0.8),
                      sulcus_depth=U(10.0, 15.0), midline_u=U(-2.0, 2.0))
        self.ventricles = Ventricles(half_width=U(3.5, 8.0), half_length=U(20.0, 28.0),
                                     v=U(-6.0, 2.0), depth_centre=U(1.0, 7.0),
                                     septum=U(0.5, 1.1), angle=math.radians(U(6.0, 14.0)))
        cortex["callosum_half_length"] = U(32.0, 38.0)
        self.head = Head(**head, outline=Waves(rng, 50.0), layers=Waves(rng, 35.0))
        self.cortex = Cortex(**cortex, csf_variation=Waves(rng, 40.0),
                             sulci=Waves(rng, U(14.0, 18.0), n=40),
                             sulci_meander=Waves(rng, 18.0, n=32),
                             sulcus_depth_variation=Waves(rng, 30.0), midline=Waves(rng, 60.0),
                             grey_variation=Waves(rng, 30.0), white_variation=Waves(rng, 25.0))

    def coil_centres(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """One or two rings of ``n`` loops around the head."""
        h = self.head
        rings = [(h.dome_start + 35.0, (n + 1) // 2), (h.dome_start + 80.0, n // 2)] if n > 8 \
            else [(h.dome_start + 55.0, n)]
        out = []
        for w_ring, count in rings:
            start = rng.uniform(0, 2 * np.pi)
            for j in range(count):
                a = start + 2 * np.pi * j / count
                out.append(((h.half_width + 18.0) * math.cos(a),
                            (h.half_length + 18.0) * math.sin(a), w_ring))
        return np.asarray(out)

    def centre_point(self) -> Tuple[float, float, float]:
        """Where the coil sensitivities' root-sum-of-squares is 1."""
        return (0.0, 0.0, 10.0)

    def depth_range(self) -> Tuple[float, float]:
        """Slice depths with brain in them: skull base to just below the vertex."""
        return -22.0, self.head.dome_start + self.head.dome_height - 14.0

    def render(self, sl: Slice) -> np.ndarray:
        u, v, w, h = sl.u, sl.v, sl.w, self.head
        img = np.zeros(u.shape, np.float32)
        f = depth_factor(w, h.dome_start, h.dome_height) if w > h.dome_start else 1.0
        if f < 0.08:
            return img
        oblique = min(1.0 / f, 3.0)  # layers cut obliquely (near the vertex) look thicker
        A, B = h.half_width * f, h.half_length * f
        a_u = A * (1.0 + h.taper * v / B)
        d_head = ellipse_sd(u, v, 0.0, 0.0, a_u, B) + 1.5 * sl.smooth(h.outline)
        tx = _Textures(sl.texture(4.0), sl.texture(1.6))
        d_inner = self._paint_scalp_and_skull(img, sl, tx, d_head, A, B, oblique)
        d_csf = self._csf_distance(sl, d_inner, A, oblique)
        T = self.tissue
        mot1, mot2, rho_m = tx.mottle
        gm_t = self.cortex.grey_matter * (1 + 0.2 * sl.smooth(self.cortex.grey_variation))
        paint(img, ramp(-d_csf, sl.edge), T["gm"] * (1 + 0.05 * rho_m * mot2))
        wm = T["wm"] * (1 + 0.04 * sl.smooth(self.cortex.white_variation) + 0.03 * rho_m * mot1
                        + 0.02 * tx.fine.rho * tx.fine.b)
        paint(img, ramp(gm_t - d_csf, sl.edge), wm)
        self._paint_deep_grey_matter(img, sl, tx)
        self._paint_ventricles(img, sl, tx)
        return img

    def _paint_scalp_and_skull(self, img, sl: Slice, tx: _Textures, d_head, A: float,
                               B: float, oblique: float):
        """Skin, fat, temporalis muscle low on the sides; outer table, diploe, inner table.

        Returns the signed distance to the inner surface of the skull.
        """
        u, v, w, e, T, h = sl.u, sl.v, sl.w, sl.edge, self.tissue, self.head
        mot1, mot2, rho_m = tx.mottle
        fine1, fine2, rho_f = tx.fine
        layers = sl.smooth(h.layers)
        paint(img, ramp(d_head, e), T["skin"] * (1 + 0.05 * rho_m * mot2))
        depth = h.skin * oblique
        paint(img, ramp(d_head + depth, e), T["fat"] * (1 + 0.05 * rho_m * mot1))
        theta = np.arctan2(np.abs(u) / A, -v / B)  # 0 in front, pi/2 at the sides
        temporal = 7.0 * np.exp(-(((theta - 1.55) / 0.45) ** 2)) * smoothstep((25.0 - w) / 20.0)
        depth = depth + h.scalp * oblique * (1 + 0.25 * layers)
        muscle = np.clip(temporal / 1.5, 0, 1)
        paint(img, ramp(d_head + depth, e), T["fat"] + muscle * (
            T["muscle"] * (1 + 0.1 * rho_f * fine2) - T["fat"]))
        depth = depth + temporal
        paint(img, ramp(d_head + depth, e), T["bone"])
        depth = depth + h.table * oblique
        paint(img, ramp(d_head + depth, e), T["diploe"] * (1 + 0.15 * rho_f * fine1))
        depth = depth + h.diploe * oblique * np.maximum(1 - 0.4 * layers, 0.3)
        paint(img, ramp(d_head + depth, e), T["bone"])
        depth = depth + h.table * oblique
        paint(img, ramp(d_head + depth, e), T["csf"] * (1 + 0.3 * rho_m * mot2))
        return d_head + depth

    def _csf_distance(self, sl: Slice, d_inner, A: float, oblique: float):
        """Distance (mm) into the brain from the nearest CSF: the surface, the sulci and the
        interhemispheric and Sylvian fissures. It decides CSF, grey or white matter."""
        u, v, w, c, h = sl.u, sl.v, sl.w, self.cortex, self.head
        csf = np.maximum(c.csf * oblique * (1 + 0.4 * sl.smooth(c.csf_variation)), 0.4)
        below = -d_inner - csf  # depth below the brain surface
        radial = 1.0 - smoothstep((w - 25.0) / 40.0)  # near the vertex: cut tangentially

        def folds(uc, vc, wc):
            # Evaluated at the point's projection on the brain surface, with the depth as a
            # third (slower) coordinate, so that sulci bend and join at their fundi.
            r = np.maximum(np.sqrt((uc / h.half_width) ** 2 + (vc / h.half_length) ** 2), 0.05)
            depth = (1.0 - r) * h.half_width
            return radial * c.sulci(uc / r, vc / r, wc + 0.6 * depth) \
                + (1.25 - radial) * c.sulci_meander(uc, vc, wc)

        sd = sl.zero_distance(folds, clip=15.0)
        s_depth = np.clip(c.sulcus_depth + 5.0 * sl.smooth(c.sulcus_depth_variation), 4.0,
                          24.0) * oblique
        ds = np.sqrt(sd * sd + np.maximum(below - s_depth, 0.0) ** 2) - c.sulcus_half_width
        tissue = np.minimum(below, ds)
        # Interhemispheric fissure: in front and behind only, at and below the corpus
        # callosum (the midline there is callosum, septum, third ventricle, thalami).
        d_mid = np.abs(u - c.midline_u - 1.5 * sl.smooth(c.midline)) - 0.9
        cc = float(smoothstep((22.0 - w) / 6.0)) * c.callosum_half_length
        if cc > 0:
            d_mid = np.maximum(d_mid, cc - np.abs(v - self.ventricles.v))
        tissue = np.minimum(tissue, d_mid)
        fs = depth_factor(w, -8.0, 18.0)
        if fs > 0:  # Sylvian fissures
            for sgn in (-1.0, 1.0):
                p0 = (sgn * A * 0.98, -8.0)
                p1 = (sgn * (A * 0.98 - 30.0 * fs), 2.0)
                tissue = np.minimum(tissue, segment_sd(u, v, p0, p1, 1.2))
        return tissue

    def _paint_deep_grey_matter(self, img, sl: Slice, tx: _Textures) -> None:
        """Caudate heads, thalami, putamina; the midbrain (two peduncles, the tectum) in its
        cistern."""
        u, v, w, e, T, vent = sl.u, sl.v, sl.w, sl.edge, self.tissue, self.ventricles
        mot1, mot2, rho_m = tx.mottle
        deep = T["deep"] * (1 + 0.04 * rho_m * mot2)
        for sgn in (-1.0, 1.0):
            ang = sgn * math.radians(10.0)
            for cu, cv, ea, eb, wc, hd, an in (
                    (sgn * (vent.septum + 2 * vent.half_width + 4.0),
                     vent.v - 0.45 * vent.half_length, 5.0, 9.0, vent.depth_centre - 2.0, 14.0,
                     0.0),  # caudate head
                    (sgn * 9.0, vent.v + 10.0, 8.5, 12.0, -7.0, 12.0, 0.0),  # thalamus
                    (sgn * 24.0, vent.v - 2.0, 5.0, 14.0, -8.0, 11.0, ang)):  # putamen
                k = depth_factor(w, wc, hd)
                if k > 0.05:
                    d = ellipse_sd(u, v, cu, cv, ea * k ** 0.5, eb * k ** 0.5, an)
                    paint(img, ramp(d, e), deep)
        fm = depth_factor(w, -26.0, 14.0)
        if fm > 0.05:
            k = fm ** 0.5
            cistern = ellipse_sd(u, v, 0.0, 12.0, 19.0 * k, 16.0 * k)
            paint(img, ramp(cistern, e), T["csf"])
            mb = smooth_union(ellipse_sd(u, v, -7.0 * k, 8.0, 8.0 * k, 10.0 * k, 0.5),
                              ellipse_sd(u, v, 7.0 * k, 8.0, 8.0 * k, 10.0 * k, -0.5), 3.0)
            mb = smooth_union(mb, ellipse_sd(u, v, 0.0, 17.0, 11.0 * k, 6.0 * k), 3.0)
            paint(img, ramp(mb, e), T["midbrain"] * (1 + 0.04 * rho_m * mot1))
            paint(img, ramp(ellipse_sd(u, v, 0.0, 14.0, 1.2, 1.2), e), T["csf"])  # aqueduct

    def _paint_ventricles(self, img, sl: Slice, tx: _Textures) -> None:
        """Lateral ventricles (frontal horns, bodies, atria with choroid plexus, temporal
        horns) and the third ventricle."""
        u, v, w, e, T, vent = sl.u, sl.v, sl.w, sl.edge, self.tissue, self.ventricles
        s, a, b = vent.septum, vent.half_width, vent.half_length
        vents, plexus = [], []
        for sgn in (-1.0, 1.0):
            k = depth_factor(w, vent.depth_centre, 15.0)
            if k > 0.05:  # frontal horns and bodies
                vents.append(ellipse_sd(u, v, sgn * (s + a * k), vent.v, a * k, b * k ** 0.4,
                                        -sgn * vent.angle))
            k = depth_factor(w, vent.depth_centre - 5.0, 11.0)
            if k > 0.05:  # atria and occipital horns
                cu, cv = sgn * (9.0 + a), vent.v + 0.8 * b
                vents.append(ellipse_sd(u, v, cu, cv, a * 0.8 * k, 11.0 * k ** 0.5,
                                        sgn * math.radians(35)))
                plexus.append(ellipse_sd(u, v, cu, cv + 2.0, a * 0.4 * k, 4.0 * k ** 0.5))
            k = depth_factor(w, -24.0, 10.0)
            if k > 0.05:  # temporal horns
                vents.append(ellipse_sd(u, v, sgn * 31.0, 6.0, 2.0 * k, 9.0 * k, sgn * 0.35))
        k = depth_factor(w, -12.0, 10.0)
        if k > 0.05:  # third ventricle
            vents.append(ellipse_sd(u, v, self.cortex.midline_u * 0.5, vent.v + 6.0, 1.6 * k,
                                    11.0 * k))
        for d in vents:
            paint(img, ramp(d, e), T["csf"])
        for d in plexus:
            paint(img, ramp(d, e), T["plexus"] * (1 + 0.2 * tx.fine.rho * tx.fine.a))
