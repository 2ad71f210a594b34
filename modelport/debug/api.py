"""`modelport.debug(...)`: the `modelport debug` command as one Python call, and the files both write."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the CLI imports this module before it knows whether torch is needed
    from modelport.calibration import CalibrationSet
    from modelport.model import SourceModel

DEFAULT_SAMPLES = 64


def default_out(artifact: str | Path) -> Path:
    """Where debug.json and debug.html go unless told: ARTIFACT-debug beside the artifact."""
    artifact = Path(artifact)
    return artifact.with_name(f"{artifact.name}-debug")


def debug_to_files(artifact: str | Path, source: SourceModel, evaluation: CalibrationSet, out: str | Path, *,
                   against: str | Path | None = None, threads: int | None = None,
                   on_batch: Callable[[int], None] | None = None,
                   onnx_dir: str | Path | None = None) -> tuple[dict[str, Any], list[Path]]:
    """Debug `artifact` on `evaluation` and write `out`/debug.json and debug.html; the record and the files."""
    from modelport.debug.report import write_html, write_json
    from modelport.debug.run import debug_artifact

    record = debug_artifact(artifact, source, evaluation, against=against, threads=threads, on_batch=on_batch,
                            onnx_dir=onnx_dir)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return record, [write_json(record, out), write_html(record, out)]


def debug(artifact: str | Path, model: str | SourceModel, evaluation: str | CalibrationSet, *,
          against: str | Path | None = None, samples: int = DEFAULT_SAMPLES, out: str | Path | None = None,
          inputs: Sequence[str] = (), threads: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Per-layer divergence of `artifact` on `evaluation`, as `modelport debug` measures it; the debug.json record.

    `model` is the model the artifact was built from (a MODEL reference, loaded with the symbolic axes the artifact
    records, or a SourceModel); `evaluation` an --eval source or a CalibrationSet, of which `samples` are drawn
    (with `seed`); `against` compares with a second artifact instead of PyTorch FP32. The record, with `layers`
    in topological order and `culprits` worst first, is also written to `out` (default ARTIFACT-debug) as
    debug.json and debug.html.
    """
    from modelport.calibration import open_evaluation
    from modelport.debug.run import load_source

    source = load_source(model, artifact, inputs) if isinstance(model, str) else model
    data = open_evaluation(evaluation, source.inputs, size=samples, seed=seed) if isinstance(evaluation, str) \
        else evaluation
    record, _ = debug_to_files(artifact, source, data, out if out is not None else default_out(artifact),
                               against=against, threads=threads)
    return record
