"""Checks of fastMRI HDF5 files that turn a bad file into a message naming the file and the fix.

fastmri itself fails deep inside h5py or ElementTree ("Element not found", "Unable to open
file") without naming the file; these checks run first, so every entry point (training,
predict, evaluate) reports problems the same way.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import xml.etree.ElementTree as etree
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import h5py
import numpy as np
from fastmri.data.mri_data import et_query

from ..errors import DataError
from .fastmri_layout import CHALLENGES, TARGET_KEYS

# The header fields fastmri.data.SliceDataset reads, as et_query paths.
HEADER_FIELDS = [
    ["encoding", "encodedSpace", "matrixSize", axis] for axis in ("x", "y", "z")
] + [
    ["encoding", "reconSpace", "matrixSize", axis] for axis in ("x", "y", "z")
] + [
    ["encoding", "encodingLimits", "kspace_encoding_step_1", field]
    for field in ("center", "maximum")
]

_NOT_FASTMRI = "fastMRI raw-data files hold 'kspace', 'ismrmrd_header' and a target"
_BAD_ENTRY_FIX = (
    "remove or repair it, or move it out of the folder (or train with --skip_bad_files)"
)


def check_challenge(challenge: str) -> str:
    if challenge not in CHALLENGES:
        raise ValueError(f"challenge must be one of {CHALLENGES}, not {challenge!r}")
    return challenge


@contextlib.contextmanager
def open_h5(path: Union[str, os.PathLike]) -> Iterator[h5py.File]:
    """Open an HDF5 file for reading, turning "missing" and "not HDF5" into a DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found", "check the path")
    try:
        hf = h5py.File(path, "r")
    except OSError:
        raise DataError(
            path,
            "not a readable HDF5 file (truncated, corrupt, or another format)",
            "re-download or regenerate it, or move it out of the folder",
        ) from None
    with hf:
        yield hf


def require_dataset(
    hf: h5py.File, key: str, path: Path, ndims: Sequence[int], what: str
) -> h5py.Dataset:
    """Return ``hf[key]`` after checking that it exists and has one of ``ndims`` dimensions."""
    if key not in hf or not isinstance(hf[key], h5py.Dataset):
        raise DataError(path, f"has no '{key}' dataset", what)
    data = hf[key]
    if data.ndim not in ndims:
        expected = " or ".join(str(n) for n in ndims)
        raise DataError(path, f"'{key}' has {data.ndim} dimensions, expected {expected}", what)
    return data


def check_volume(
    path: Union[str, os.PathLike], challenge: str, need_target: bool = False
) -> int:
    """Check that ``path`` is a fastMRI raw-data file fastmri can load; return its slice count.

    Checks what ``fastmri.data.SliceDataset`` and its transforms rely on: a complex ``kspace``
    of rank 3 (singlecoil: slices, rows, cols) or 4 (multicoil: slices, coils, rows, cols), an
    ``ismrmrd_header`` with the encoding fields fastmri reads, a target of matching slice
    count (required when ``need_target``), and a ``mask`` matching the k-space columns.
    The k-space values themselves are checked when a slice is read (``check_finite``), since
    reading every volume up front would cost a pass over the whole dataset.
    """
    path = Path(path)
    check_challenge(challenge)
    rank = 3 if challenge == "singlecoil" else 4
    with open_h5(path) as hf:
        kspace = require_dataset(hf, "kspace", path, (rank,), _kspace_hint(hf, challenge))
        if not np.issubdtype(kspace.dtype, np.complexfloating):
            raise DataError(
                path,
                f"'kspace' has dtype {kspace.dtype}, expected complex64",
                "fastMRI k-space is stored as complex numbers",
            )
        num_slices, (rows, cols) = kspace.shape[0], kspace.shape[-2:]
        if num_slices == 0 or min(rows, cols) < 2:
            raise DataError(path, f"'kspace' has an empty shape {kspace.shape}")
        _check_sizes(_check_header(hf, path), rows, path)
        target_key = TARGET_KEYS[challenge]
        if target_key in hf:
            target = require_dataset(
                hf, target_key, path, (3,), "targets are (slices, height, width) images"
            )
            if target.shape[0] != num_slices:
                raise DataError(
                    path,
                    f"'{target_key}' has {target.shape[0]} slices but 'kspace' has {num_slices}",
                    "the file is inconsistent; re-download or regenerate it",
                )
            _check_target_size(target.shape[1:], rows, cols, target_key, path)
        elif need_target:
            raise DataError(
                path,
                f"has no target '{target_key}'",
                "training and validation need fully sampled files with targets; "
                "test/challenge files belong in the test split",
            )
        if "mask" in hf:
            mask = hf["mask"]
            if not isinstance(mask, h5py.Dataset) or mask.shape != (cols,):
                raise DataError(
                    path,
                    f"'mask' has shape {getattr(mask, 'shape', None)}, expected ({cols},)",
                    "the mask must have one entry per k-space column",
                )
    return num_slices


