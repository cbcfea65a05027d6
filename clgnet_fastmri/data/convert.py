"""Real data in the fastMRI layout: ``clgnet-fastmri convert SOURCE OUT --format FORMAT``.

Formats (the readers, and the choices they make, are documented in their modules):

``cc359-raw`` (``cc359.py``)
    Calgary-Campinas raw k-space, ``.h5`` (``kspace`` dataset) or ``.npy``, ``(slices, rows,
    cols, 2 x coils)``: the 12-channel ``.h5`` release centred in ky/kz, the single-channel
    ``.npy`` release uncentred, each volume's centring checked on its data (``--centred`` /
    ``--uncentred`` to state it). Written as ``multicoil`` files (``reconstruction_rss``);
    with ``--singlecoil``, or when every source has one coil (the single-channel release),
    as ``singlecoil`` files (``reconstruction_esc``). ``--drop-end-slices N`` drops the
    outer, nearly empty slices (default: DIRECT's 50 at each end for multi-channel volumes,
    none for single-channel ones).
``nifti`` (``nifti.py``)
    3-D magnitude volumes (``.nii``, ``.nii.gz``), one slice per fastMRI slice; written as
    ``singlecoil`` files whose target is the image.

Every file under SOURCE (searched recursively, links followed) is accounted for: a volume
when it has the format's suffix, else listed as ignored in the summary; an entry that cannot
be read (unreadable folder, dangling link, link loop) stops the run before anything is
written, or is listed as left out with ``--skip-bad-files``. Volumes are grouped into
subjects (the file name without its suffix, or the part ``--subject-pattern`` matches), and
subjects are split into train/val/test at random for a given ``--seed`` (or, with
``--split-by-folder``, as the source's own Train/Val/Test folders say; a source without a
Test folder, as CC-359's single-channel release, gives half of its Val subjects to the test
split): one subject's volumes all go to one split. A split the options ask for that ends up
with no volume is an error. The test split is masked like the fastMRI challenge set
(``mask``, ``acceleration``, ``num_low_frequency``, no target), with fastmri's mask
functions and one (centre fraction, acceleration) pair drawn per volume; its targets go to
``{challenge}_test_gt``. All files carry a minimal ISMRMRD header (``header.py``) and the
attributes ``acquisition`` (one of fastMRI's, as ``evaluate --acquisition``), ``max``,
``norm`` (of the volume's target) and ``patient_id`` (the subject).

Output is atomic: everything is written into a hidden staging folder in OUT and the split
folders are moved into place at the end, so an error, Ctrl-C or kill leaves OUT as it was
(a kill leaves the hidden ``.convert-*.partial`` folder, which the next run removes).
The options and every source's header are checked before anything is allocated or written;
values (NaN, truncated data, values beyond float32, all-zero volumes) when they are read.
``--skip-bad-files`` leaves bad sources out instead of stopping.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Set, Tuple

import fastmri
import numpy as np
import torch
from fastmri.data.subsample import create_mask_for_mask_type
from tqdm import tqdm

from ..errors import DataError, UserError
from ..files import check_output_root, h5_disk_output, h5_output, staged_dataset_root
from . import cc359, nifti
from .checks import ACQUISITIONS, entry_problem
from .header import ismrmrd_header
from .synthetic import MAX_SIZE, center_fraction

FORMATS = ("cc359-raw", "nifti")
SPLITS = ("train", "val", "test")
# CC-359's single-channel release: 25 training, 10 validation, 10 test subjects (the paper's).
DEFAULT_SPLIT = {"cc359-raw": (25 / 45, 10 / 45, 10 / 45), "nifti": (0.6, 0.2, 0.2)}
MASK_TYPES = ("random", "equispaced", "equispaced_fraction", "magic", "magic_fraction")
# CC-359's T1 scans have 1 mm voxels; the raw files do not say, the header wants a FOV.
CC359_VOXEL_MM = 1.0
# DIRECT's CC-359 loader drops the 50 outer, nearly empty slices at each end of a
# 12-channel volume; the single-channel release (the paper's) keeps all.
DROP_END_SLICES = 50
_STAGING_PREFIX = ".convert-"

Slices = Iterator[Tuple[np.ndarray, np.ndarray]]


# ---------------------------------------------------------------------------------------------
# Sources, subjects and splits


@dataclass
class Source:
    """One source volume: ``name`` is its output file name without ``.h5``."""

    path: Path
    name: str
    subject: str
    coils: int = 1
    cols: int = 0  # k-space columns (what the test masks sample)
    slices: Tuple[int, int] = (0, 0)  # cc359-raw: the range of source slices converted
    layout: str = ""  # cc359-raw: "centred" or "uncentred"


@dataclass
class Found:
    """Every entry under SOURCE: the format's volumes, other files, unreadable entries."""

    volumes: List[Path] = field(default_factory=list)
    ignored: List[Path] = field(default_factory=list)
    bad: List[DataError] = field(default_factory=list)


