"""Every failure a user can meet is a ModelportError: a message that says what, where and what to do.

The CLI prints these without a traceback and exits with `exit_code`: 2 when the user's input (or their
machine) is wrong, 1 when a step that should have worked failed.
"""

from __future__ import annotations


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