def _kspace_hint(hf: h5py.File, challenge: str) -> str:
    if "kspace" not in hf:
        return _NOT_FASTMRI
    other = "multicoil" if challenge == "singlecoil" else "singlecoil"
    return (
        f"{challenge} k-space is "
        + ("(slices, rows, cols)" if challenge == "singlecoil" else "(slices, coils, rows, cols)")
        + f"; if this is {other} data, use --challenge {other}"
    )


def _check_header(hf: h5py.File, path: Path) -> Dict[str, int]:
    if "ismrmrd_header" not in hf:
        raise DataError(path, "has no 'ismrmrd_header' dataset", _NOT_FASTMRI)
    raw = hf["ismrmrd_header"][()]
    try:
        root = etree.fromstring(raw)
    except (etree.ParseError, TypeError, ValueError):
        raise DataError(
            path, "'ismrmrd_header' is not valid XML", "re-download or regenerate the file"
        ) from None
    values = {}
    for field in HEADER_FIELDS:
        name = "/".join(field)
        try:
            values[name] = int(et_query(root, field))
        except RuntimeError:
            raise DataError(
                path,
                f"'ismrmrd_header' lacks {name}",
                "fastmri needs the ISMRMRD encoding fields (and the ISMRMRD xmlns on the root)",
            ) from None
        except ValueError:
            raise DataError(path, f"'ismrmrd_header' field {name} is not an integer") from None
    return values


def _check_sizes(header: Dict[str, int], rows: int, path: Path) -> None:
    """Matrix sizes must be positive, and the reconSpace height must fit in the image.

    fastmri's transforms crop the zero-filled image (k-space rows x cols) to the reconSpace
    size (x, y) when a file has no target. A width larger than the k-space is allowed: they
    then crop to a cols x cols square (fastMRI's brain FLAIR volumes need that); a height
    larger than the rows has no such rule and fails deep in fastmri ("Invalid shapes").
    """
    for name, value in header.items():
        if "matrixSize" in name and value < 1:
            raise DataError(
                path,
                f"'ismrmrd_header' field {name} is {value}; matrix sizes must be positive",
                "repair the header or regenerate the file",
            )
    height = header["encoding/reconSpace/matrixSize/x"]
    if height > rows:
        raise DataError(
            path,
            f"'ismrmrd_header' reconSpace matrixSize x is {height}, larger than the {rows} "
            "rows of the image the k-space gives",
            "repair the header or regenerate the file",
        )


def _check_target_size(size: Sequence[int], rows: int, cols: int, key: str, path: Path) -> None:
    """The target must be a crop of the image the k-space gives (see ``_check_sizes``)."""
    height, width = size
    problem = None
    if min(height, width) < 1:
        problem = "is empty"
    elif height > rows:
        problem = "is taller than"
    elif width > cols > height:
        problem = "cannot be cropped to the width of"
    if problem:
        raise DataError(
            path,
            f"'{key}' ({height}x{width}) {problem} the {rows}x{cols} image the k-space gives",
            "the target must be a centre crop of that image; regenerate the file",
        )