_SPLIT_FOLDER = re.compile(r"^(singlecoil|multicoil)_(train|val|test)(_gt)?$")


def check_paths(source: Path, out: Path) -> None:
    """SOURCE is a readable folder of source volumes that OUT does not hold or equal."""
    if not source.exists():
        raise DataError(source, "source folder not found", "check the path")
    if not source.is_dir():
        raise DataError(source, "is a file, not a folder", "give the folder that holds it")
    try:
        os.scandir(source).close()
    except OSError as exc:
        raise DataError(source, f"source folder cannot be read ({exc.strerror})",
                        "check its permissions") from None
    real, real_out = source.resolve(), out.resolve()
    if real == real_out:
        raise UserError(f"{out}: OUT is SOURCE; the new dataset needs a folder of its own: "
                        "choose an OUT outside SOURCE")
    if real_out in real.parents:
        raise UserError(f"{source}: SOURCE lies inside OUT {out}, whose split folders convert "
                        "replaces; choose an OUT outside SOURCE")
    if _SPLIT_FOLDER.match(source.name):
        raise DataError(source, "is a split folder of a fastMRI dataset (what convert and "
                                "make-data write), not a source",
                        "give the folder of the original CC-359 or NIfTI files")


def find_sources(root: Path, fmt: str, exclude: Optional[Path] = None) -> Found:
    """Every entry under ``root`` (recursive, links followed once, hidden entries and
    ``exclude`` left out), sorted into the format's volumes, other files and bad entries."""
    found = Found()
    exclude = None if exclude is None else exclude.resolve()
    for path, problem in _walk(root, (root.resolve(),), {root.resolve()}, exclude):
        if problem:
            found.bad.append(DataError(path, problem, "make it readable, remove it, or leave "
                                                      "it out with --skip-bad-files"))
        elif nifti.is_nifti(path) if fmt == "nifti" else path.suffix.lower() in cc359.SUFFIXES:
            found.volumes.append(path)
        else:
            found.ignored.append(path)
    return found


def _walk(folder: Path, parents: Tuple[Path, ...], seen: Set[Path],
          exclude: Optional[Path]) -> Iterator[Tuple[Path, Optional[str]]]:
    """``(path, None)`` for each readable file under ``folder``, ``(path, problem)`` for
    each entry that cannot be read."""
    try:
        entries = sorted(entry.name for entry in os.scandir(folder))
    except OSError as exc:
        yield folder, f"folder cannot be read ({exc.strerror})"
        return
    for name in entries:
        path = folder / name
        if name.startswith("."):  # .git, .DS_Store, a killed run's staging folder
            continue
        problem = entry_problem(path)
        if problem != "folder":
            yield path, problem
            continue
        real = path.resolve()
        if real == exclude:
            continue
        if real in parents:
            yield path, f"symbolic link loop (leads back to {real})"
        elif real in seen:
            yield path, f"leads to {real}, which is read already"
        else:
            seen.add(real)
            yield from _walk(path, parents + (real,), seen, exclude)


def subject_of(path: Path, name: str, pattern: Optional[str]) -> str:
    """The subject of a volume: ``pattern``'s first group (or whole match) in its name."""
    if pattern is None:
        return name
    match = re.search(pattern, path.name)
    if match is None:
        raise DataError(path, f"--subject-pattern {pattern!r} does not match the file name",
                        "give a pattern that matches every file")
    return match.group(1) if match.groups() else match.group(0)


