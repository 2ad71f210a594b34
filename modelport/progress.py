"""modelport's own progress, reported from any layer without knowing who shows it.

A long step (an export, a calibration pass, a quantization) says where it is with `stage(name)` and
`count(done, total)`; whoever runs it (the CLI's rich display, a bench worker's progress lines, a test)
installs a `Reporter` with `reporting(...)`. Without one, both calls cost a context-variable lookup. This
module imports no UI library, so the layers below the CLI stay free of rich.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Protocol


class Reporter(Protocol):
    """Receives a step's progress: stages begin and end (nested), counts apply to the innermost stage."""

    def begin(self, name: str) -> None: ...

    def end(self, name: str) -> None: ...

    def count(self, done: int, total: int | None) -> None: ...


_current: ContextVar[Reporter | None] = ContextVar("modelport_progress", default=None)


@contextlib.contextmanager
def reporting(reporter: Reporter) -> Iterator[Reporter]:
    """Send the progress of the steps run inside to `reporter`."""
    token = _current.set(reporter)
    try:
        yield reporter
    finally:
        _current.reset(token)


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Mark the steps inside as the stage `name` (export, calibrate, quantize...), timed by the reporter."""
    reporter = _current.get()
    if reporter is None:
        yield
        return
    reporter.begin(name)
    try:
        yield
    finally:
        reporter.end(name)


def count(done: int, total: int | None) -> None:
    """How far the innermost stage is: `done` of `total` items (samples, layers); total None if unknown."""
    reporter = _current.get()
    if reporter is not None:
        reporter.count(done, total)
