"""modelport: take a PyTorch model to every major inference runtime, and measure which deployment to ship.

The Python API mirrors the CLI:

    source = modelport.load_model("modelport.examples:digits_cnn")
    report = modelport.export(source, "model.onnx")
    results = modelport.bench(source, calib="data.npz", out="bench-out")
    artifact = modelport.build(source, backend="onnxruntime", precision="int8", calibration=calib, out="art")
    runner = modelport.load("art")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelport.artifact import Artifact
from modelport.calibration import CalibrationSet, open_calibration
from modelport.errors import BadInput, ModelportError, StepFailed, Unavailable
from modelport.exporters.onnx import ExportReport, export_onnx
from modelport.model import SourceModel, load_model
from modelport.specs import TensorSpec

__version__ = "0.1.0"


def _source(model: SourceModel | str) -> SourceModel:
    return load_model(model) if isinstance(model, str) else model


def export(model: SourceModel | str, out: str | Path, **kwargs: Any) -> ExportReport:
    """Export to ONNX and validate against PyTorch (see `export_onnx` for options)."""
    return export_onnx(_source(model), out, **kwargs)


def build(model: SourceModel | str, *, backend: str, precision: str = "fp32", out: str | Path,
          calibration: CalibrationSet | str | None = None, options: dict[str, Any] | None = None,
          force: bool = False) -> Artifact:
    """Build (or reuse) a runtime-native artifact directory for one backend and precision."""
    from modelport.builder import build_artifact
    from modelport.bundle import ModelBundle

    source = _source(model)
    if isinstance(calibration, str):
        calibration = open_calibration(calibration, source.inputs)
    artifact, _ = build_artifact(ModelBundle(source), backend, precision, out, options=options,
                                 calibration=calibration, force=force)
    return artifact


def bench(model: SourceModel | str, **kwargs: Any) -> dict[str, Any]:
    """Build MODEL for every backend x precision and measure each against PyTorch (see `harness.bench`)."""
    from modelport.harness import bench as run_bench

    return run_bench(model, **kwargs)


def load(path: str | Path, threads: int | None = None):  # -> Runner
    """A Runner for any artifact directory, whatever backend built it."""
    from modelport.builder import load_artifact

    return load_artifact(path, threads=threads)


__all__ = ["Artifact", "BadInput", "CalibrationSet", "ExportReport", "ModelportError", "SourceModel", "StepFailed",
           "TensorSpec", "Unavailable", "__version__", "bench", "build", "export", "load", "load_model",
           "open_calibration"]