def split_counts(num_subjects: int, split: Sequence[float]) -> Tuple[int, int, int]:
    """Subjects per split: three whole numbers summing to ``num_subjects`` are counts;
    otherwise fractions, rounded by largest remainder."""
    if all(float(s).is_integer() for s in split) and sum(split) == num_subjects:
        return tuple(int(s) for s in split)
    total = float(sum(split))
    exact = [num_subjects * s / total for s in split]
    counts = [int(np.floor(e)) for e in exact]
    for i in sorted(range(3), key=lambda i: counts[i] - exact[i])[: num_subjects - sum(counts)]:
        counts[i] += 1
    return tuple(counts)


def split_subjects(subjects: Sequence[str], split: Sequence[float],
                   seed: int) -> Dict[str, List[str]]:
    """Split the (distinct) subjects at random, deterministically for ``seed``."""
    ordered = sorted(set(subjects))
    order = np.random.default_rng(seed).permutation(len(ordered))
    counts = split_counts(len(ordered), split)
    out, start = {}, 0
    for name, count in zip(SPLITS, counts):
        out[name] = sorted(ordered[i] for i in order[start:start + count])
        start += count
    return out


_FOLDER_SPLITS = {"train": "train", "training": "train", "val": "val", "valid": "val",
                  "validation": "val", "test": "test", "testing": "test"}


def split_by_folder(sources: Sequence[Source], root: Path) -> Dict[str, List[str]]:
    """The split a release already has: each source's nearest folder (under ``root``) named
    train/val/test (or training, valid, validation, testing; any case)."""
    out: Dict[str, List[str]] = {s: [] for s in SPLITS}
    seen: Dict[str, str] = {}
    for source in sources:
        folders = source.path.relative_to(root).parts[:-1]
        split = next((_FOLDER_SPLITS[f.lower()] for f in reversed(folders)
                      if f.lower() in _FOLDER_SPLITS), None)
        if split is None:
            raise DataError(source.path, "is in no train, val or test folder",
                            "--split-by-folder needs the release's Train/Val/Test folders")
        if seen.setdefault(source.subject, split) != split:
            raise DataError(source.path, f"subject {source.subject!r} is also in the "
                                         f"{seen[source.subject]} folder",
                            "one subject's volumes must share a split")
        if source.subject not in out[split]:
            out[split].append(source.subject)
    return {s: sorted(subjects) for s, subjects in out.items()}


def carve_test(by_split: Dict[str, List[str]], root: Path, seed: int) -> Dict[str, List[str]]:
    """A release without test subjects (CC-359's single-channel release: Train/ and Val/
    only, its test subjects never published) gives half of its validation subjects (rounded
    down, drawn for ``seed``) to the test split."""
    val = by_split["val"]
    if len(val) < 2:
        raise DataError(root, f"has no Test folder and {len(val)} validation subject"
                              f"{'s' if len(val) != 1 else ''}; the test split is carved "
                              "from half of the Val subjects, which needs at least 2",
                        "add subjects to Val, or split at random without --split-by-folder")
    chosen = set(np.random.default_rng(seed).choice(val, len(val) // 2, replace=False))
    return {"train": by_split["train"], "val": [s for s in val if s not in chosen],
            "test": sorted(chosen)}


def _volume_rng(seed: int, name: str) -> np.random.Generator:
    """A volume's own stream (mask, phase): independent of the other volumes."""
    return np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])


# ---------------------------------------------------------------------------------------------
# Converters: one source volume -> header facts and (kspace, target) per slice


@dataclass
class Converted:
    kspace_shape: Tuple[int, ...]  # (slices, [coils,] rows, cols)
    fov_mm: Tuple[float, float, float]
    coils: int
    slices: Slices
    clipped: int = 0  # negative voxels clipped to zero (NIfTI)


def convert_cc359(source: Source, singlecoil: bool) -> Converted:
    """A CC-359 raw volume (its slice range and centring found by ``_scan``) as centred
    k-space and RSS (or emulated single-coil) targets."""
    _, coils, rows, cols = cc359.shape_of(source.path)
    first, stop = source.slices
    fov = (rows * CC359_VOXEL_MM, cols * CC359_VOXEL_MM, CC359_VOXEL_MM)
    shape = (stop - first, rows, cols) if singlecoil else (stop - first, coils, rows, cols)
    return Converted(shape, fov, coils, _cc359_slices(source, singlecoil))


