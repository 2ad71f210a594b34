"""An Artifact is a directory: the runtime's files plus manifest.json saying what was built, from what, how.

Builds land atomically: files are written to a sibling temporary directory and swapped in only when
the build and its manifest are complete, so a failed build never leaves half an artifact where a good
one was.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelport.errors import BadInput
from modelport.model import TensorSpec

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


@dataclass
class Artifact:
    path: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, path: str | Path) -> Artifact:
        path = Path(path)
        file = path / MANIFEST
        if not file.is_file():
            raise BadInput(f"{str(path)!r} is not a modelport artifact (no {MANIFEST}).",
                           hint="Build one with `modelport build MODEL --backend NAME -o DIR`.")
        try:
            manifest = json.loads(file.read_text())
        except json.JSONDecodeError as exc:
            raise BadInput(f"{file} is not valid JSON: {exc}") from exc
        return cls(path, manifest)

    @property
    def backend(self) -> str:
        return self.manifest["backend"]

    @property
    def precision(self) -> str:
        return self.manifest["recipe"]["precision"]

    @property
    def main_file(self) -> Path:
        return self.path / self.manifest["details"]["main_file"]

    @property
    def details(self) -> dict[str, Any]:
        return self.manifest["details"]

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec.from_json(s) for s in self.manifest["source"]["inputs"]]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec.from_json(s) for s in self.manifest["source"]["outputs"]]

    @property
    def size_bytes(self) -> int:
        return sum(self.manifest["files"].values())


def build_key(parts: dict[str, Any]) -> str:
    """The reuse key: a hash of everything the artifact's content depends on."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def existing_with_key(path: Path, key: str) -> Artifact | None:
    try:
        artifact = Artifact.open(path)
    except BadInput:
        return None
    files_ok = all((path / f).is_file() for f in artifact.manifest.get("files", {}))
    return artifact if artifact.manifest.get("key") == key and files_ok else None


def file_sizes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


@contextmanager
def staging_dir(out: Path) -> Iterator[Path]:
    """A temporary sibling of `out` that replaces it on success and vanishes on failure."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BadInput(f"{str(out)!r} exists and is not a directory.")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise BadInput(f"{str(out)!r} is a non-empty directory that is not a modelport artifact.",
                       hint="Choose an empty or new -o directory; modelport does not overwrite other files.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        yield tmp
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
