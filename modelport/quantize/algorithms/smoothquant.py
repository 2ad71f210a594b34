"""SmoothQuant: divide outlier input channels of MatMul/Gemm by s and multiply the weights' rows by s.

A few activation channels far larger than the rest would otherwise set the whole tensor's 8-bit step.
The float model computes the same function; the activation's channels become comparable, so one 8-bit
range fits them, and the weights (quantized per channel) absorb the difference. Where a LayerNormalization
feeds only the smoothed nodes, 1/s folds into its scale and bias; elsewhere a float Mul applies it.
"""

from __future__ import annotations

import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from modelport.quantize.algorithms.base import Algorithm, AlgorithmRun
from modelport.quantize.declare import Declared, fraction, setting
from modelport.quantize.graph import Graph
from modelport.quantize.statistics import run_collecting

if TYPE_CHECKING:
    from modelport.calibration.dataset import CalibrationSet
    from modelport.quantize.settings import QdqSettings

SMOOTH_SPREAD = 4.0        # largest channel over the median channel that triggers smoothing


@dataclass(frozen=True, kw_only=True)
class SmoothQuantOptions(Declared):
    title: ClassVar[str] = "smoothquant option"

    alpha: float | None = setting(0.75, "SmoothQuant alpha for outlier channels in front of MatMul/Gemm; 0 disables.",
                                  fraction, key="smooth")

    @property
    def enabled(self) -> bool:
        return bool(self.alpha)


def smooth(prepared: Path, calibration: CalibrationSet, options: SmoothQuantOptions, settings: QdqSettings
           ) -> AlgorithmRun:
    """Smooth every MatMul/Gemm input whose largest channel is SMOOTH_SPREAD times its median one."""
    import onnx
    from onnx import helper, numpy_helper

    graph = Graph.load(prepared)
    groups: dict[str, list[tuple[Any, bool]]] = defaultdict(list)
    for node in graph.model.graph.node:
        if node.op_type not in ("MatMul", "Gemm") or node.input[0] not in graph.float_tensors:
            continue
        w = graph.inits.get(node.input[1])
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if w is None or len(w.dims) != 2 or attrs.get("transA", 0):
            continue
        groups[node.input[0]].append((node, bool(attrs.get("transB", 0))))
    if not groups:
        return AlgorithmRun()
    channel_max: dict[str, np.ndarray] = {}

    def collect(result: dict[str, np.ndarray]) -> None:
        for t in groups:
            a = np.abs(result[t].reshape(-1, result[t].shape[-1])).max(axis=0)
            channel_max[t] = a if t not in channel_max else np.maximum(channel_max[t], a)

    with tempfile.TemporaryDirectory(prefix="modelport-smooth-") as tmp:
        run_collecting(prepared, list(groups), calibration, settings, collect, Path(tmp))
    alpha = float(options.alpha)
    done = []
    model = graph.model
    weight_uses = Counter(i for n in model.graph.node for i in n.input if i in graph.inits)
    for tensor, members in groups.items():
        amax = channel_max.get(tensor)
        if amax is None or not np.all(np.isfinite(amax)) or amax.max() <= 0:
            continue
        spread = float(amax.max() / max(np.median(amax), 1e-12))
        if spread < SMOOTH_SPREAD:
            continue
        weights = [numpy_helper.to_array(graph.inits[n.input[1]]) for n, _ in members]
        if any((w.T if tb else w).shape[0] != amax.shape[0] for w, (_, tb) in zip(weights, members, strict=True)):
            continue
        wmax = np.max([np.abs(w.T if tb else w).max(axis=1) for w, (_, tb) in zip(weights, members, strict=True)],
                      axis=0)
        s = np.where(amax > 0, amax ** alpha / np.maximum(wmax, 1e-8) ** (1 - alpha), 1.0)
        s = np.clip(s, 1e-5, 1e5).astype(np.float32)
        for (node, trans_b), w in zip(members, weights, strict=True):
            scaled = (w * s[None, :]) if trans_b else (w * s[:, None])
            name = node.input[1] if weight_uses[node.input[1]] == 1 else f"{node.input[1]}_smoothed_{node.name}"
            new = numpy_helper.from_array(scaled.astype(w.dtype), name)
            if name in graph.inits:
                graph.inits[name].CopyFrom(new)
            else:
                model.graph.initializer.append(new)
                node.input[1] = name
        folded = _fold_into_norm(graph, tensor, [n for n, _ in members], s)
        if not folded:
            inv = f"{tensor}_smooth_inv"
            model.graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), inv))
            out = f"{tensor}_smoothed"
            first = min(i for i, n in enumerate(model.graph.node) if tensor in n.input)
            model.graph.node.insert(first, helper.make_node("Mul", [tensor, inv], [out], name=f"{tensor}_smooth"))
            for node, _ in members:
                node.input[0] = out
            info = graph.value_infos.get(tensor)
            if info is not None:
                copy = model.graph.value_info.add()
                copy.CopyFrom(info)
                copy.name = out
        done.append({"tensor": tensor, "consumers": [n.name for n, _ in members], "spread": round(spread, 1),
                     "folded_into": folded})
    if done:
        onnx.save(model, str(prepared))
    # an 8-bit copy of the per-channel scales would undo the smoothing
    keep = {f"{item['tensor']}_smooth": ("smoothing-scale", "SmoothQuant channel scaling: it stays float by design")
            for item in done if item["folded_into"] is None}
    return AlgorithmRun(done, keep)


def _fold_into_norm(graph: Graph, tensor: str, members: list, s: np.ndarray) -> str | None:
    """Fold 1/s into the LayerNormalization that produces `tensor` when only the smoothed nodes read it."""
    from onnx import numpy_helper

    producer = graph.producer.get(tensor)
    readers = {n.name for n in graph.consumers[tensor]}
    if (producer is None or producer.op_type != "LayerNormalization" or readers != {n.name for n in members}
            or len(producer.input) < 2 or any(i not in graph.inits for i in producer.input[1:])):
        return None
    for name in producer.input[1:]:
        if sum(name in n.input for n in graph.model.graph.node) != 1:
            return None
        value = numpy_helper.to_array(graph.inits[name])
        graph.inits[name].CopyFrom(numpy_helper.from_array((value / s).astype(value.dtype), name))
    return producer.name


ALGORITHM = Algorithm("smoothquant", "Migrates activation outliers of MatMul/Gemm inputs into their weights.",
                      SmoothQuantOptions, smooth)