def _cc359_slices(source: Source, singlecoil: bool) -> Slices:
    path, indices = source.path, range(*source.slices)
    with cc359.open_raw(path) as raw:
        weights = None
        if singlecoil:
            coils = raw.shape[-1] // 2
            covariance = np.zeros((coils, coils), dtype=np.complex128)
            for k in indices:
                flat = cc359.coil_kspace(raw, k, path).reshape(coils, -1)
                covariance += flat @ flat.conj().T
            weights = cc359.compression_vector(covariance).conj()
        for k in indices:
            kspace = cc359.coil_kspace(raw, k, path)
            if weights is not None:
                kspace = np.tensordot(weights, kspace, axes=1)
            with np.errstate(over="ignore"):  # write_volume names values beyond float32
                kspace = cc359.fastmri_kspace(kspace, source.layout).astype(np.complex64)
            yield kspace, cc359.target(kspace)


def convert_nifti(path: Path, axis: str, size: int, keep_empty: bool,
                  phase_rng: Optional[np.random.Generator]) -> Converted:
    """A NIfTI volume as ``fft2c`` k-space (with a smooth phase if ``phase_rng``) and the
    image as target."""
    images, (row_mm, col_mm, slice_mm), clipped = nifti.read_slices(path, axis, size,
                                                                     keep_empty)
    phase = None
    if phase_rng is not None:
        phase = np.exp(1j * nifti.smooth_phase(size, phase_rng)).astype(np.complex64)
    return Converted(images.shape, (row_mm * size, col_mm * size, slice_mm), 1,
                     _nifti_slices(images, phase), clipped)


def _nifti_slices(images: np.ndarray, phase: Optional[np.ndarray]) -> Slices:
    for image in images:
        x = image.astype(np.complex64) if phase is None else image * phase
        kspace = fastmri.fft2c(torch.view_as_real(torch.from_numpy(x)))
        yield torch.view_as_complex(kspace).numpy(), image


# ---------------------------------------------------------------------------------------------
# Writing


@dataclass
class MaskSpec:
    mask_type: str
    center_fractions: Tuple[float, ...]
    accelerations: Tuple[int, ...]

    def check(self, cols: int, path: Path) -> None:
        """Refuse masks that would sample no centre line of ``cols`` columns."""
        for cf, acc in zip(self.center_fractions, self.accelerations):
            if round(cols * cf) < 1 or cols / acc < 1:
                raise UserError(f"{path}: its {cols} k-space columns are too few for "
                                f"{acc}x with centre fraction {cf:g}; use lower "
                                "--accelerations or larger --center-fractions")

    def sample(self, cols: int, rng: np.random.Generator) -> Tuple[np.ndarray, int, int]:
        """``(mask (cols,) bool, acceleration, num_low_frequency)`` for one test volume."""
        i = int(rng.integers(len(self.accelerations)))
        acc = self.accelerations[i]
        mask_func = create_mask_for_mask_type(self.mask_type, [self.center_fractions[i]], [acc])
        mask, num_low = mask_func((1, cols, 1), seed=int(rng.integers(2**32 - 1)))
        return mask.numpy().reshape(cols) > 0, acc, int(num_low)


