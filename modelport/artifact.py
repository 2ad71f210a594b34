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
            manifest = json.loads(file.read_bytes().decode("utf-8"))
        except OSError as exc:
            raise BadInput(f"Cannot read {file}: {exc.strerror or exc}.") from exc
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadInput(f"{file} is not valid JSON: {exc}", hint=_REBUILD) from exc
        _check_manifest(path, file, manifest)
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


_JSON_NAMES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}
_REBUILD = "Rebuild the artifact with `modelport build MODEL --backend NAME -o DIR`."


def _check_manifest(path: Path, file: Path, manifest: Any) -> None:
    """Reject, once at open, a manifest the properties below cannot read (hand-edited, truncated, foreign) and a
    main file outside the artifact: loading must never follow a manifest to another file on the machine."""

    def bad(what: str) -> BadInput:
        return BadInput(f"{file} is not a modelport manifest: {what}.", hint=_REBUILD)

    if not isinstance(manifest, dict):
        raise bad(f"it holds a JSON {_JSON_NAMES.get(type(manifest), type(manifest).__name__)}, not an object")
    for key, kind, inner in (("backend", str, ()), ("recipe", dict, ("precision",)), ("details", dict, ("main_file",)),
                             ("source", dict, ("inputs", "outputs")), ("files", dict, ())):
        if not isinstance(manifest.get(key), kind):
            raise bad(f"{key!r} is missing or not a {kind.__name__}")
        missing = [k for k in inner if k not in manifest[key]]
        if missing:
            raise bad(f"{key!r} has no {', '.join(map(repr, missing))}")
    for side in ("inputs", "outputs"):
        specs = manifest["source"][side]
        if not isinstance(specs, list) or not all(_is_spec(s) for s in specs):
            raise bad(f"source.{side} is not a list of tensor specs (name, shape, dtype)")
    if not all(isinstance(size, int) for size in manifest["files"].values()):
        raise bad("'files' does not map file names to sizes")
    main = manifest["details"]["main_file"]
    if not isinstance(main, str) or not main:
        raise bad("details.main_file is not a file name")
    root = path.resolve()
    target = (root / main).resolve()
    if target == root or not target.is_relative_to(root):
        raise bad(f"details.main_file {main!r} points outside the artifact {str(path)!r}")


def _is_spec(spec: Any) -> bool:
    return (isinstance(spec, dict) and isinstance(spec.get("name"), str) and isinstance(spec.get("dtype"), str)
            and isinstance(spec.get("shape"), list)
            and all(isinstance(d, int | str) and not isinstance(d, bool) for d in spec["shape"]))


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
