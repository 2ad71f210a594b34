"""Load any artifact into a Runner: the load path a deployment box runs, so it imports numpy, the runtime
and modelport's light modules only (the manifest, the backend table, the runner), never torch or onnx.
Building is `builder.py`.
"""

from __future__ import annotations

from pathlib import Path

from modelport.artifact import Artifact, check_intact
from modelport.backends import BACKENDS, Runner, get_backend
from modelport.errors import BadInput


def load_artifact(path: str | Path, threads: int | None = None) -> Runner:
    """A Runner for any backend's artifact directory; the manifest says which backend."""
    artifact = check_intact(Artifact.open(path))
    if artifact.backend not in BACKENDS:
        raise BadInput(f"{str(path)!r} was built by unknown backend {artifact.backend!r}.")
    backend = get_backend(artifact.backend)
    backend.require(to_run=True)
    return backend.load(artifact, threads=threads)