def write_volume(converted: Converted, path: Path, challenge: str, acquisition: str,
                 subject: str, test: Optional[Tuple[MaskSpec, np.random.Generator]] = None,
                 gt_path: Optional[Path] = None, source: Optional[Path] = None) -> int:
    """Write one converted volume (a test file and its ``_test_gt`` twin when ``test`` is
    given), slice by slice; return its slice count. Values that are not finite in float32
    or a volume without signal are refused, naming ``source`` (default ``path``)."""
    key = "reconstruction_esc" if challenge == "singlecoil" else "reconstruction_rss"
    shape = converted.kspace_shape
    header = ismrmrd_header(shape[-2], shape[-1], converted.fov_mm, shape[0], converted.coils,
                            f"{acquisition} (clgnet-fastmri convert)")
    attrs = {"acquisition": acquisition, "patient_id": subject}
    mask = None
    if test is not None:
        spec, rng = test
        mask, acc, num_low = spec.sample(shape[-1], rng)
        attrs.update(acceleration=acc, num_low_frequency=num_low)
    # k-space goes to disk slice by slice: memory stays about one target volume.
    size = int(np.prod(shape)) * 8 + shape[0] * shape[-2] * shape[-1] * 4 + len(header)
    with h5_disk_output(path, size) as hf:
        hf.create_dataset("ismrmrd_header", data=header)
        kspace = hf.create_dataset("kspace", shape=shape, dtype=np.complex64)
        targets = []
        for k, (ks, tg) in enumerate(converted.slices):
            if not (np.isfinite(ks).all() and np.isfinite(tg).all()):
                raise DataError(source or path, f"slice {k} exceeds the float32 range once "
                                                "converted", "rescale the source volume")
            kspace[k] = ks if mask is None else ks * mask
            targets.append(tg)
        target = np.stack(targets)
        if not target.any():
            raise DataError(source or path, "is all zero (no signal in any slice)",
                            "check the file, or leave it out with --skip-bad-files")
        stats = {"max": float(target.max()),
                 "norm": float(np.linalg.norm(target.astype(np.float64)))}
        if mask is None:
            hf.create_dataset(key, data=target)
            attrs.update(stats)
        else:
            hf.create_dataset("mask", data=mask)
        hf.attrs.update(attrs)
    if mask is not None:
        with h5_output(gt_path) as gt:
            gt.create_dataset(key, data=target)
            gt.attrs.update({**attrs, **stats})
    return len(target)


# ---------------------------------------------------------------------------------------------
# The whole conversion


@dataclass
class ConvertSummary:
    root: Path
    fmt: str
    challenge: str
    seed: int
    folders: Dict[str, Path]
    subjects: Dict[str, List[str]]
    volumes: Dict[str, List[str]]  # split -> output file names
    slices: Dict[str, int]
    skipped: List[str] = field(default_factory=list)  # "path: problem" of left-out sources
    ignored: List[Path] = field(default_factory=list)  # files that are not the format's
    clipped: Dict[str, int] = field(default_factory=dict)  # volume -> negative voxels
    seconds: float = 0.0

    def __str__(self) -> str:
        n = sum(len(v) for v in self.volumes.values())
        lines = [f"converted {n} {self.fmt} volume{'s' if n != 1 else ''} into a "
                 f"{self.challenge} dataset at {self.root} (seed {self.seed}, "
                 f"{self.seconds:.1f} s)"]
        for split in SPLITS:
            if split not in self.folders:
                lines.append(f"  {split:<5}  no subjects")
                continue
            note = ", k-space masked, targets in " + self.folders["test_gt"].name + "/" \
                if split == "test" else ""
            lines.append(f"  {self.folders[split].name + '/':<22} "
                         f"{_count(len(self.subjects[split]), 'subject')} "
                         f"{_count(len(self.volumes[split]), 'volume')} "
                         f"{_count(self.slices[split], 'slice', 6)}{note}")
        if self.clipped:
            lines.append(f"  clipped {sum(self.clipped.values())} negative voxels to 0 in "
                         f"{_count(len(self.clipped), 'volume', 0).strip()} (interpolation "
                         f"undershoot): {', '.join(sorted(self.clipped))}")
        if self.ignored:
            examples = ", ".join([p.name for p in self.ignored[:3]]
                                 + ["..."] * (len(self.ignored) > 3))
            lines.append(f"  ignored {_count(len(self.ignored), 'file', 0).strip()} without "
                         f"a {self.fmt} suffix ({examples})")
        for problem in self.skipped:
            lines.append(f"  left out: {problem}")
        return "\n".join(lines)


def _count(n: int, noun: str, width: int = 4) -> str:
    return f"{n:{width}d} {noun}{'s' if n != 1 else ' '}"


