"""An Artifact is a directory: the runtime's files plus manifest.json saying what was built, from what, how.

Builds land atomically: files are written to a sibling temporary directory and swapped in only when
the build and its manifest are complete, so a failed build never leaves half an artifact where a good
one was.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelport.errors import BadInput, ModelportWarning, StepFailed, os_error
from modelport.specs import TensorSpec
from modelport.staging import ensure_dir, make_sibling_dir, remove_stale, sibling_path

MANIFEST = "manifest.json"
BUILD_LOG = "log.txt"  # other packages' output during the builds (quiet.keep_log); in no manifest
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
    """The artifact at `path` when it was built with `key` and its files are still what the build wrote.

    Reuse hashes every file against the manifest (cheap next to a build); a damaged artifact is not
    reused but rebuilt, with a warning saying why.
    """
    try:
        artifact = Artifact.open(path)
    except BadInput:
        return None
    if artifact.manifest.get("key") != key:
        return None
    problem = damage(artifact, hashes=True)
    if problem is not None:
        warnings.warn(f"{str(path)!r} is damaged: {problem}; rebuilding it.", ModelportWarning, stacklevel=2)
        return None
    return artifact


def damage(artifact: Artifact, *, hashes: bool = False) -> str | None:
    """What differs between an artifact's files and its manifest (missing, resized, or with `hashes` changed
    content), or None when they match. Loading checks sizes only: hashing big files at every load is slow."""
    recorded = _recorded_files(artifact.manifest) or {}
    for name, size in recorded.items():
        file = artifact.path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} is {file.stat().st_size} bytes; the build wrote {size}"
    if hashes:
        for name, digest in (artifact.manifest.get("sha256") or {}).items():
            file = artifact.path / name
            if not file.is_file() or file_sha256(file) != digest:
                return f"{name} is not what the build wrote (its sha256 differs)"
    return None


def check_intact(artifact: Artifact) -> Artifact:
    """The artifact, or BadInput when a file the manifest records is missing or resized."""
    problem = damage(artifact)
    if problem is not None:
        raise BadInput(f"The artifact {str(artifact.path)!r} is damaged: {problem}.",
                       hint=f"Rebuild it: run the `modelport build` that made it (model "
                            f"{artifact.manifest.get('source', {}).get('origin', '?')}) again with --force.")
    return artifact


def file_sizes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def file_digests(folder: Path) -> dict[str, str]:
    """The sha256 of every file, recorded at build time so that reuse can tell a damaged artifact."""
    return {name: file_sha256(folder / name) for name in file_sizes(folder)}


def file_sha256(file: Path) -> str:
    """The sha256 of a file, read in 1 MiB blocks (artifacts and model files can be large)."""
    digest = hashlib.sha256()
    with file.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _recorded_files(manifest: Any) -> dict[str, int] | None:
    """The files a modelport manifest records, or None when `manifest` is not one of modelport's."""
    if not isinstance(manifest, dict) or not {"manifest_version", "key", "backend", "files"} <= manifest.keys():
        return None
    files = manifest["files"]
    return files if isinstance(files, dict) else None


def _refuse_to_replace(out: Path) -> None:
    """Only an empty directory or a modelport artifact holding nothing but its own files may be replaced.

    A user's files put into an artifact are refused, not kept: carried over they would be listed in no
    manifest and could collide with the new build's files; refused, nothing is lost and the user decides.
    """
    if not out.exists():
        return
    if not out.is_dir():
        raise BadInput(f"{str(out)!r} exists and is not a directory.", hint="Choose another -o.")
    present = {str(p.relative_to(out)) for p in out.rglob("*") if not p.is_dir()}
    if not present:
        return
    try:
        recorded = _recorded_files(json.loads((out / MANIFEST).read_text()))
    except (OSError, ValueError):
        recorded = None
    if recorded is None:
        raise BadInput(f"{str(out)!r} is a non-empty directory that is not a modelport artifact"
                       + (f" (its {MANIFEST} is not modelport's)." if MANIFEST in present else "."),
                       hint="Choose an empty or new -o directory; modelport does not overwrite other files.")
    extra = sorted(present - set(recorded) - {MANIFEST, BUILD_LOG})
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        raise BadInput(f"The artifact {str(out)!r} holds files its build did not write: {shown}.",
                       hint="A rebuild replaces the whole directory: move those files out of it, or choose "
                            "another -o.")


def _refuse_cwd(out: Path) -> None:
    """The current directory (or one above it) cannot be swapped for a new artifact."""
    target = Path(os.path.abspath(out))
    here = Path.cwd()
    if target == here or target in here.parents:
        raise BadInput(f"-o {str(out)!r} is the current directory or one above it; a build replaces its whole "
                       "output directory.", hint=f"Name a new directory, e.g. -o {out / 'artifact'}.")


@contextmanager
def staging_dir(out: Path) -> Iterator[Path]:
    """A temporary sibling of `out` that replaces it on success and vanishes on failure."""
    out = Path(os.path.realpath(out) if Path(out).is_symlink() else os.path.normpath(out))  # build into a link's target
    _refuse_cwd(out)
    _refuse_to_replace(out)
    ensure_dir(out.parent, out)
    remove_stale(out, "old")
    tmp = make_sibling_dir(out, "building")
    try:
        yield tmp
        _swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_SWAP_TRIES = 10


def _swap_in(tmp: Path, out: Path) -> None:
    """Rename `tmp` to `out`, moving the artifact there aside first; a concurrent build of the same
    directory that lands in between is replaced in turn, so `out` always ends one whole artifact."""
    for _ in range(_SWAP_TRIES):
        _refuse_to_replace(out)  # again: files may have been added to it while this build ran
        old = None
        try:
            if out.exists():
                old = sibling_path(out, "old")
                out.rename(old)
        except FileNotFoundError:  # a concurrent build moved it aside first
            continue
        except OSError as exc:
            raise os_error(exc, out, "replacing") from exc
        try:
            tmp.rename(out)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):  # a concurrent build landed first
                continue
            if old is not None:
                old.rename(out)
            raise os_error(exc, out, "writing") from exc
        finally:
            if old is not None and old.exists():
                shutil.rmtree(old, ignore_errors=True)
        return
    raise StepFailed(f"Could not put the new artifact at {str(out)!r}: other builds kept replacing it.",
                     hint="Run one build per output directory at a time.")
