"""The exporter's attention rewritten in the plain form OpenVINO's SDPA fusion recognises (standard ONNX ops only).

torch.export decomposes `scaled_dot_product_attention` with two things OpenVINO's ScaledDotProductAttention
fusion does not match: K^T made by Reshape(B*H,S,D) -> Transpose(0,2,1) -> Reshape(B,H,D,S), and a NaN guard
after the Softmax (Where(IsNaN(p), 0, p), for rows that are fully masked). Left as is, the IR keeps attention
as MatMul/Softmax/MatMul; rewritten (K^T as one Transpose(0,1,3,2), the guard dropped) the IR gets one
ScaledDotProductAttention per layer, which the CPU plugin runs as one fused kernel. The guard only matters for
a row whose every score is -inf; the exporter's masks add the dtype's minimum, which never gives one, and the
build compares the rewritten graph's outputs with the original's before it keeps it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelport.backends.ort_fusion import OnnxGraph, attribute, prune_dead

if TYPE_CHECKING:
    import onnx


def _redirect(g: OnnxGraph, old: str, new: str) -> None:
    for node in g.consumers.get(old, []):
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def _drop_nan_guards(g: OnnxGraph) -> int:
    dropped = 0
    for softmax in [n for n in g.graph.node if n.op_type == "Softmax"]:
        users = g.consumers.get(softmax.output[0], [])
        isnan = next((u for u in users if u.op_type == "IsNaN"), None)
        where = next((u for u in g.consumers.get(isnan.output[0], []) if u.op_type == "Where"), None) if isnan else None
        zero = g.scalar(where.input[1]) if where is not None else None
        if where is not None and where.input[2] == softmax.output[0] and zero == 0.0:
            _redirect(g, where.output[0], softmax.output[0])
            dropped += 1
    return dropped


def _collapse_key_transposes(g: OnnxGraph) -> int:
    """Reshape(Transpose(0,2,1)(Reshape(K4))) feeding a scores MatMul (through a scale) -> Transpose(0,1,3,2)(K4)."""
    from onnx import helper

    collapsed = 0
    for matmul in [n for n in g.graph.node if n.op_type == "MatMul"]:
        operand = matmul.input[1]
        scale = g.make("Mul", operand)
        if scale is not None:
            operand = next((i for i in scale.input if g.scalar(i) is None), operand)
        outer = g.make("Reshape", operand)
        transpose = g.make("Transpose", outer.input[0]) if outer is not None else None
        inner = g.make("Reshape", transpose.input[0]) if transpose is not None else None
        heads = g.make("Transpose", inner.input[0]) if inner is not None else None
        if heads is None or list(attribute(transpose, "perm", [])) != [0, 2, 1] or \
                list(attribute(heads, "perm", [])) != [0, 2, 1, 3]:
            continue
        node = helper.make_node("Transpose", [inner.input[0]], [f"{outer.output[0]}_key_t"], perm=[0, 1, 3, 2],
                                name=f"{outer.name or outer.output[0]}_key_t")
        g.graph.node.insert(list(g.graph.node).index(outer), node)
        _redirect(g, outer.output[0], node.output[0])
        collapsed += 1
    return collapsed


def normalize_attention(model: onnx.ModelProto) -> dict[str, int]:
    """Rewrite `model` in place; how many NaN guards were dropped and K transposes collapsed."""
    g = OnnxGraph(model)
    counts = {"nan_guards_dropped": _drop_nan_guards(g), "key_transposes_collapsed": _collapse_key_transposes(g)}
    if any(counts.values()):
        prune_dead(model)
    return counts
