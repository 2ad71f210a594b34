"""The streaming loop: evaluation samples through the artifact and its reference, every shared tensor compared.

Without `against`, the reference is the FP32 ONNX export the artifact was built from (the bundle's cached
export, node for node), run in ONNX Runtime with every tensor exposed; with it, a second artifact is the
reference, and each artifact is also compared with FP32 for the plot. One batch (one sample where the batch
is dynamic) is held at a time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelport.artifact import Artifact
from modelport.backends import BACKENDS, Runner
from modelport.bundle import ModelBundle
from modelport.calibration import CalibrationSet
from modelport.debug.compare import Accumulator, align, jumps, rank_layers
from modelport.errors import BadInput
from modelport.exporters.tensor_map import Layer, map_tensors, reference_layers
from modelport.loading import load_artifact
from modelport.model import SourceModel

FP32 = "PyTorch FP32 (its ONNX export in ONNX Runtime)"


@dataclass
class Side:
    """One runner taking part, and the name it gives each reference tensor it exposes."""

    label: str
    runner: Runner
    names: dict[str, str]
    why_missing: str


@dataclass
class Comparison:
    """`out` against `ref`, tensor by tensor, over the samples streamed so far."""

    out: Side
    ref: Side
    sums: dict[str, Accumulator]

    @property
    def label(self) -> str:
        return f"{self.out.label} vs {self.ref.label}"


def check_source(artifact: Artifact, source: SourceModel) -> None:
    """A BadInput unless `source` is the model the artifact was built from (weights, code and I/O specs)."""
    built = artifact.manifest["source"]
    if built.get("content_hash") != source.content_hash:
        raise BadInput(f"{artifact.path} was built from {built.get('origin')} (content hash "
                       f"{built.get('content_hash')}), not from {source.origin} as loaded here (content hash "
                       f"{source.content_hash}): its weights, code or input specs differ.",
                       hint="Pass the --model the artifact was built from, or rebuild the artifact from this one.")


def load_source(ref: str, artifact_path: str | Path, inputs: Sequence[str] = ()) -> SourceModel:
    """The model as the artifact's build loaded it: the symbolic axes its manifest records marked again, so
    that the content hash compares like with like. `inputs` (`NAME:SHAPE[:DTYPE]`) describe a bare module's."""
    from modelport.model import load_model

    artifact = Artifact.open(artifact_path)
    return load_model(ref, inputs, dynamic=[(s.name, axis, dim) for s in artifact.inputs
                                            for axis, dim in s.dynamic_axes.items()])


def _side(artifact: Artifact, layers: Sequence[Layer], threads: int | None) -> Side:
    runner = load_artifact(artifact.path, threads=threads)
    names = runner.tensor_names()  # Unavailable (exit 2) for a runtime that cannot expose intermediates
    by_module = BACKENDS[artifact.backend].consumes == "torch"
    why = ("no TFLite tensor maps to it (litert-torch names tensors by torch module: each module's last tensor "
           "is matched, the ones inside it are not)" if by_module
           else f"the {artifact.backend} artifact has no such tensor (fused or removed when it was built)")
    label = f"{artifact.path.name} ({artifact.backend} {artifact.precision})"
    mapped = map_tensors(layers, names, by_module=by_module, fused=runner.fused_activations(),
                         producers=runner.tensor_producers())
    return Side(label, runner, mapped, why)


def _reference(bundle: ModelBundle, layers: Sequence[Layer], threads: int | None) -> Side:
    from modelport.backends.onnxruntime import OnnxRuntimeRunner

    source = bundle.source
    runner = OnnxRuntimeRunner(bundle.onnx_path, source.inputs, source.outputs, threads)
    return Side(FP32, runner, map_tensors(layers, runner.tensor_names(), by_module=False), "not in the ONNX graph")


