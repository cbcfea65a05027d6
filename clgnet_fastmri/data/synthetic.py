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
The anatomy (knee and brain, rendered from 3-D models in ``phantoms.py``) is described
there. Per volume, its size, position, in-plane rotation, proportions, tissue contrasts, coil
geometry, phase, bias and SNR are drawn at random.

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
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from tqdm import tqdm

from ..errors import UserError
from ..files import ensure_writable_dir, h5_output
from .phantoms import MODELS, SPECS, AnatomySpec, Frame, Slice, Waves

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
        model = MODELS[anatomy](r_anat, acquisition)
        self.model = model
        pixel = spec.fov_mm / self.size
        # Coarse grids never finer than the pixels (tiny test-sized sets stay fast).
        self.frame = Frame(self.rows, self.cols, pixel, model.scale, model.angle, model.shift,
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
        self.phase_field = Waves(r_misc, 150.0, n=12)
        self.header = _header(spec, acquisition, self.size, self.rows, self.cols,
                              self.num_slices, self.num_coils, self.padding, r_misc)
        # Pass 1: the noise-free magnetisation of every slice (float32; modest) and the
        # noise level that gives the drawn SNR.
        self.magnetisation = np.stack([
            model.render(Slice(self.frame, w, r_tex)) for w in self.depths])
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
    with h5_output(path) as hf:
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
    with h5_output(gt_path) as gt:
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