def check_finite(array: np.ndarray, path: Union[str, os.PathLike], what: str) -> None:
    """Raise a DataError naming the file if ``array`` holds NaN or Inf."""
    if not np.isfinite(array).all():
        raise DataError(
            path,
            f"{what} contains NaN or Inf values",
            "repair or remove the file (or train with --skip_bad_files)",
        )


def scan_folder(
    folder: Union[str, os.PathLike], what: str = "data"
) -> Tuple[List[Path], Dict[Path, DataError]]:
    """The visible files of ``folder``, sorted, and the entries that cannot be read as files.

    Hidden entries (``.DS_Store``, the ``.*.partial`` files of an interrupted write) and
    subfolders are left out, except a folder named like a volume (``x.h5``): a bad entry.
    A dangling symbolic link, a link loop, an entry that cannot be read, or a FIFO, socket
    or device (which h5py would block on) is returned as a bad entry with its reason, never
    silently dropped; every other file is returned, so that a stray non-HDF5 file is
    reported by the per-file check.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, f"{what} folder not found", "check the path")
    files, bad = [], {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        problem = entry_problem(entry)
        if problem == "folder" and entry.suffix != ".h5":
            continue
        if problem == "folder":  # named like a volume: refused, never silently dropped
            problem = "a folder, not an HDF5 file"
        if problem:
            bad[entry] = DataError(entry, problem, _BAD_ENTRY_FIX)
        else:
            files.append(entry)
    return files, bad


def entry_problem(entry: Path) -> Optional[str]:
    """Why ``entry`` cannot be read as a file: None for a readable regular file, ``"folder"``
    for a folder (links followed), else the reason."""
    try:
        mode = entry.stat().st_mode
    except FileNotFoundError:
        if entry.is_symlink():
            return f"dangling symbolic link (its target {os.readlink(entry)} does not exist)"
        return "vanished while the folder was read"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop (the link leads back to itself)"
        return f"cannot be read ({exc.strerror})"
    if stat.S_ISDIR(mode):
        return "folder"
    if not stat.S_ISREG(mode):
        return "not a regular file (a FIFO, socket or device)"
    if not os.access(entry, os.R_OK):
        return "not readable (permission denied)"
    return None


def list_volumes(folder: Union[str, os.PathLike], what: str = "data") -> List[Path]:
    """``scan_folder``'s files; a DataError for its first bad entry, or when there is none."""
    files, bad = scan_folder(folder, what)
    if bad:
        raise next(iter(bad.values()))
    if not files:
        raise DataError(folder, f"{what} folder holds no files", "check the path")
    return files


def submission_name(name: str, v2_names: bool) -> str:
    """``file1000.h5`` -> ``file1000_v2.h5`` for the public knee leaderboard (fastmri's rule)."""
    if v2_names and not name.endswith("_v2.h5"):
        return name[: -len(".h5")] + "_v2.h5" if name.endswith(".h5") else name + "_v2"
    return name


def target_folder(
    data_path: Union[str, os.PathLike], challenge: str, explicit: Optional[os.PathLike] = None
) -> Optional[Path]:
    """Where the targets of the volumes in ``data_path`` are, if anywhere.

    ``explicit`` if given (it must hold targets); else ``data_path`` itself (fully sampled
    data such as a val split) or the ``<data_path>_gt`` copy beside it (the synthetic test
    split's ground truth); else None (a real test or challenge split).
    """
    key = TARGET_KEYS[check_challenge(challenge)]
    if explicit is not None:
        first = list_volumes(explicit, "target")[0]
        with open_h5(first) as hf:
            require_dataset(hf, key, first, (3,), f"{challenge} targets hold '{key}'")
        return Path(explicit)
    data_path = Path(data_path)
    for folder in (data_path, data_path.with_name(data_path.name + "_gt")):
        if not folder.is_dir() or not any(folder.glob("*.h5")):
            continue
        # Every entry checked: the caller reads these targets after writing its output.
        first = next((p for p in list_volumes(folder, "target") if p.suffix == ".h5"), None)
        if first is not None:
            with open_h5(first) as hf:
                if key in hf:
                    return folder
    return None
