"""Synthetic knee and brain MRI in the fastMRI HDF5 layout (``clgnet-fastmri make-data``).

Writes a dataset that unmodified ``fastmri`` reads as it reads the real one, so that training,
evaluation and submission run before any real data is downloaded::

    <out>/{challenge}_train/*.h5    fully sampled k-space and target
    <out>/{challenge}_val/*.h5      the same
    <out>/{challenge}_test/*.h5     k-space masked like the challenge set, ``mask``, no target
    <out>/{challenge}_test_gt/*.h5  the targets of the test volumes, for ``evaluate``

Model: an anatomy (``knee_phantom``, ``brain_phantom``) is rendered slice by slice into a real
magnetisation, multiplied by coil sensitivities (multicoil: loop coils, magnitude
``(r^2 / (r^2 + d^2))^1.5``, smooth phase; singlecoil: the square root of their
root-sum-of-squares as a bias) and a smooth image phase (so k-space is not Hermitian),
transformed with ``fft2c`` and given complex white Gaussian noise. The SNR (mean noise-free
magnitude over the object in the target crop over the noise's standard deviation per real
component) is drawn per volume from a range per contrast. Targets are the centre crop of
``|ifft2c(kspace)|`` of the final noisy k-space (RSS over coils), as in fastMRI. Test masks
are ``RandomMaskFunc`` masks with the challenge's centre fraction ``0.32 / acceleration``.

Each volume has its own random streams derived from ``(seed, split, index)``, so asking for
more volumes never changes the earlier ones.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from fastmri.data.transforms import center_crop
from tqdm import tqdm

from ..errors import UserError
from ..files import staged_dataset_root
from .brain_phantom import Brain
from .fastmri_layout import (
    ANATOMIES,
    CHALLENGES,
    MAX_ACCELERATION,
    MIN_ACCELERATION,
    SPLITS,
    MaskSpec,
    center_fraction,
    ismrmrd_header,
    write_raw_volume,
)
from .knee_phantom import Knee
from .phantoms import SPECS, AnatomySpec, Frame, Slice, Waves

# Bumped whenever the same arguments and seed would give different data (e.g. a changed
# anatomy model): caches of generated sets can put it in their key.
GENERATOR_VERSION = 1

MODELS = {"knee": Knee, "brain": Brain}
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}

# Limits that make-data enforces (before anything is written).
MIN_SIZE = 16
MAX_SIZE = 1024
MAX_SLICES = 512
MAX_COILS = 64
MAX_VOLUMES = 100_000

DEFAULT_SPLITS = {"train": 8, "val": 2, "test": 2}
DEFAULT_ACCELERATIONS = (4, 8)

SeedLike = Union[int, Sequence[int], np.random.SeedSequence]

# SNR ranges (mean foreground magnitude / noise std of the real part), per acquisition:
# fat suppression costs signal.
_SNR_RANGE = {"CORPD_FBK": (22.0, 35.0), "CORPDFS_FBK": (8.0, 13.0), "AXT1": (28.0, 45.0)}
# Typical magnitude of a bright tissue (fat in PD, white matter in T1): the scale of the
# targets of real fastMRI data.
_SIGNAL_SCALE = 2.2e-4
# Coil arrays are modelled with at least this many loops; fewer coils are a subset of them.
_MIN_ARRAY = 8


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


def _skip_version1_header_draws(rng: np.random.Generator) -> None:
    """Make, unused, the draws of version 1's descriptive header fields (field strength, TR
    and TE, study time, measurement ID): the test masks are drawn after them. Drop this with
    the next ``GENERATOR_VERSION``."""
    rng.integers(2)
    rng.uniform(size=6)
    rng.integers(7, 19)
    rng.integers(60)
    rng.integers(60)
    rng.integers(10**8)


@dataclass
class SyntheticVolume:
    """One synthetic volume in memory (see ``make_volume``).

    Attributes:
        kspace: complex64, fully sampled and noisy; ``(slices, rows, cols)`` singlecoil or
            ``(slices, coils, rows, cols)`` multicoil, DC centred (``fastmri.fft2c``).
        target: float32 ``(slices, size, size)``: centre crop of ``|ifft2c(kspace)|`` (RSS
            over coils for multicoil); what the files store as ``reconstruction_esc/_rss``.
        clean_target: the same computed without noise (same k-space column support).
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
    clean_target: np.ndarray
    header: bytes
    attrs: Dict[str, object]
    noise_std: float
    snr: float
    padding: Tuple[int, int]


