"""Writing outputs so that an interruption never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Union

from .errors import UserError


def ensure_writable_dir(path: Union[str, os.PathLike]) -> Path:
    """Create ``path`` (and parents) if needed and check that files can be written in it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"{path}: cannot create the output folder ({exc.strerror}); "
            "choose a folder you can write to"
        ) from None
    if not path.is_dir():
        raise UserError(f"{path}: exists and is not a folder; choose another output path")
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(
            f"{path}: the output folder is not writable; choose a folder you can write to"
        )
    return path


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: Union[str, os.PathLike]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success.

    The temporary file lives in the same folder (so the final ``os.replace`` is atomic on
    POSIX file systems, which a move from the system temp folder is not when it crosses file
    systems) and starts with ``.`` and ends with ``.partial`` so that folder scans never pick
    it up. Its content is flushed to disk before the rename. On any exception, including
    ``KeyboardInterrupt``, it is removed. A process killed with SIGKILL can leave a
    ``.*.partial`` file, never a file under the final name.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    except OSError as exc:
        raise UserError(
            f"{path}: cannot write there ({exc.strerror}); choose a folder you can write to"
        ) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates the file private (0600); give the result the usual permissions.
        os.chmod(tmp_path, 0o666 & ~_current_umask())
        _fsync(tmp_path)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def remove_partials(folder: Union[str, os.PathLike], name: str = "*") -> None:
    """Delete the temporary files that ``atomic_output`` left in ``folder`` for outputs called
    ``name`` (a glob) when a process writing them was killed: SIGKILL gives it no chance to
    clean up."""
    folder = Path(folder)
    if folder.is_dir():
        for stale in folder.glob(f".{name}.*.partial"):
            stale.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
