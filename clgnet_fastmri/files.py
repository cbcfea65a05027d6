"""Writing outputs so that no file under a final name is ever incomplete, wrong or lost.

Every output is written under a hidden temporary name in its final folder, flushed to disk
with errors checked, verified where that is cheap, and only then renamed into place. A full
disk (or any other failed write) ends with a ``UserError`` naming the path, and leaves no
new file under a final name.

One file: ``atomic_output`` is the writer every other one is built on: ``write_bytes``,
``write_json``, ``write_png``, ``h5_output`` (built in memory) and ``h5_disk_output`` (written
by libhdf5), ``write_volume`` (a reconstruction); checkpoints (``AtomicCheckpointIO``) use it
directly. Folders: ``staged_swap`` writes new entries of a folder beside the old ones and
swaps them in (``recover_swaps`` finishes or undoes a killed swap); ``staged_dataset_root``
is it for the split folders of a dataset root. Before any work: ``ensure_writable_dir``,
``check_output_file``, ``check_output_root``, ``refuse_overlap``.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Sequence, Tuple, Union

import h5py
import numpy as np

from .errors import UserError

PathLike = Union[str, os.PathLike]

# A failed write whose exception carries no errno (torch.save's C++ writer raises a
# RuntimeError) is put down to a full disk when less than this is left on it.
_NEARLY_FULL = 1 << 20


def ensure_writable_dir(path: PathLike) -> Path:
    """Create ``path`` (and parents) if needed and check that files can be written in it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if _no_space(exc, path.parent):
            raise _no_space_error(path) from None
        raise UserError(
            f"{path}: cannot create the output folder ({exc.strerror}); "
            "choose a folder you can write to"
        ) from None
    if not path.is_dir():
        raise UserError(f"{path}: exists and is not a folder; choose another output path")
    if not writable(path):
        raise UserError(
            f"{path}: the output folder is not writable; choose a folder you can write to"
        )
    return path


def check_output_file(path: PathLike, option: str) -> Path:
    """Refuse, before any work, an output file named ``option`` that is a folder or lies in
    a folder that is missing or not writable."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder; {option} names the file to write")
    if not path.parent.is_dir():
        raise UserError(f"{path}: the folder {path.parent} does not exist; create it or choose "
                        f"another {option}")
    if not writable(path.parent):
        raise UserError(f"{path}: cannot write in {path.parent}; choose another {option}")
    return path


def writable(folder: PathLike) -> bool:
    """Whether a file can be created in the existing ``folder``: tried, by creating and
    removing an empty temporary file. ``os.access`` cannot tell: it reads permission bits,
    which root passes everywhere, and knows nothing of read-only mounts, /proc or FUSE
    folders that refuse what the bits allow."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".write-test.", suffix=".partial", dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(tmp)
    return True


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(
    path: PathLike,
    verify: Optional[Callable[[Path], None]] = None,
    shown: Optional[PathLike] = None,
) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success.

    The temporary file lives in the same folder (so the final ``os.replace`` is atomic on
    POSIX file systems, which a move from the system temp folder is not when it crosses file
    systems) and starts with ``.`` and ends with ``.partial`` so that folder scans never pick
    it up. After the caller has written it: ``fsync`` (its errors are raised, not ignored),
    ``verify(tmp)`` if given (raise to refuse the file), rename, ``fsync`` of the folder. On
    any exception, including ``KeyboardInterrupt``, the temporary file is removed; a full
    disk becomes a ``UserError`` naming ``shown`` (default ``path``). A process killed with
    SIGKILL can leave a ``.*.partial`` file, never a file under the final name.
    """
    path = Path(path)
    shown = Path(shown or path)
    with _creating_in(path.parent, shown, "choose a folder you can write to"):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates the file private (0600); give the result the usual permissions.
        os.chmod(tmp_path, 0o666 & ~_current_umask())
        _fsync(tmp_path)
        if verify is not None:
            verify(tmp_path)
        os.replace(tmp_path, path)
        _fsync(path.parent)
    except BaseException as exc:
        # Before the temporary file is removed: it may be what filled the disk.
        full = _no_space(exc, path.parent)
        tmp_path.unlink(missing_ok=True)
        if full:
            raise _no_space_error(shown) from None
        raise


def _no_space(exc: BaseException, folder: Path) -> bool:
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(exc, (OSError, RuntimeError)):
        try:
            return shutil.disk_usage(folder).free < _NEARLY_FULL
        except OSError:
            return False
    return False


@contextlib.contextmanager
def _creating_in(folder: Path, shown: Path, fix: str,
                 named: Optional[Path] = None) -> Iterator[None]:
    """Turn an ``OSError`` of creating a temporary file or folder in ``folder`` into one line:
    "no space left" naming ``shown``, else "cannot write there" naming ``named`` (``shown``)."""
    try:
        yield
    except OSError as exc:
        if _no_space(exc, folder):
            raise _no_space_error(shown) from None
        raise UserError(f"{named or shown}: cannot write there ({exc.strerror}); {fix}") from None


def _no_space_error(path: Path) -> UserError:
    return UserError(
        f"{path}: no space left on {path.parent}; free some space there or write elsewhere"
    )


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(path: Path, data: memoryview) -> None:
    """Write ``data`` to ``path`` with plain ``os.write`` calls, so that every error (a full
    disk above all) is raised, short writes included."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        while data:
            data = data[os.write(fd, data):]
    finally:
        os.close(fd)


