"""Keeping native libraries' output off modelport's console: what they print and log (C++ logs on fd 2,
Python warnings, litert-torch's progress) is captured, and kept for the error message when a step fails.
Used by builds (the LiteRT converter and quantizer) and by runners (XNNPACK announces itself at load);
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
