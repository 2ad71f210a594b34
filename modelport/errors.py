"""Every failure a user can meet is a ModelportError: a message that says what, where and what to do.

The CLI prints these without a traceback and exits with `exit_code`: 2 when the user's input (or their
machine) is wrong, 1 when a step that should have worked failed.
"""

from __future__ import annotations

import errno
import os


class ModelportError(Exception):
    """Base of every user-facing failure."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n{self.hint}" if self.hint else self.message


class BadInput(ModelportError):
    """The user named something wrong: a path, a factory, a shape, an option, data that does not fit."""

    exit_code = 2


class Unavailable(ModelportError):
    """A runtime, an extra or a device the request needs is not on this machine."""

    exit_code = 2


class StepFailed(ModelportError):
    """An export, build or run that should have worked did not."""

    exit_code = 1


class ModelportWarning(UserWarning):
    """Base of modelport's own warnings: something works but deserves a look (the CLI shows one line)."""


_OS_HINTS = {
    errno.ENOSPC: "Free space on that filesystem, or choose another output path.",
    errno.EDQUOT: "Free space within your disk quota, or choose another output path.",
    errno.EROFS: "That filesystem is read-only: choose another output path.",
    errno.EACCES: "Check the permissions along that path, or choose another one.",
    errno.EPERM: "Check the permissions along that path, or choose another one.",
    errno.ENAMETOOLONG: "Choose a shorter name: a file or directory name is at most 255 bytes.",
    errno.ENOTDIR: "A part of that path is a file, not a directory: choose another path.",
    errno.EISDIR: "That path is a directory: name a file.",
    errno.EEXIST: "Something is already there: choose another path.",
    errno.ENOENT: "Check that the path exists.",
    errno.EXDEV: "Choose an output path on the same filesystem.",
}


def os_error(exc: OSError, path: str | os.PathLike | None = None, doing: str = "writing", *,
             hint: str | None = None) -> ModelportError:
    """An OSError met on the user's files as an error naming the path and the cause, never a crash.

    A cause the user can fix on their side (disk full, read-only, permissions, a bad path) is BadInput;
    anything else (an I/O error) is a failed step.
    """
    where = path if path is not None else exc.filename
    cause = exc.strerror or str(exc) or type(exc).__name__
    message = f"{cause} while {doing} {where}." if where is not None else f"{cause} while {doing} files."
    kind = BadInput if exc.errno in _OS_HINTS else StepFailed
    return kind(message, hint=hint or _OS_HINTS.get(exc.errno, "Check the filesystem and run again."))