def write_bytes(path: PathLike, data: bytes, verify: Optional[Callable[[Path], None]] = None,
                shown: Optional[PathLike] = None) -> None:
    """Write ``data`` to ``path`` atomically; the file is read back and compared."""
    expected = zlib.crc32(data)

    def check(tmp: Path) -> None:
        if zlib.crc32(tmp.read_bytes()) != expected:
            raise _unverified(Path(shown or path), "its content")
        if verify is not None:
            verify(tmp)

    with atomic_output(path, check, shown) as tmp:
        _write_all(tmp, memoryview(data))


def write_json(path: PathLike, obj: Any) -> None:
    """Write ``obj`` as strict JSON (NaN and Infinity refused, as strict parsers do)."""
    text = json.dumps(obj, indent=2, allow_nan=False) + "\n"
    write_bytes(path, text.encode())


_PNG_START = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"


def write_png(path: PathLike, figure: Any, dpi: int) -> None:
    """Write a matplotlib ``figure`` as a PNG at ``dpi``, atomically; a file that does not
    start with the PNG signature and end with its IEND chunk (a write cut short) is refused."""
    path = Path(path)

    def check(tmp: Path) -> None:
        with open(tmp, "rb") as f:
            start = f.read(len(_PNG_START))
            f.seek(max(0, tmp.stat().st_size - len(_PNG_END)))
            end = f.read()
        if start != _PNG_START or end != _PNG_END:
            raise _unverified(path, "it is not a complete PNG")

    with atomic_output(path, check) as tmp:
        figure.savefig(tmp, format="png", dpi=dpi)


@contextlib.contextmanager
def h5_output(path: PathLike, shown: Optional[PathLike] = None) -> Iterator[h5py.File]:
    """Yield an HDF5 file built in memory; on success write it to ``path`` and verify it.

    libhdf5 does not report a failed write to the caller: h5py swallows the error when the
    file is closed (and libhdf5 can then crash the process), leaving a valid-looking file of
    zeros. So the file is built in memory, where writes cannot fail, and its bytes are
    written with ``_write_all``, which raises. Before the rename the written file is opened
    again and every dataset's shape, dtype and CRC-32 compared with what was built.
    """
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as hf:
        yield hf
    expected = _h5_digest(buffer)
    shown = Path(shown or path)
    with atomic_output(path, lambda tmp: _compare_h5(tmp, expected, shown), shown) as tmp:
        _write_all(tmp, buffer.getbuffer())


@contextlib.contextmanager
def h5_disk_output(path: PathLike, size: int,
                   shown: Optional[PathLike] = None) -> Iterator[h5py.File]:
    """``h5_output`` for a file too large to build in memory (about ``size`` bytes).

    libhdf5 writes the temporary file itself, so memory stays at what the caller holds. Its
    data writes raise on failure; what it can swallow (the metadata flushed at close) is
    caught by comparing every dataset as the open file holds it with the file re-opened from
    disk. A disk without ``size`` bytes free is refused before writing (libhdf5 can crash on
    a full one).
    """
    shown = Path(shown or path)
    if shutil.disk_usage(Path(path).parent).free < size + _NEARLY_FULL:
        raise _no_space_error(shown)
    expected: Dict[str, Tuple[Tuple[int, ...], str, int]] = {}
    with atomic_output(path, lambda tmp: _compare_h5(tmp, expected, shown), shown) as tmp:
        with h5py.File(tmp, "w") as hf:
            yield hf
            hf.flush()
            expected.update(_digest_of(hf))


