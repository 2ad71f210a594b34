"""modelport: take a PyTorch model to every major inference runtime, and measure which deployment to ship.

The Python API mirrors the CLI:

    source = modelport.load_model("modelport.examples:digits_cnn")
    report = modelport.export(source, "model.onnx")
    results = modelport.bench(source, calib="data.npz", out="bench-out")
    artifact = modelport.build(source, backend="onnxruntime", precision="int8", calibration=calib, out="art")
    runner = modelport.load("art")
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelport.artifact import Artifact
from modelport.errors import BadInput, ModelportError, StepFailed, Unavailable
from modelport.specs import TensorSpec

if TYPE_CHECKING:
    from modelport.backends import Runner
    from modelport.calibration import CalibrationSet, open_calibration
    from modelport.exporters.onnx import ExportReport
    from modelport.model import SourceModel, load_model

__version__ = "0.1.0"

# The half of the API that needs torch (or onnx, or the calibration sources) is imported on first use,
# so `import modelport; modelport.load(artifact)` runs on a box with numpy and one runtime only.
_LAZY = {"CalibrationSet": "modelport.calibration", "open_calibration": "modelport.calibration",
         "ExportReport": "modelport.exporters.onnx", "SourceModel": "modelport.model", "load_model": "modelport.model"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'modelport' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


def _source(model: SourceModel | str) -> SourceModel:
    from modelport.model import load_model

    return load_model(model) if isinstance(model, str) else model


def export(model: SourceModel | str, out: str | Path, **kwargs: Any) -> ExportReport:
    """Export to ONNX and validate against PyTorch (see `export_onnx` for options)."""
    from modelport.exporters.onnx import export_onnx

    return export_onnx(_source(model), out, **kwargs)


def build(model: SourceModel | str, *, backend: str, precision: str = "fp32", out: str | Path,
          calibration: CalibrationSet | str | None = None, options: dict[str, Any] | None = None,
          force: bool = False) -> Artifact:
    """Build (or reuse) a runtime-native artifact directory for one backend and precision."""
    from modelport.builder import build_artifact
    from modelport.bundle import ModelBundle
    from modelport.calibration import open_calibration

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


def load(path: str | Path, threads: int | None = None) -> Runner:
    """A Runner for any artifact directory, whatever backend built it (numpy and its runtime only: no torch)."""
    from modelport.loading import load_artifact

    return load_artifact(path, threads=threads)


__all__ = ["Artifact", "BadInput", "CalibrationSet", "ExportReport", "ModelportError", "SourceModel", "StepFailed",
           "TensorSpec", "Unavailable", "__version__", "bench", "build", "export", "load", "load_model",
           "open_calibration"]