class _Synth:
    """Builds one volume slice by slice (so a dataset never holds a whole volume's k-space).

    Random streams (all derived from ``seed``): anatomy, textures, noise, and ``misc``
    (acquisition, coils, phase, test mask); each is used in a fixed order.
    """

    def __init__(self, anatomy: str, challenge: str, size: Optional[int], num_slices: int,
                 num_coils: Optional[int], seed: SeedLike, acquisition: Optional[str] = None):
        spec = _spec(anatomy)
        self.challenge = challenge
        self.kspace_shape, (self.num_slices, self.size, _) = _volume_shapes(
            anatomy, challenge, size, num_slices, num_coils)
        self.rows, self.cols = self.kspace_shape[-2:]
        self.num_coils = 1 if challenge == "singlecoil" else self.kspace_shape[1]
        self.padding = acquired_columns(anatomy, self.cols)
        ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
        r_anatomy, r_texture, self.rng_noise, self.rng_misc = (
            np.random.default_rng(s) for s in ss.spawn(4))
        r_misc = self.rng_misc
        if acquisition is None:
            acquisition = str(r_misc.choice(spec.acquisitions))
        self.acquisition = acquisition
        self.snr = float(r_misc.uniform(*_SNR_RANGE[acquisition]))
        self.amplitude = _SIGNAL_SCALE * float(np.exp(r_misc.uniform(-0.4, 0.4)))
        self.patient_id = r_misc.bytes(16).hex()
        self.model = model = MODELS[anatomy](r_anatomy, acquisition)
        pixel = spec.fov_mm / self.size
        # Coarse grids never finer than the pixels (tiny test-sized sets stay fast).
        self.frame = Frame(self.rows, self.cols, pixel, model.scale, model.angle, model.shift,
                           max(model.texture_spacing, pixel), max(model.map_spacing, pixel))
        self.depths = _slice_depths(model, self.num_slices)
        self._draw_coils(r_misc)
        self.phase_coefficients = r_misc.uniform(-1.0, 1.0, 3)
        self.phase_field = Waves(r_misc, 150.0, n=12)
        _skip_version1_header_draws(r_misc)
        # Only the fields fastmri reads: nothing else of these scans is real.
        self.header = ismrmrd_header((self.rows, self.cols), (self.size, self.size),
                                     self.padding)
        # Pass 1: the noise-free magnetisation of every slice (float32; modest) and the
        # noise level that gives the drawn SNR.
        self.magnetisation = np.stack([
            model.render(Slice(self.frame, w, r_texture)) for w in self.depths])
        self.noise_std = self._noise_std()

    def _draw_coils(self, rng: np.random.Generator) -> None:
        """Loop positions, phases and phase gradients; sensitivities RSS to 1 at the centre."""
        self.coils = self.model.coil_centres(max(self.num_coils, _MIN_ARRAY), rng)
        if self.num_coils < _MIN_ARRAY:
            self.coils = self.coils[rng.permutation(len(self.coils))[: self.num_coils]]
        self.coil_phase = rng.uniform(0, 2 * np.pi, len(self.coils))
        g = rng.standard_normal((len(self.coils), 3))
        self.coil_grad = g / np.linalg.norm(g, axis=1, keepdims=True)
        self.sens_norm = 1.0
        cu, cv, cw = self.model.centre_point()
        self.sens_norm = float(np.sqrt((np.abs(self._sens(
            np.array([[cu]]), np.array([[cv]]), cw)) ** 2).sum()))

    def _noise_std(self) -> float:
        fg = np.stack([center_crop(self.magnetisation[k] * np.abs(
            self.frame.maps.up(self._fields(k)[1])), (self.size, self.size))
            for k in range(self.num_slices)])
        peak = np.percentile(fg, 99.5)
        if peak <= 0:  # an empty volume
            return float(self.amplitude * 0.02)
        return float(self.amplitude * fg[fg > 0.1 * peak].mean() / self.snr)

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
        lin = self.phase_coefficients
        phase = np.exp(1j * (lin[0] * uc / 60.0 + lin[1] * vc / 60.0
                             + lin[2] * (uc * uc + vc * vc) / 8000.0
                             + 0.6 * self.phase_field(uc, vc, w)))
        sens = self._sens(uc, vc, w)
        rss = np.sqrt((np.abs(sens) ** 2).sum(axis=0))
        if self.challenge == "singlecoil":
            rss = np.sqrt(rss)
        return (sens * phase).astype(np.complex64), (rss * phase).astype(np.complex64)

    def slices(self, clean: bool = False) -> Iterator[Dict[str, np.ndarray]]:
        """Per slice: ``kspace`` (noisy, zero outside the acquired columns), ``target`` and,
        with ``clean``, ``clean_target``."""
        left, right = self.padding
        for k in range(self.num_slices):
            maps, combined = self._fields(k)
            m = self.magnetisation[k] * self.amplitude
            if self.challenge == "singlecoil":
                img = m * self.frame.maps.up(combined)
            else:
                img = m[None] * self.frame.maps.up(maps)
            ks = _fft2c(img.astype(np.complex64))
            noise = self.rng_noise.standard_normal((2,) + ks.shape, dtype=np.float32)
            ks_noisy = ks + self.noise_std * (noise[0] + 1j * noise[1])
            ks_noisy[..., :left] = 0
            ks_noisy[..., right:] = 0
            ks_noisy = ks_noisy.astype(np.complex64)
            out = {"kspace": ks_noisy, "target": self._target(ks_noisy)}
            if clean:
                ks[..., :left] = 0
                ks[..., right:] = 0
                out["clean_target"] = self._target(ks)
            yield out

    def _target(self, ks: np.ndarray) -> np.ndarray:
        mag = np.abs(_ifft2c(ks))
        if mag.ndim == 3:
            mag = np.sqrt((mag * mag).sum(axis=0))
        return np.ascontiguousarray(center_crop(mag, (self.size, self.size)), dtype=np.float32)


