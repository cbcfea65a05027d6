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
    """A data file (or folder) that cannot be used, naming the file, the problem and the fix."""

    def __init__(
        self,
        path: Union[str, PathLike],
        problem: str,
        fix: Optional[str] = None,
    ):
        self.path = str(path)
        self.problem = problem
        self.fix = fix
        message = f"{self.path}: {problem}"
        if fix:
            message += f" ({fix})"
        super().__init__(message)
