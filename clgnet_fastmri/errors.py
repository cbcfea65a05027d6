"""Errors a user can fix by changing their input, printed by the CLI as one line."""

from __future__ import annotations

from os import PathLike
from typing import Optional, Union


class UserError(Exception):
    """A problem with the user's input or environment, with the fix in its message.

    The command-line entry point prints these as a single ``error: ...`` line without a
    traceback; anything else is a bug and keeps its traceback.
    """


class DataError(UserError):
    """A data file (or folder) that cannot be used, naming the file, the problem and the fix.

    ``DataError(text)`` with one argument is the form a DataLoader worker's error takes when
    PyTorch re-raises it in the main process (``type(exc)(text with the worker's
    traceback)``); accepting it keeps the error a DataError there (see ``user_message``).
    """

    def __init__(
        self,
        path: Union[str, PathLike],
        problem: Optional[str] = None,
        fix: Optional[str] = None,
    ):
        self.path = str(path)
        self.problem = problem
        self.fix = fix
        message = self.path if problem is None else f"{self.path}: {problem}"
        if fix:
            message += f" ({fix})"
        super().__init__(message)


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message``, to quote a library's error inside a message.

    Only the first line: the rest of a long message (torch.load's advice on
    ``weights_only``, a traceback a library appended) would bury the message it is quoted in.
    """
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {' '.join(lines[0].split())}" if lines else type(exc).__name__


def user_message(exc: UserError) -> str:
    """The error's message on one line, also when a DataLoader worker re-raised it."""
    text = str(exc).strip()
    if "Original Traceback" in text:
        # "... Original Traceback ...\n<module>.DataError: <the original message>"
        last = text.splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return text