def _volume_shapes(anatomy: str, challenge: str, size: Optional[int],
                   num_slices: Optional[int], num_coils: Optional[int]):
    """``(kspace_shape, target_shape)`` of one volume, the defaults filled in."""
    spec = _spec(anatomy)
    size = spec.full_size if size is None else int(size)
    num_slices = spec.default_slices if num_slices is None else int(num_slices)
    rows, cols = kspace_shape(anatomy, size)
    if challenge == "singlecoil":
        return (num_slices, rows, cols), (num_slices, size, size)
    coils = spec.default_coils if num_coils is None else int(num_coils)
    return (num_slices, coils, rows, cols), (num_slices, size, size)


def _slice_depths(model, num_slices: int) -> List[float]:
    """Anatomical depths of the slices: like a real volume, they span the whole object, so
    ``num_slices`` sets their spacing."""
    lo, hi = model.depth_range()
    if num_slices == 1:
        return [min(max(model.middle_depth, lo), hi)]
    return [float(w) for w in np.linspace(lo, hi, num_slices)]


def _check_volume_args(anatomy, challenge, size, num_slices, num_coils,
                       acquisition: Optional[str] = None) -> None:
    spec = _spec(anatomy)
    if acquisition is not None and acquisition not in spec.acquisitions:
        raise UserError(f"acquisition {acquisition!r} is not a {anatomy} acquisition "
                        f"({', '.join(spec.acquisitions)})")
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
                acquisition: Optional[str] = None) -> SyntheticVolume:
    """Build one synthetic volume in memory (no files).

    Args:
        anatomy: "knee" (coronal PD / PD-FS, fastMRI knee geometry) or "brain" (axial T1,
            CC-359 geometry).
        challenge: "singlecoil" or "multicoil".
        size: target side in pixels (even); default the anatomy's full size. The k-space
            grid scales with it (see ``kspace_shape``).
        num_slices: spread over the whole object; default as in the real data.
        num_coils: multicoil only; default the anatomy's coil array.
        seed: an int, a sequence of ints or a ``numpy.random.SeedSequence``;
            ``volume_seed(seed, split, index)`` reproduces a volume of ``make_dataset``.
        acquisition: force the contrast (one of the anatomy's); default drawn.

    Returns:
        A ``SyntheticVolume``; ``kspace``, ``target``, ``header`` and ``attrs`` are what
        ``make_dataset`` writes for a training file.
    """
    _check_volume_args(anatomy, challenge, size, num_slices, num_coils, acquisition)
    synth = _Synth(anatomy, challenge, size, num_slices, num_coils, seed, acquisition)
    slices = list(synth.slices(clean=True))
    kspace, target, clean_target = (np.stack([sl[key] for sl in slices])
                                    for key in ("kspace", "target", "clean_target"))
    return SyntheticVolume(
        anatomy=anatomy, challenge=challenge, acquisition=synth.acquisition, kspace=kspace,
        target=target, clean_target=clean_target, header=synth.header,
        attrs=_target_attrs(synth, target), noise_std=synth.noise_std, snr=synth.snr,
        padding=synth.padding)


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
        _check_int("acceleration", a, MIN_ACCELERATION, MAX_ACCELERATION)
    accs = tuple(int(a) for a in accs)
    problem = _mask_spec(accs).problem(cols)
    if problem:
        raise UserError(f"{problem}; use a larger --size or lower accelerations")
    return accs