def debug_artifact(path: str | Path, source: SourceModel, evaluation: CalibrationSet, *,
                   against: str | Path | None = None, threads: int | None = None,
                   on_batch: Callable[[int], None] | None = None, onnx_dir: str | Path | None = None) -> dict[str, Any]:
    """Compare every tensor of the artifact at `path` with the reference on `evaluation`; the debug.json record.

    `on_batch(samples)` is called after each batch (for progress); `onnx_dir` is where the FP32 export is
    cached (default: modelport's cache; a bench passes its own).
    """
    start = time.perf_counter()
    artifact = Artifact.open(path)
    check_source(artifact, source)
    other = Artifact.open(against) if against is not None else None
    if other is not None:
        check_source(other, source)
    bundle = ModelBundle(source, onnx_dir=Path(onnx_dir) if onnx_dir is not None else None)
    layers = reference_layers(bundle.onnx_path)
    target = _side(artifact, layers, threads)
    fp32 = _reference(bundle, layers, threads)
    sides = [target, fp32]
    if other is None:
        comparisons = [_comparison(target, fp32, layers)]
    else:
        second = _side(other, layers, threads)
        sides.append(second)
        comparisons = [_comparison(target, second, layers), _comparison(target, fp32, layers),
                       _comparison(second, fp32, layers)]
    skipped: dict[str, str] = {}
    samples = 0
    try:
        for batch in evaluation.batches():
            values = {id(s): s.runner.intermediates(batch, sorted({s.names[t] for c in comparisons
                                                                   for t in c.sums if c.out is s or c.ref is s}))
                      for s in sides}
            for c in comparisons:
                _fold(c, values[id(c.out)], values[id(c.ref)], skipped)
            samples += len(next(iter(batch.values())))
            if on_batch:
                on_batch(samples)
    finally:
        for s in sides:
            s.runner.close()
    main = comparisons[0]
    entries = _entries(layers, main, skipped)
    return {
        "artifact": str(artifact.path), "backend": artifact.backend, "precision": artifact.precision,
        "model": source.origin,
        "reference": ({"kind": "fp32", "label": FP32, "onnx": str(bundle.onnx_path)} if other is None else
                      {"kind": "artifact", "label": main.ref.label, "artifact": str(other.path),
                       "backend": other.backend, "precision": other.precision}),
        "samples": samples, "evaluation": evaluation.source.description,
        "seconds": round(time.perf_counter() - start, 3),
        "compared": sum(e["status"] == "ok" for e in entries), "layers": entries, "culprits": rank_layers(entries),
        "comparisons": [{"label": c.label, "sqnr_db": [_metrics(c, e["tensor"])["sqnr_db"] for e in entries]}
                        for c in comparisons],
    }


def _comparison(out: Side, ref: Side, layers: Sequence[Layer]) -> Comparison:
    return Comparison(out, ref, {layer.tensor: Accumulator() for layer in layers
                                 if layer.tensor in out.names and layer.tensor in ref.names})


def _fold(c: Comparison, out: dict[str, np.ndarray], ref: dict[str, np.ndarray], skipped: dict[str, str]) -> None:
    """Add one batch to each tensor's sums; a tensor that is not float or whose shapes disagree is dropped."""
    for tensor in list(c.sums):
        o, r = out[c.out.names[tensor]], ref[c.ref.names[tensor]]
        if r.dtype.kind != "f" or o.dtype.kind != "f":
            del c.sums[tensor]
            skipped.setdefault(tensor, f"not a float tensor ({r.dtype})")
            continue
        aligned = align(o, r.shape)
        if aligned is None:
            del c.sums[tensor]
            skipped.setdefault(tensor, f"shapes differ: {o.shape} in {c.out.label}, {r.shape} in {c.ref.label}")
            continue
        c.sums[tensor].add(aligned, r)


def _metrics(c: Comparison, tensor: str) -> dict[str, Any]:
    sums = c.sums.get(tensor)
    return sums.metrics() if sums is not None else {"sqnr_db": None, "cosine": None, "max_abs": None, "max_rel": None}


def _entries(layers: Sequence[Layer], c: Comparison, skipped: dict[str, str]) -> list[dict[str, Any]]:
    metrics = {t: _metrics(c, t) for t in c.sums}
    jump = jumps(layers, {t: m["sqnr_db"] for t, m in metrics.items()})
    entries = []
    for depth, layer in enumerate(layers):
        entry: dict[str, Any] = {"tensor": layer.tensor, "onnx_node": layer.onnx_node, "module": layer.module,
                                 "op_type": layer.op_type, "depth": depth,
                                 "runtime_tensor": c.out.names.get(layer.tensor)}
        if layer.tensor in metrics:
            entry.update(status="ok", reason=None, **metrics[layer.tensor], jump_db=jump[layer.tensor])
        else:
            missing = c.out if layer.tensor not in c.out.names else c.ref if layer.tensor not in c.ref.names else None
            status = "fused" if missing is not None else "skipped"
            reason = f"{missing.label}: {missing.why_missing}" if missing is not None else skipped.get(layer.tensor)
            entry.update(status=status, reason=reason, sqnr_db=None, cosine=None, max_abs=None, max_rel=None,
                         jump_db=None)
        entries.append(entry)
    return entries