def _compare_h5(tmp: Path, expected: Dict[str, Tuple[Tuple[int, ...], str, int]],
                shown: Path) -> None:
    try:
        with open(tmp, "rb") as f:
            found = _h5_digest(f)
    except (OSError, KeyError, ValueError, RuntimeError):
        raise _unverified(shown, "it is not readable as HDF5") from None
    if found != expected:
        raise _unverified(shown, "its datasets differ from what was written")


def _h5_digest(file: Any) -> Dict[str, Tuple[Tuple[int, ...], str, int]]:
    with h5py.File(file, "r") as hf:
        return _digest_of(hf)


# Datasets are checksummed this many bytes at a time, so that verifying a file needs no
# more memory than a slice or so of it.
_DIGEST_BLOCK = 8 << 20


def _digest_of(hf: h5py.File) -> Dict[str, Tuple[Tuple[int, ...], str, int]]:
    digest = {}

    def visit(name: str, item: Any) -> None:
        if isinstance(item, h5py.Dataset):
            digest[name] = (item.shape, item.dtype.str, _crc(item))

    hf.visititems(visit)
    digest["/attrs"] = ((), "", zlib.crc32(repr(sorted(hf.attrs.items())).encode()))
    return digest


def _crc(item: h5py.Dataset) -> int:
    """CRC-32 of a dataset's C-order bytes, read in blocks along its first axis."""
    if item.ndim == 0 or item.nbytes <= _DIGEST_BLOCK:
        return zlib.crc32(np.ascontiguousarray(item[()]).tobytes())
    step = max(1, _DIGEST_BLOCK * item.shape[0] // item.nbytes)
    crc = 0
    for start in range(0, item.shape[0], step):
        crc = zlib.crc32(np.ascontiguousarray(item[start:start + step]).tobytes(), crc)
    return crc


def _unverified(path: Path, what: str) -> UserError:
    return UserError(
        f"{path}: the file written does not read back as written ({what}); "
        "check the disk and write again"
    )


def write_volume(path: PathLike, volume: np.ndarray, shown: Optional[PathLike] = None) -> None:
    """One reconstruction file of a submission: dataset ``reconstruction`` (slices, H, W)."""
    with h5_output(path, shown) as hf:
        hf.create_dataset("reconstruction", data=volume)


def save_reconstructions(reconstructions: Mapping[str, np.ndarray], out_dir: PathLike) -> None:
    """``fastmri.save_reconstructions`` (same arguments and files), written by ``write_volume``."""
    out_dir = ensure_writable_dir(out_dir)
    for fname, recons in reconstructions.items():
        write_volume(out_dir / fname, recons)


def remove_partials(folder: PathLike, name: str = "*") -> None:
    """Delete the temporary files and folders left in ``folder`` for outputs called ``name``
    (a glob) when a process writing them was killed: SIGKILL gives it no chance to clean up."""
    folder = Path(folder)
    if folder.is_dir():
        for stale in folder.glob(f".{name}.*.partial"):
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


# What a staging folder of ``staged_swap`` holds besides the new entries: the list of names
# to swap in (written last: its presence means the new output is complete), and the old
# entries moved aside during the swap.
_JOURNAL = ".swap.json"
_ASIDE = ".replaced"


@contextlib.contextmanager
def staged_swap(parent: PathLike, names: Sequence[str], prefix: str,
                shown: PathLike) -> Iterator[Path]:
    """Yield an empty hidden folder ``<parent>/<prefix>*.partial`` in which the caller writes
    the new entries ``names``; on success they replace the entries of those names in
    ``parent`` (a name not written is left as it is).

    The swap survives a kill at any step. Once the new entries are written, their names go
    into a journal in the staging folder (an atomic rename: the commit). Then, name by name,
    the old entry moves into the staging folder and the new one into its place; then the
    staging folder goes. ``recover_swaps``, run by the next command before anything else,
    finishes a swap whose journal exists and deletes a staging folder without one, so the
    result is always the complete old output or the complete new one. An error or Ctrl-C
    before the commit removes the staging folder and leaves ``parent`` as it was.
    """
    parent = Path(parent)
    with _creating_in(parent, Path(shown), "choose another output", named=parent):
        staging = Path(tempfile.mkdtemp(prefix=prefix, suffix=".partial", dir=parent))
    try:
        yield staging
        written = [name for name in names if os.path.lexists(staging / name)]
        write_json(staging / _JOURNAL, written)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    # No handler from here on: whatever stops this is repaired by recover_swaps.
    _finish_swap(staging, parent)


def _finish_swap(staging: Path, parent: Path) -> None:
    """Move each journalled entry of ``staging`` into ``parent``, the old one aside first;
    every step can be repeated after a kill (an entry already moved is skipped)."""
    journal = staging / _JOURNAL
    names = json.loads(journal.read_text())
    if not isinstance(names, list) or not all(
            isinstance(n, str) and n == Path(n).name and not n.startswith(".") for n in names):
        raise UserError(f"{journal}: not a swap journal written by clgnet-fastmri; move "
                        f"{staging} away")
    aside = staging / _ASIDE
    aside.mkdir(exist_ok=True)
    for name in names:
        new, final = staging / name, parent / name
        if not os.path.lexists(new):
            continue  # placed before the kill
        if os.path.lexists(final):
            os.rename(final, aside / name)
        os.rename(new, final)
    _fsync(parent)
    shutil.rmtree(aside)
    journal.unlink()
    shutil.rmtree(staging)


def recover_swaps(parent: PathLike, prefix: str) -> None:
    """Finish or undo the ``staged_swap``s with ``prefix`` that a killed process left in
    ``parent``: with a journal the new output was complete and the swap is finished, without
    one nothing was moved yet and the staging folder is deleted."""
    parent = Path(parent)
    if not parent.is_dir():
        return
    for staging in sorted(parent.glob(f"{prefix}*.partial")):
        if not staging.is_dir() or staging.is_symlink():
            continue
        if (staging / _JOURNAL).is_file():
            _finish_swap(staging, parent)
        else:
            shutil.rmtree(staging, ignore_errors=True)


def refuse_overlap(
    outputs: Mapping[str, Optional[PathLike]], inputs: Mapping[str, Optional[PathLike]]
) -> None:
    """Raise a ``UserError`` if an output path is, lies inside, or contains an input path.

    Keys are the option names shown to the user (``--output``); paths are compared after
    resolving symbolic links, so a link to the input folder counts as the input folder.
    """
    for out_option, out_path in outputs.items():
        if out_path is None:
            continue
        out = Path(out_path).resolve()
        for in_option, in_path in inputs.items():
            if in_path is None:
                continue
            source = Path(in_path).resolve()
            if out == source:
                relation = "is"
            elif source in out.parents:
                relation = "is inside"
            elif out in source.parents:
                relation = "contains"
            else:
                continue
            raise UserError(
                f"{out_path}: {out_option} {relation} the input {in_option} {in_path}, "
                "which writing it would overwrite or mix with output; choose a path outside it"
            )


def check_output_root(out: Path, names: Sequence[str], overwrite: bool,
                      staging_prefix: str) -> None:
    """``out`` is a folder or absent; not empty (staging folders aside) only with
    ``overwrite``; each of ``names`` in it is a folder or absent. For commands that write
    whole split folders into a dataset root (``make-data``, ``convert``)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder; choose another output path")
    if out.is_dir():
        present = [p for p in out.iterdir() if not p.name.startswith(staging_prefix)]
        if present and not overwrite:
            raise UserError(f"{out}: the folder is not empty; pass --overwrite to replace its "
                            f"{', '.join(names)} folders (nothing else is touched)")
        for name in names:
            p = out / name
            if p.is_symlink() or (p.exists() and not p.is_dir()):
                raise UserError(f"{p}: exists and is not a folder; move it away first")


@contextlib.contextmanager
def staged_dataset_root(out: Path, names: Sequence[str], overwrite: bool,
                        staging_prefix: str) -> Iterator[Tuple[Path, Path]]:
    """Write split folders ``names`` into the dataset root ``out`` all at once.

    First finishes or undoes a swap that a killed run left in ``out`` (``recover_swaps``),
    then checks ``out`` (``check_output_root``), creates it if needed, and yields
    ``(out, staging)``: the caller writes each of ``names`` inside ``staging`` (a hidden
    folder in ``out``). On success the folders replace those of ``out`` (``staged_swap``:
    a kill at any step leaves the old or the new folders); on any error, Ctrl-C included,
    the staging folder goes and a root created here is removed again.
    """
    recover_swaps(out, staging_prefix)
    check_output_root(out, names, overwrite, staging_prefix)
    created = not out.exists()
    out = ensure_writable_dir(out)
    try:
        with staged_swap(out, names, staging_prefix, out) as staging:
            for name in names:
                (staging / name).mkdir()
            yield out, staging
    except BaseException:
        if created:
            try:
                out.rmdir()  # only if still empty
            except OSError:
                pass
        raise
