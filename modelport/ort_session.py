"""ONNX Runtime sessions and tools, kept quiet: the one place an `InferenceSession` is made.

The ONNX Runtime backend's runner and builds, the shared QDQ pass, the exporter's numerical check, the tests and
the benchmarks all open sessions here, so that every one logs errors only (ORT's warnings would reach
modelport's console), pins its threads the same way and names optimization levels the same way. Below the
backends and the harness; onnxruntime is imported only when a session is made, never torch.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from modelport.quiet import loggers_at_error

_ERRORS_ONLY = 3  # ORT's log severity: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal


def ort_session(model: Path | str | bytes, *, threads: int | None = None, level: str = "all",
                providers: Sequence[str] | None = None, optimized_path: Path | None = None) -> Any:
    """An InferenceSession on `model` (a path or serialized bytes) that logs errors only.

    `threads` pins intra-op threads (and one inter-op thread), as a measurement must; `providers` defaults to
    the CPU; `optimized_path` makes ORT save the graph it optimized at `level` there (an offline optimization).
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = _level(level)
    so.log_severity_level = _ERRORS_ONLY
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    if optimized_path is not None:
        so.optimized_model_filepath = str(optimized_path)
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, so, providers=list(providers or ["CPUExecutionProvider"]))


def _level(name: str) -> Any:
    import onnxruntime as ort

    levels = ort.GraphOptimizationLevel
    return {"none": levels.ORT_DISABLE_ALL, "basic": levels.ORT_ENABLE_BASIC,
            "extended": levels.ORT_ENABLE_EXTENDED, "all": levels.ORT_ENABLE_ALL}[name]


@contextlib.contextmanager
def quiet_ort_tools() -> Iterator[None]:
    """ORT's Python tools (quantizer, transformer fusions) print progress and log warnings (root logger and their
    own); keep them to ourselves: the build's summary says what matters."""
    with loggers_at_error("", "onnxruntime", "onnxruntime.transformers"), contextlib.redirect_stdout(io.StringIO()):
        yield