def _check_options(args: argparse.Namespace) -> Tuple[Tuple[float, ...], MaskSpec]:
    split = tuple(args.split) if args.split else DEFAULT_SPLIT[args.format]
    if len(split) != 3 or not all(math.isfinite(s) for s in split) or min(split) < 0 \
            or sum(split) <= 0:
        raise UserError(f"--split takes three finite non-negative numbers (train val test), "
                        f"not {' '.join(map(str, split))}")
    if args.size < 16 or args.size % 2 or args.size > MAX_SIZE:
        raise UserError(f"--size must be an even number from 16 to {MAX_SIZE}, not "
                        f"{args.size}")
    if args.seed < 0:
        raise UserError(f"--seed must be 0 or more, not {args.seed}")
    if args.drop_end_slices is not None and args.drop_end_slices < 0:
        raise UserError(f"--drop-end-slices must be 0 or more, not {args.drop_end_slices}")
    # Ranges and matching lengths are checked by the CLI's shared settings.validate.
    accs = tuple(args.accelerations)
    cfs = tuple(args.center_fractions) if args.center_fractions else tuple(
        center_fraction(a) for a in accs)
    if args.subject_pattern is not None:
        try:
            re.compile(args.subject_pattern)
        except re.error as exc:
            raise UserError(f"--subject-pattern is not a regular expression ({exc})") from None
    return split, MaskSpec(args.mask_type, cfs, accs)


def _found_sources(args: argparse.Namespace, out: Path, skipped: List[str]) -> Found:
    """``find_sources``, its unreadable entries raised (or listed in ``skipped``)."""
    found = find_sources(args.source, args.format, exclude=out)
    if found.bad and not args.skip_bad_files:
        raise found.bad[0]
    skipped.extend(str(exc) for exc in found.bad)
    if not found.volumes:
        kinds = nifti.SUFFIXES if args.format == "nifti" else cc359.SUFFIXES
        others = f"; it has {len(found.ignored)} other files" if found.ignored else ""
        raise DataError(args.source, f"holds no {args.format} volumes (no "
                                     f"{' or '.join(kinds)} files{others})",
                        "check the path and --format")
    return found


def _source(args: argparse.Namespace, path: Path, name: str) -> Source:
    """One source, its header checked."""
    subject = subject_of(path, name, args.subject_pattern)
    if args.format == "nifti":
        nifti.check_size(path, nifti.open_volume(path), args.axis, args.size)
        return Source(path, name, subject, 1, args.size)
    (slices, coils, _, cols), layout = cc359.probe(path, args.layout)
    drop = args.drop_end_slices
    if drop is None:
        drop = DROP_END_SLICES if coils > 1 else 0
    if slices <= 2 * drop:
        raise DataError(path, f"has {slices} slices, none left after dropping {drop} at each "
                              "end", "pass a smaller --drop-end-slices")
    return Source(path, name, subject, coils, cols, (drop, slices - drop), layout)


def _scan(args: argparse.Namespace, found: Found, skipped: List[str]) -> Tuple[List[Source], str]:
    """Every source, its layout checked (bad ones raise, or go to ``skipped``); the
    challenge to write."""
    sources: List[Source] = []
    names: Dict[str, Path] = {}
    for path in found.volumes:
        name = nifti.stem(path) if args.format == "nifti" else path.stem
        try:
            if name in names:
                raise DataError(path, f"has the same name as {names[name]}",
                                "output files are named after their source; rename one")
            source = _source(args, path, name)
        except DataError as exc:
            if not args.skip_bad_files:
                raise
            skipped.append(str(exc))
            continue
        names[name] = path
        sources.append(source)
    if not sources:
        raise DataError(args.source, "no usable volumes (every file was left out: "
                                     f"{skipped[0]}{' ...' if len(skipped) > 1 else ''})",
                        "repair the files listed")
    if args.format == "nifti" or args.singlecoil or all(s.coils == 1 for s in sources):
        return sources, "singlecoil"
    ones = [s for s in sources if s.coils == 1]
    if ones:
        raise DataError(ones[0].path, "has a single coil while other volumes have several",
                        "convert single-channel and multi-channel data separately, or pass "
                        "--singlecoil")
    return sources, "multicoil"


