"""Real data in the fastMRI layout: ``clgnet-fastmri convert SOURCE OUT --format FORMAT``.

Formats (``FORMATS``; each is one module, where its reader and the choices it makes are
documented): ``cc359-raw`` (``cc359.py``), Calgary-Campinas raw k-space, written as
``multicoil`` files (``reconstruction_rss``) or, with ``--singlecoil`` or single-channel
sources, ``singlecoil`` files (``reconstruction_esc``); ``nifti`` (``nifti.py``), 3-D magnitude
volumes, written as ``singlecoil`` files whose target is the image.

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
``{challenge}_test_gt``. Every file (``fastmri_layout.write_raw_volume``) carries a minimal
ISMRMRD header and the attributes ``acquisition`` (one of fastMRI's, as ``evaluate
--acquisition``), ``max``, ``norm`` (of the volume's target) and ``patient_id`` (the subject).

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

import numpy as np
from tqdm import tqdm

from ..errors import DataError, UserError
from ..files import check_output_root, staged_dataset_root
from . import cc359, nifti
from .checks import entry_problem
from .fastmri_layout import (
    ACQUISITIONS,
    CHALLENGES,
    MASK_TYPES,
    SPLITS,
    MaskSpec,
    SampledMask,
    Scan,
    center_fraction,
    ismrmrd_header,
    write_raw_volume,
)
from .formats import Converted, Format, Slices, Source

#: The source formats, by ``--format`` name: a new format is a module and a line here.
FORMATS: Dict[str, Format] = {f.name: f for f in (cc359.FORMAT, nifti.FORMAT)}
_STAGING_PREFIX = ".convert-"


# ---------------------------------------------------------------------------------------------
# Sources, subjects and splits


@dataclass
class Found:
    """Every entry under SOURCE: the format's volumes, other files, unreadable entries."""

    volumes: List[Path] = field(default_factory=list)
    ignored: List[Path] = field(default_factory=list)
    bad: List[DataError] = field(default_factory=list)


_SPLIT_FOLDER = re.compile(rf"^({'|'.join(CHALLENGES)})_({'|'.join(SPLITS)})(_gt)?$")


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


def find_sources(root: Path, fmt: Format, exclude: Optional[Path] = None) -> Found:
    """Every entry under ``root`` (recursive, links followed once, hidden entries and
    ``exclude`` left out), sorted into the format's volumes, other files and bad entries."""
    found = Found()
    exclude = None if exclude is None else exclude.resolve()
    for path, problem in _walk(root, (root.resolve(),), {root.resolve()}, exclude):
        if problem:
            found.bad.append(DataError(path, problem, "make it readable, remove it, or leave "
                                                      "it out with --skip-bad-files"))
        elif fmt.suffix_of(path):
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
# Writing


def write_volume(converted: Converted, path: Path, challenge: str, acquisition: str,
                 subject: str, test: Optional[SampledMask] = None,
                 gt_path: Optional[Path] = None, source: Optional[Path] = None) -> int:
    """Write one converted volume (a test file and its ``_test_gt`` twin when ``test`` is
    given), slice by slice; return its slice count. Values that are not finite in float32
    or a volume without signal are refused, naming ``source`` (default ``path``)."""
    shape = converted.kspace_shape
    rows, cols = shape[-2:]
    # Every column counts as acquired: samples a source lacks (partial Fourier) are zeros
    # in the file, not padding.
    header = ismrmrd_header((rows, cols), (rows, cols), (0, cols), Scan(
        converted.fov_mm, shape[0], converted.coils, f"{acquisition} (clgnet-fastmri convert)"))
    target = write_raw_volume(path, challenge, header, shape,
                              _checked(converted.slices, source or path),
                              {"acquisition": acquisition, "patient_id": subject}, test,
                              gt_path)
    return len(target)


def _checked(slices: Slices, source: Path) -> Slices:
    """``slices``, raising (so that nothing is written) at a value beyond float32 or, after
    the last slice, when no slice has signal."""
    signal = False
    for k, (kspace, target) in enumerate(slices):
        if not (np.isfinite(kspace).all() and np.isfinite(target).all()):
            raise DataError(source, f"slice {k} exceeds the float32 range once converted",
                            "rescale the source volume")
        signal = signal or bool(target.any())
        yield kspace, target
    if not signal:
        raise DataError(source, "is all zero (no signal in any slice)",
                        "check the file, or leave it out with --skip-bad-files")


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
    split = tuple(args.split) if args.split else FORMATS[args.format].default_split
    if len(split) != 3 or not all(math.isfinite(s) for s in split) or min(split) < 0 \
            or sum(split) <= 0:
        raise UserError(f"--split takes three finite non-negative numbers (train val test), "
                        f"not {' '.join(map(str, split))}")
    for fmt in FORMATS.values():  # every format's options are parsed, and refused if bad
        fmt.check_options(args)
    if args.seed < 0:
        raise UserError(f"--seed must be 0 or more, not {args.seed}")
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
    fmt = FORMATS[args.format]
    found = find_sources(args.source, fmt, exclude=out)
    if found.bad and not args.skip_bad_files:
        raise found.bad[0]
    skipped.extend(str(exc) for exc in found.bad)
    if not found.volumes:
        others = f"; it has {len(found.ignored)} other files" if found.ignored else ""
        raise DataError(args.source, f"holds no {fmt.name} volumes (no "
                                     f"{' or '.join(fmt.suffixes)} files{others})",
                        "check the path and --format")
    return found


def _scan(args: argparse.Namespace, found: Found, skipped: List[str]) -> Tuple[List[Source], str]:
    """Every source, its layout checked (bad ones raise, or go to ``skipped``); the
    challenge to write."""
    fmt = FORMATS[args.format]
    sources: List[Source] = []
    names: Dict[str, Path] = {}
    for path in found.volumes:
        name = fmt.stem(path)
        try:
            if name in names:
                raise DataError(path, f"has the same name as {names[name]}",
                                "output files are named after their source; rename one")
            subject = subject_of(path, name, args.subject_pattern)
            source = fmt.check(Source(path, name, subject), args)
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
    if args.singlecoil or all(s.coils == 1 for s in sources):
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
        problem = mask_spec.problem(source.cols) if source.subject in test_subjects else None
        if problem:
            raise UserError(f"{source.path}: its {problem}; use lower --accelerations or "
                            "larger --center-fractions")
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
    fmt = FORMATS[args.format]
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
                converted = fmt.read(source, args, challenge == "singlecoil", rng)
                # Drawn after what read drew (a NIfTI phase): the volume's stream, in order.
                test = mask_spec.sample(source.cols, rng) if split == "test" else None
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
    parser.add_argument("--format", choices=tuple(FORMATS), required=True,
                        help="; ".join(f"{f.name}: {f.help}" for f in FORMATS.values())
                        + none)
    for fmt in FORMATS.values():
        fmt.add_arguments(parser)
    parser.add_argument("--singlecoil", action="store_true",
                        help="write singlecoil files: a multi-coil source as an emulated single "
                             "coil (first virtual coil of a per-volume SVD coil compression)")
    parser.add_argument("--split", type=float, nargs=3, default=None,
                        metavar=("TRAIN", "VAL", "TEST"),
                        help="subjects per split, as fractions or as counts summing to the "
                             "number of subjects (default: "
                             + "; ".join(f"{f.name} {f.split_help}" for f in FORMATS.values())
                             + ")" + none)
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