def _mask_spec(accs: Tuple[int, ...]) -> MaskSpec:
    """The test masks: ``RandomMaskFunc`` with fastMRI's centre fractions."""
    return MaskSpec("random", tuple(center_fraction(a) for a in accs), accs)


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
    kshape, tshape = _volume_shapes(anatomy, challenge, size, num_slices, num_coils)
    accs = _check_accelerations(accelerations, kshape[-1])
    # Per volume: k-space and target (a test volume: masked k-space and its _test_gt target).
    needed = sum(counts.values()) * (int(np.prod(kshape)) * 8 + int(np.prod(tshape)) * 4 + 20_000)
    names = {s: f"{challenge}_{s}" for s in counts}
    if "test" in counts:
        names["test_gt"] = f"{challenge}_test_gt"
    out = Path(out_dir)
    started = time.perf_counter()
    with staged_dataset_root(out, list(names.values()), overwrite, _STAGING_PREFIX) as (
            out, staging):
        free = shutil.disk_usage(out).free
        if needed > free:
            raise UserError(f"{out}: this dataset needs about {needed / 1e9:.2f} GB but only "
                            f"{free / 1e9:.2f} GB are free; use fewer or smaller volumes")
        files, acq_counts = _write_splits(staging, names, counts, anatomy, challenge,
                                          tshape[-1], tshape[0], num_coils, accs, seed,
                                          progress)
    folders = {key: out / name for key, name in names.items()}
    files = {key: [folders[key] / p.name for p in paths] for key, paths in files.items()}
    written = sum(p.stat().st_size for paths in files.values() for p in paths)
    return DatasetSummary(root=out, anatomy=anatomy, challenge=challenge, seed=seed,
                          folders=folders, files=files, num_slices=tshape[0],
                          kspace_shape=kshape, target_shape=tshape, accelerations=accs,
                          bytes_written=written, seconds=time.perf_counter() - started,
                          acquisitions=acq_counts)


def _write_splits(staging: Path, names: Dict[str, str], counts: Dict[str, int], anatomy: str,
                  challenge: str, size: int, num_slices: int, num_coils: Optional[int],
                  accs: Tuple[int, ...], seed: int, progress: bool):
    files: Dict[str, List[Path]] = {key: [] for key in names}
    acq_counts: Dict[str, int] = {}
    mask_spec = _mask_spec(accs)
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
                test = gt_path = None
                if split == "test":
                    test = mask_spec.sample(synth.cols, synth.rng_misc)
                    gt_path = staging / names["test_gt"] / fname
                    files["test_gt"].append(gt_path)
                write_raw_volume(path, challenge, synth.header, synth.kspace_shape,
                                 ((sl["kspace"], sl["target"]) for sl in synth.slices()),
                                 {"acquisition": synth.acquisition,
                                  "patient_id": synth.patient_id},
                                 test, gt_path, in_memory=True)
                files[split].append(path)
                bar.update(1)
    return files, acq_counts


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