def _split(args: argparse.Namespace, sources: List[Source],
           split: Sequence[float]) -> Dict[str, List[str]]:
    """Subjects per split; a split the options ask for that gets none is refused."""
    if args.split_by_folder:
        by_split = split_by_folder(sources, args.source)
        if not by_split["test"]:
            by_split = carve_test(by_split, args.source, args.seed)
        wanted = SPLITS
    else:
        by_split = split_subjects([s.subject for s in sources], split, args.seed)
        wanted = [name for name, share in zip(SPLITS, split) if share > 0]
    empty = [name for name in wanted if not by_split[name]]
    if empty:
        raise DataError(args.source, f"its {len(set(s.subject for s in sources))} usable "
                                     f"subjects leave the {' and '.join(empty)} split empty",
                        "add subjects, or give --split counts with 0 for a split you do not "
                        "want")
    return by_split


def convert(args: argparse.Namespace) -> ConvertSummary:
    """Run the conversion described by the parsed command line (see the module doc)."""
    started = time.perf_counter()
    split, mask_spec = _check_options(args)
    out = Path(args.out)
    check_paths(args.source, out)
    check_output_root(out, [], args.overwrite, _STAGING_PREFIX)  # before reading any source
    skipped: List[str] = []
    found = _found_sources(args, out, skipped)
    sources, challenge = _scan(args, found, skipped)
    by_split = _split(args, sources, split)
    test_subjects = set(by_split["test"])
    for source in sources:
        if source.subject in test_subjects:
            mask_spec.check(source.cols, source.path)
    names = {s: f"{challenge}_{s}" for s in SPLITS if by_split[s]}
    if "test" in names:
        names["test_gt"] = f"{challenge}_test_gt"
    clipped: Dict[str, int] = {}
    with staged_dataset_root(out, list(names.values()), args.overwrite, _STAGING_PREFIX) as (
            out, staging):
        volumes, slices = _write_all(args, sources, by_split, challenge, mask_spec, staging,
                                     names, skipped, clipped)
        _check_written(args.source, by_split, volumes, skipped)
    return ConvertSummary(
        root=out, fmt=args.format, challenge=challenge, seed=args.seed,
        folders={key: out / name for key, name in names.items()}, subjects=by_split,
        volumes=volumes, slices=slices, skipped=skipped, ignored=found.ignored,
        clipped=clipped, seconds=time.perf_counter() - started)


def _check_written(source: Path, by_split: Dict[str, List[str]],
                   volumes: Dict[str, List[str]], skipped: List[str]) -> None:
    """Every split that has subjects has a volume: else nothing is moved into place."""
    for split in SPLITS:
        if by_split[split] and not volumes[split]:
            raise DataError(source, f"every volume of the {split} split was left out "
                                    f"({skipped[-1]}{' ...' if len(skipped) > 1 else ''})",
                            "repair the files listed, or convert without them")


def _write_all(args, sources: List[Source], by_split: Dict[str, List[str]], challenge: str,
               mask_spec: MaskSpec, staging: Path, names: Dict[str, str],
               skipped: List[str],
               clipped: Dict[str, int]) -> Tuple[Dict[str, List[str]], Dict[str, int]]:
    split_of = {subject: s for s, subjects in by_split.items() for subject in subjects}
    volumes: Dict[str, List[str]] = {s: [] for s in SPLITS}
    slices = {s: 0 for s in SPLITS}
    with tqdm(sources, disable=args.quiet, unit="vol", desc="convert",
              dynamic_ncols=True) as bar:
        for source in bar:
            split = split_of[source.subject]
            bar.set_postfix_str(split)
            fname = source.name + ".h5"
            path = staging / names[split] / fname
            gt_path = staging / names["test_gt"] / fname if split == "test" else None
            rng = _volume_rng(args.seed, source.name)
            try:
                if args.format == "nifti":
                    converted = convert_nifti(source.path, args.axis, args.size,
                                              args.keep_empty, rng if args.phase else None)
                else:
                    converted = convert_cc359(source, challenge == "singlecoil")
                test = (mask_spec, rng) if split == "test" else None
                n = write_volume(converted, path, challenge, args.acquisition, source.subject,
                                 test, gt_path, source.path)
            except DataError as exc:
                if not args.skip_bad_files:
                    raise
                skipped.append(str(exc))  # atomic_output left nothing of this volume
                continue
            volumes[split].append(fname)
            slices[split] += n
            if converted.clipped:
                clipped[source.path.name] = converted.clipped
    return volumes, slices


