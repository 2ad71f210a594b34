"""Keeping other packages' output off modelport's console.

`routed` is the CLI's: for the whole command, whatever other packages print, warn or log (Python warnings,
logging, prints, C++ logs on fds 1 and 2) goes to a log file that the command keeps beside what it wrote
(`keep_log`), or to stderr under --verbose; modelport's own output keeps the terminal. `quiet_native` is a
step's: it captures one step's native output (the LiteRT converter and quantizer, XNNPACK announcing
itself at load) for the error message when the step fails, and hands it on to the command's log.
`loggers_at_error` is what the exporters and ORT's Python tools (`ort_session.quiet_ort_tools`) keep quiet with.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO


@contextlib.contextmanager
def loggers_at_error(*names: str) -> Iterator[None]:
    """Python loggers (by name; "" is the root) show errors only while inside, then their levels come back."""
    loggers = [logging.getLogger(n or None) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@dataclass
class NativeLog:
    text: str = ""


@contextlib.contextmanager
def quiet_native() -> Iterator[NativeLog]:
    """Silence litert-torch's progress, Python warnings and the C++ logs on fd 2; keep them for errors."""
    log = NativeLog()
    previous = os.environ.get("LITERT_TORCH_SHOW_PROGRESS")
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"
    with tempfile.TemporaryFile() as sink, warnings.catch_warnings(), \
            contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield log
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if previous is None:
                os.environ.pop("LITERT_TORCH_SHOW_PROGRESS", None)
            else:
                os.environ["LITERT_TORCH_SHOW_PROGRESS"] = previous
            sink.seek(0)
            log.text = sink.read().decode(errors="replace")
            if _route is not None and log.text:
                _route.sink.write(log.text)


@dataclass
class Route:
    """Where output goes while one command runs: modelport's own to `stdout`/`stderr` (the terminal), other
    packages' to the log file `log` (or to `stderr` under --verbose, when `log` is None)."""

    stdout: TextIO
    stderr: TextIO
    sink: TextIO
    log: Path | None
    title: str
    destination: Path | None = None
    failed: bool = False

    def said_anything(self) -> bool:
        """Whether other packages wrote anything to the log."""
        self.sink.flush()
        return self.log is not None and self.log.stat().st_size > 0

    def kept_at(self) -> Path | None:
        """Where the log ends up: its destination, else (on failure) the temporary file; None under --verbose."""
        if self.log is None:
            return None
        return self.destination if self.destination is not None and self.destination.parent.is_dir() else self.log


_route: Route | None = None


def current_route() -> Route | None:
    """The route of the command running now (None outside the CLI: a library call prints as it always did)."""
    return _route


def keep_log(path: Path) -> None:
    """Append the running command's log of other packages' output to `path` when it ends (a build's artifact,
    a bench's run directory). Without a route (a library call) there is nothing to keep."""
    if _route is not None:
        _route.destination = Path(path)


def failed() -> Path | None:
    """Mark the running command failed, so its log is kept even without a destination; where it is (None when
    no log holds anything)."""
    if _route is None or not _route.said_anything():
        return None
    _route.failed = True
    return _route.kept_at()


@contextlib.contextmanager
def routed(title: str, verbose: bool = False) -> Iterator[Route]:
    """Send other packages' output (Python warnings, logging, prints, native writes to fds 1 and 2) to a log
    file for the whole command, or under `verbose` to stderr, keeping stdout for modelport's results."""
    global _route
    old_out, old_err = sys.stdout, sys.stderr
    for stream in (old_out, old_err):
        with contextlib.suppress(Exception):
            stream.flush()
    own_out, own_err = _own(old_out, 1), _own(old_err, 2)
    log: Path | None = None
    if verbose:
        sink = own_err
    else:
        handle, name = tempfile.mkstemp(prefix="modelport-", suffix=".log.txt")
        os.close(handle)
        log = Path(name)
        sink = open(log, "a", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115 - closed below
    saved = _point_fds(sink)
    handlers = _point_handlers({id(old_out), id(old_err), id(sys.__stdout__), id(sys.__stderr__)}, sink)
    sys.stdout = sys.stderr = sink
    _route = Route(own_out, own_err, sink, log, title)
    route = _route
    try:
        yield route
    finally:
        _route = None
        for stream in (sink, own_out, own_err):
            with contextlib.suppress(Exception):
                stream.flush()
        sys.stdout, sys.stderr = old_out, old_err
        _restore_handlers(handlers, sink, old_err)
        _restore_fds(saved)
        for stream in {own_out, own_err, sink} - {old_out, old_err}:
            stream.close()
        if log is not None:
            _settle(route, log)


def _own(stream: TextIO, fd: int) -> TextIO:
    """modelport's own stream: a copy of fd `fd` where `stream` writes to it (so that pointing the fd at the log
    leaves it on the terminal), else the stream itself (a test's captured stream)."""
    try:
        if stream.fileno() != fd:
            return stream
    except (AttributeError, OSError, ValueError):
        return stream
    return os.fdopen(os.dup(fd), "w", buffering=1, encoding=getattr(stream, "encoding", None) or "utf-8",
                     errors="replace")


def _point_fds(sink: TextIO) -> list[tuple[int, int]]:
    """Point fds 1 and 2 at the sink (native code's output); returns the saved copies to restore."""
    try:
        target = sink.fileno()
    except (AttributeError, OSError, ValueError):
        return []
    saved = []
    for fd in (1, 2):
        if fd == target:
            continue
        try:
            saved.append((fd, os.dup(fd)))
        except OSError:
            continue
        os.dup2(target, fd)
    return saved


def _restore_fds(saved: list[tuple[int, int]]) -> None:
    for fd, copy in saved:
        os.dup2(copy, fd)
        os.close(copy)


def _point_handlers(streams: set[int], sink: TextIO) -> list[tuple[logging.StreamHandler, TextIO]]:
    """Point the logging handlers that write to the console (a library's own, made before the command) at the
    sink; returns them with their streams."""
    moved = []
    for handler in _stream_handlers():
        if id(handler.stream) in streams:
            moved.append((handler, handler.stream))
            handler.setStream(sink)
    return moved


def _restore_handlers(moved: list[tuple[logging.StreamHandler, TextIO]], sink: TextIO, stderr: TextIO) -> None:
    """Give moved handlers their streams back, and those made during the command (bound to the sink) stderr."""
    for handler, stream in moved:
        handler.setStream(stream)
    for handler in _stream_handlers():
        if handler.stream is sink:
            handler.setStream(stderr)


def _stream_handlers() -> list[logging.StreamHandler]:
    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values()
                                     if isinstance(lg, logging.Logger))]
    return [h for lg in loggers for h in lg.handlers
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]


def _settle(route: Route, log: Path) -> None:
    """Append the log to its destination; keep the temporary file only when the command failed (its error
    names it) or the destination cannot be written; else remove it."""
    if route.destination is not None:
        try:
            text = log.read_text(encoding="utf-8", errors="replace")
            with open(route.destination, "a", encoding="utf-8") as out:
                out.write(f"# {route.title} ({datetime.now(UTC).isoformat(timespec='seconds')})\n{text}")
        except OSError:
            return
    elif route.failed:
        return
    log.unlink(missing_ok=True)
