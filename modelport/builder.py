"""Build artifacts for any backend: the manifest, the reuse key and the atomic write live here once.

Backends only write their runtime's files and say what they did; everything common to every build
(validation, the key, reuse, the manifest, timing, never leaving half an artifact) is done here.
"""

from __future__ import annotations

import importlib.metadata
import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelport import progress
from modelport.artifact import (
    MANIFEST,
    MANIFEST_VERSION,
    Artifact,
    build_key,
    existing_with_key,
    file_digests,
    file_sizes,
    staging_dir,
)
from modelport.backends import BACKENDS, get_backend
from modelport.backends.base import CALIBRATED, Backend, Recipe
from modelport.bundle import ModelBundle
from modelport.calibration import CalibrationSet, warn_if_weak
from modelport.errors import BadInput, ModelportError, StepFailed, os_error
from modelport.machine import machine_summary
from modelport.staging import no_space_error, out_of_space

if TYPE_CHECKING:
    from modelport.model import SourceModel


def modelport_version() -> str:
    try:
        return importlib.metadata.version("modelport")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def _ranges_beside(source: SourceModel, backend: Backend, recipe: Recipe, options: Mapping[str, Any] | None
                   ) -> tuple[Mapping[str, Any] | None, dict[str, Any] | None]:
    """(the options, with the ranges file beside a .pt2 model added where the build reads ranges and none was
    named; what the manifest says of that file). An explicit `ranges_file` (`none` too) wins."""
    from modelport.quantize import given

    if recipe.precision not in CALIBRATED or "ranges_file" in (options or {}) or source.origin is None:
        return options, None
    path = given.path_beside(Path(source.origin))
    if not path.is_file():
        return options, None
    if not backend.reads_ranges_file(recipe):
        return options, {"path": str(path), "used": False,
                         "why": f"{backend.name} {recipe.precision} with these options calibrates ranges its own way"}
    given.beside(source.origin)  # refuses a file learned for another version of the model
    return ({**(options or {}), "ranges_file": str(path)},
            {"path": str(path), "used": True, "why": "beside the model (--option ranges_file= overrides)"})


def build_artifact(bundle: ModelBundle, backend_name: str, precision: str, out: str | Path, *,
                   options: Mapping[str, Any] | None = None, calibration: CalibrationSet | None = None,
                   force: bool = False) -> tuple[Artifact, bool]:
    """Build (or reuse) the artifact at `out`; returns it and whether it was reused."""
    backend = get_backend(backend_name)
    recipe = backend.recipe(precision, options)
    options, beside = _ranges_beside(bundle.source, backend, recipe, options)
    if beside is not None and beside["used"]:
        recipe = backend.recipe(precision, options)
    backend.require()
    if precision in CALIBRATED and calibration is None:
        raise BadInput(f"{precision} needs calibration data for {backend_name}.",
                       hint="Pass --calib SRC (file.npz, a directory, images:DIR, file.py:fn), or --calib synthetic "
                            "for a latency-only build whose accuracy means nothing.")
    if calibration is not None and precision in CALIBRATED:
        warn_if_weak(calibration, precision)
    source = bundle.source
    key_parts = {
        "backend": backend_name, "recipe": recipe.to_json(), "model": source.content_hash,
        "calibration": calibration.fingerprint if calibration is not None and precision in CALIBRATED else None,
        "versions": backend.versions(), "modelport": modelport_version(), "opset": bundle.opset,
    }
    key = build_key(key_parts)
    out = Path(out)
    if not force and (existing := existing_with_key(out, key)) is not None:
        return existing, True
    start = time.perf_counter()
    with staging_dir(out) as tmp:
        try:
            details = backend.build(bundle, recipe, calibration if precision in CALIBRATED else None, tmp)
            if beside is not None:
                details["ranges_file_beside"] = beside
            if (details.get("latency") or {}).get("warning"):  # a backend's "INT8 does not pay here" is the build's
                details["warning"] = details["latency"]["warning"]
        except ModelportError:
            raise
        except OSError as exc:
            raise os_error(exc, out, f"building {backend_name} {precision} into") from exc
        except Exception as exc:
            if out_of_space(tmp):  # runtimes report a full disk as a failed serialization, or worse
                raise no_space_error(out, f"building {backend_name} {precision} into") from exc
            raise StepFailed(f"The {backend_name} {precision} build failed: {type(exc).__name__}: {exc}",
                             hint="Run with --debug for the traceback.") from exc
        seconds = time.perf_counter() - start
        if "main_file" not in details or not (tmp / details["main_file"]).is_file():
            raise StepFailed(f"The {backend_name} backend wrote no main file.")
        with progress.stage("write"):
            manifest = {
                "manifest_version": MANIFEST_VERSION,
                "key": key,
                "backend": backend_name,
                "recipe": recipe.to_json(),
                "source": {"name": source.name, "origin": source.origin, "weights_hash": source.weights_hash,
                           "code_hash": source.code_hash,
                           "content_hash": source.content_hash, "inputs": [s.to_json() for s in source.inputs],
                           "outputs": [s.to_json() for s in source.outputs]},
                "onnx": _onnx_info(bundle) if BACKENDS[backend_name].consumes == "onnx" else None,
                "calibration": calibration.describe() if calibration is not None and precision in CALIBRATED else None,
                "versions": {"modelport": modelport_version(), **backend.versions()},
                "machine": machine_summary(),
                "build_seconds": round(seconds, 3),
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "files": file_sizes(tmp),
                "sha256": file_digests(tmp),
                "details": details,
            }
            try:
                (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
            except OSError as exc:
                raise os_error(exc, out / MANIFEST) from exc
    return Artifact.open(out), False


def _onnx_info(bundle: ModelBundle) -> dict[str, Any]:
    info = bundle.export_info
    return {"exporter": info["exporter"], "opset": info["opset"], "max_rel_error": max(
        (p["max_rel"] for p in info.get("parity", [])), default=None), "fallback_reason": info.get("fallback_reason")}
