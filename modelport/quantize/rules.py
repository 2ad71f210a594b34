"""What stays in float and why: the user's exclusions, and the automatic rules for tensors that wreck 8-bit
ranges (mask adds, softmax inputs, normalization, sentinel-sized ranges) or measure a low SQNR, and for the
op that makes a graph output (its int8 output would only round what the user reads).

Every decision is a (rule, reason) pair that the result lists per node.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelport.errors import BadInput
from modelport.quantize.graph import COMPUTE_OPS, Graph
from modelport.quantize.ranges import EXTREME_ABS, bounds

if TYPE_CHECKING:
    import onnx

    from modelport.quantize.settings import QdqSettings

Why = tuple[str, str]  # (rule, reason) for a node kept in float

NORMALIZATION_OPS = frozenset({"LayerNormalization", "InstanceNormalization", "GroupNormalization",
                               "BatchNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization",
                               "RMSNormalization"})
MASK_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Where"})
SQNR_FLOOR_DB = 20.0       # below this an 8-bit tensor keeps under ~3 bits of its signal
SQNR_DROP_DB = 12.0        # ... or when it is this far below the model's median (a 4x wider range)


def resolve_exclude(exclude: Sequence[str], model: onnx.ModelProto, original: Path, notes: list[str]
                    ) -> dict[str, str]:
    """Node names or op types to keep in float -> {node name: reason}; names unknown to both graphs are errors."""
    import onnx

    if not exclude:
        return {}
    graph = Graph(model)
    types = {n.op_type for n in graph.nodes.values()}
    original_nodes = {n.name for n in onnx.load(str(original), load_external_data=False).graph.node}
    kept, unknown = {}, []
    for item in exclude:
        if item in graph.nodes:
            kept[item] = "excluded by the user"
        elif item in types:
            kept.update({n: f"op type {item} excluded by the user" for n, node in graph.nodes.items()
                         if node.op_type == item})
        elif item in original_nodes:
            notes.append(f"Excluded node {item!r} was fused away by pre-processing; nothing to keep in float.")
        else:
            unknown.append(item)
    if unknown:
        sample = ", ".join(sorted(graph.nodes)[:8])
        raise BadInput(f"exclude names {', '.join(map(repr, unknown))}, which are neither nodes nor op types of the "
                       "model.", hint=f"Op types here: {', '.join(sorted(types))}. Node names look like: {sample}, ...")
    return kept


def automatic_float(graph: Graph, by_algorithms: Mapping[str, Why], ranges: Any, sqnr: Mapping[str, float],
                    candidates: set[str], settings: QdqSettings, kept: Mapping[str, Why]) -> dict[str, Why]:
    """Nodes kept in float by design (what the algorithms asked for, run-time x run-time products) and by
    measurement."""
    found: dict[str, Why] = dict(by_algorithms)
    if settings.weights_only:
        for name in sorted(candidates):
            node = graph.nodes[name]
            if node.op_type in COMPUTE_OPS and not any(i in graph.inits for i in node.input):
                found[name] = ("runtime-operands", "both operands computed at run time (attention scores or "
                               "context): quantizing them adds two QuantizeLinear passes and error for a small product")
    if settings.auto_exclude:
        found.update({n: r for n, r in _range_wreckers(graph, ranges, candidates).items() if n not in found})
        found.update({n: r for n, r in _graph_outputs(graph, candidates).items() if n not in found})
        rest = candidates - set(kept) - set(found)
        found.update(_low_sqnr(graph, sqnr, rest))
    return found


def _range_of(ranges: Any, tensor: str) -> tuple[float, float] | None:
    data = ranges.data.get(tensor)
    return None if data is None else bounds(data)


def _range_wreckers(graph: Graph, ranges: Any, candidates: set[str]) -> dict[str, Why]:
    """Mask adds, softmax inputs, normalization and sentinel-sized ranges: kept in float, with the reason."""
    kept: dict[str, Why] = {}
    for name in sorted(candidates):
        node = graph.nodes[name]
        if node.op_type in NORMALIZATION_OPS:
            kept[name] = ("normalization", "its input is the residual stream, whose few outlier channels set "
                          "the range; no int8 kernel gains from it")
            continue
        if node.op_type == "Softmax":
            kept[name] = ("softmax", "its input holds the attention logits plus the mask")
            continue
        if node.op_type in MASK_OPS and any(c.op_type == "Softmax" for o in node.output for c in graph.consumers[o]):
            kept[name] = ("mask-add", f"{node.op_type} feeding a softmax (logits + mask): one 8-bit range cannot "
                                      "hold both")
            continue
        for t in graph.activations(node):
            r = _range_of(ranges, t)
            if r is not None and not (math.isfinite(r[0]) and math.isfinite(r[1])
                                      and max(abs(r[0]), abs(r[1])) < EXTREME_ABS):
                kept[name] = ("extreme-range", f"tensor {t} spans [{r[0]:.3g}, {r[1]:.3g}], a mask or sentinel "
                              "constant: its 8-bit step would erase every ordinary value beside it")
                break
    return kept


def _graph_outputs(graph: Graph, candidates: set[str]) -> dict[str, Why]:
    """Non-compute ops (a final Sigmoid, Add, Reshape) whose output is a graph output: in int8 that output is rounded
    to 256 levels and nothing downstream gains, while a float one reads its quantized inputs all the same. Conv,
    MatMul and Gemm stay int8, as their kernels pay for themselves."""
    outputs = {o.name for o in graph.model.graph.output}
    return {name: ("graph-output", "its output is a graph output: an int8 one would add a rounding step to what "
                   "the user reads, for no int8 op downstream")
            for name in sorted(candidates)
            if graph.nodes[name].op_type not in COMPUTE_OPS and outputs & set(graph.nodes[name].output)}


def _low_sqnr(graph: Graph, sqnr: Mapping[str, float], candidates: set[str]) -> dict[str, Why]:
    """Compute ops whose input range is far wider than its typical values (measured, not guessed)."""
    measured = {n: min(sqnr[t] for t in graph.nodes[n].input if t in sqnr)
                for n in candidates if graph.nodes[n].op_type in COMPUTE_OPS
                and any(t in sqnr for t in graph.nodes[n].input)}
    finite = [v for v in measured.values() if math.isfinite(v)]
    if not finite:
        return {}
    median = float(np.median(finite))
    limit = max(SQNR_FLOOR_DB, median - SQNR_DROP_DB)
    return {n: ("low-sqnr", f"input range far wider than its typical values: {v:.1f} dB "
                            f"signal-to-quantization-noise, model median {median:.1f} dB")
            for n, v in sorted(measured.items()) if v < limit}