# ---------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    none = "%(default).0s"  # see synthetic.add_arguments
    parser.add_argument("source", metavar="SOURCE", type=Path,
                        help="folder of source volumes (searched recursively)")
    parser.add_argument("out", metavar="OUT", type=Path,
                        help="dataset root to write (the data_path of train/predict)")
    parser.add_argument("--format", choices=FORMATS, required=True,
                        help="cc359-raw: Calgary-Campinas raw k-space (.h5 or .npy, "
                             "slices x rows x cols x 2*coils); nifti: 3-D magnitude volumes "
                             "(.nii, .nii.gz)" + none)
    layout = parser.add_mutually_exclusive_group()
    for name in cc359.LAYOUTS:
        layout.add_argument(f"--{name}", dest="layout", action="store_const", const=name,
                            help=f"cc359-raw: the k-space is {name} (default: found from the "
                                 "data, which must agree with the file's release: 12-channel "
                                 ".h5 centred, single-channel .npy uncentred)" + none)
    parser.add_argument("--drop-end-slices", type=int, default=None, metavar="N",
                        help="cc359-raw: drop N slices at each end of every volume (default: "
                             f"{DROP_END_SLICES} for multi-channel volumes, as DIRECT's loader; "
                             "0 for single-channel ones, as the paper)" + none)
    parser.add_argument("--singlecoil", action="store_true",
                        help="cc359-raw: write an emulated single coil (first virtual coil of "
                             "a per-volume SVD coil compression) instead of multicoil files")
    parser.add_argument("--axis", choices=tuple(nifti.AXES), default="axial",
                        help="nifti: slicing direction, in RAS+ orientation")
    parser.add_argument("--size", type=int, default=256,
                        help="nifti: slices are centre-cropped or zero-padded to SIZE x SIZE")
    parser.add_argument("--phase", action="store_true",
                        help="nifti: multiply each image by a smooth random phase before the "
                             "FFT, so that k-space is not Hermitian")
    parser.add_argument("--keep-empty", action="store_true",
                        help="nifti: keep empty (background-only) slices at the volume ends")
    parser.add_argument("--split", type=float, nargs=3, default=None,
                        metavar=("TRAIN", "VAL", "TEST"),
                        help="subjects per split, as fractions or as counts summing to the "
                             "number of subjects (default: cc359-raw 25/45 10/45 10/45, i.e. "
                             "the paper's 25/10/10 of 45; nifti 0.6 0.2 0.2)" + none)
    parser.add_argument("--split-by-folder", action="store_true",
                        help="keep the split the source already has: its Train/Val/Test "
                             "folders (any case; also training, valid(ation), testing)")
    parser.add_argument("--subject-pattern", default=None, metavar="REGEX",
                        help="regular expression whose first group (or whole match) in a file "
                             "name is its subject, so that a subject's volumes share a split "
                             "(default: each file is a subject)" + none)
    parser.add_argument("--accelerations", type=int, nargs="+", default=[4, 8], metavar="A",
                        help="test-split accelerations, one drawn per volume")
    parser.add_argument("--center-fractions", type=float, nargs="+", default=None,
                        metavar="F", help="one per acceleration (default: fastMRI's 0.32/A: "
                                          "0.08 at 4x, 0.04 at 8x)" + none)
    parser.add_argument("--mask-type", choices=MASK_TYPES, default="random",
                        help="fastmri mask function of the test split")
    parser.add_argument("--acquisition", default="AXT1", choices=ACQUISITIONS,
                        help="the files' 'acquisition' attribute, one of fastMRI's (evaluate "
                             "--acquisition filters on it)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the subject split, the test masks and the phases")
    parser.add_argument("--skip-bad-files", action="store_true",
                        help="leave unreadable or invalid sources out (listed in the summary) "
                             "instead of stopping")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty OUT, replacing only the split folders "
                             "this run writes")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")


def run(args: argparse.Namespace) -> int:
    summary = convert(args)
    if not args.quiet:
        print(summary)
    return 0
