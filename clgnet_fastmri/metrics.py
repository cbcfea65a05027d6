"""Metrics beyond fastmri's: BANDING, the orientation of the reconstruction error.

``evaluate`` reports it beside fastmri's NMSE, PSNR and SSIM; the ``banding`` package (which
trains against banding) re-exports it.

Banding (Defazio et al., NeurIPS 2020) is faint streaks along the phase-encoding direction.
In fastMRI data the phase-encoding direction is the k-space columns, i.e. the image width
(last axis). A streak along the width varies little along x and a lot along y, so its
energy lies near the ``f_x = 0`` axis of the 2-D spectrum; error structure that runs across
the phase-encoding direction lies near ``f_y = 0``. The metric compares the two.

Definition (``banding_score``), for a target volume ``t`` and a reconstruction ``r`` of shape
(slices, H, W), frequencies ``f = (f_y, f_x)`` in cycles per pixel (``numpy.fft.fftfreq``):

1. ``e_s = r_s - t_s`` per slice ``s``, minus its mean (a constant offset is not banding),
   times a separable Hann window ``w(y) w(x)`` (no wrap-around edge at the borders, whose
   spectrum would fall exactly on the two axes being compared);
2. ``P(f) = sum_s |FFT2(e_s)(f)|**2``, the error's power spectrum over the volume;
3. ``A = {f : |f| >= f_min, |f_x| <= tan(theta) |f_y|}`` (along the phase-encoding
   direction) and ``B = {f : |f| >= f_min, |f_y| <= tan(theta) |f_x|}`` (across it): two
   wedges of half-angle ``theta`` around the two axes, mirror images of each other;
4. ``BANDING = 10 log10(mean_A P / mean_B P)`` in dB.

Reading it: 0 dB is no banding (the error has no preferred direction, e.g. noise);
positive values mean error energy coherent along the phase-encoding direction (banding,
+3 dB = twice the energy); negative values mean structure across it (e.g. the residual
aliasing of column undersampling, which is coherent along the readout). Identical
volumes score exactly 0. Working on the error, not the image, removes the anatomy's own
anisotropy; ``f_min`` (default 1/32 cycle/pixel: structures up to 32 pixels across) leaves
out slow shading, which is not banding and would dominate the energy; ``theta`` (default
15 degrees) counts a streak of vertical period ``1/f_y`` pixels if it stays coherent over
about ``1 / (tan(theta) f_y)`` pixels along the width.
"""

from __future__ import annotations

import math
from typing import Tuple

import numpy as np

DEFAULT_HALF_ANGLE = 15.0  # degrees
DEFAULT_MIN_FREQUENCY = 1.0 / 32  # cycles per pixel


def wedge_masks(
    height: int,
    width: int,
    half_angle: float = DEFAULT_HALF_ANGLE,
    min_frequency: float = DEFAULT_MIN_FREQUENCY,
) -> Tuple[np.ndarray, np.ndarray]:
    """Boolean (height, width) masks of wedges A (along the width) and B (across it), in
    ``numpy.fft.fft2``'s (unshifted) frequency layout."""
    if not 0.0 < half_angle < 45.0:
        raise ValueError(f"half_angle must be in (0, 45) degrees, not {half_angle}")
    f_y = np.abs(np.fft.fftfreq(height))[:, None]
    f_x = np.abs(np.fft.fftfreq(width))[None, :]
    slope = math.tan(math.radians(half_angle))
    ring = np.hypot(f_y, f_x) >= max(min_frequency, 1e-12)
    return ring & (f_x <= slope * f_y), ring & (f_y <= slope * f_x)


def directional_energy(
    error: np.ndarray,
    half_angle: float = DEFAULT_HALF_ANGLE,
    min_frequency: float = DEFAULT_MIN_FREQUENCY,
) -> Tuple[float, float]:
    """``(mean_A P, mean_B P)`` of an error volume (slices, H, W) or image (H, W): steps 1-3
    of the module docstring."""
    error = np.asarray(error, dtype=np.float64)
    if error.ndim == 2:
        error = error[None]
    if error.ndim != 3:
        raise ValueError(f"expected (slices, H, W) or (H, W), got shape {error.shape}")
    height, width = error.shape[-2:]
    window = np.hanning(height)[:, None] * np.hanning(width)[None, :]
    error = (error - error.mean(axis=(-2, -1), keepdims=True)) * window
    power = (np.abs(np.fft.fft2(error)) ** 2).sum(axis=0)
    along, across = wedge_masks(height, width, half_angle, min_frequency)
    if not along.any() or not across.any():
        raise ValueError(f"a {height}x{width} image has no frequency above min_frequency")
    return float(power[along].mean()), float(power[across].mean())


def banding_score(
    target: np.ndarray,
    recons: np.ndarray,
    half_angle: float = DEFAULT_HALF_ANGLE,
    min_frequency: float = DEFAULT_MIN_FREQUENCY,
) -> float:
    """BANDING in dB (module docstring): 0 = none, > 0 = error streaks along the
    phase-encoding direction (the width). Volumes (slices, H, W) or images (H, W), cropped
    as ``fastmri.evaluate`` crops them; usable as
    ``evaluate_folder(..., extra_metrics={"BANDING": banding_score})``."""
    target = np.asarray(target, dtype=np.float64)
    recons = np.asarray(recons, dtype=np.float64)
    if target.shape != recons.shape:
        raise ValueError(f"shapes differ: target {target.shape}, recons {recons.shape}")
    along, across = directional_energy(recons - target, half_angle, min_frequency)
    total = along + across
    if total == 0.0:
        return 0.0
    # The floor keeps a pure streak pattern (zero energy across) finite: +120 dB at most.
    floor = 1e-12 * total
    return 10.0 * math.log10((along + floor) / (across + floor))
