"""Transformer fusions for ONNX Runtime on the graphs modelport's exporter writes.

ORT's `onnxruntime.transformers` fusion scripts match the attention subgraphs of TorchScript-era exports; the
torch.export-based exporter decomposes `scaled_dot_product_attention` differently (K transposed through a
Reshape/Transpose/Reshape chain, the scale split as sqrt on Q and on K, a boolean mask turned additive by
Where, a NaN guard after Softmax), so none of ORT's attention patterns match and attention runs as separate
MatMul/Softmax/Transpose nodes. This module fuses that decomposition itself, anchored on each Softmax:

- self-attention whose Q, K and V are projections of one input with constant weights (three MatMuls, or one
  MatMul/Gemm split in three as GPT-2 writes it) becomes ORT's `Attention` contrib op: one packed QKV GEMM and
  the attention core in one kernel (`dynamic` INT8 quantizes it as `QAttention`);
- any other match becomes `MultiHeadAttention` on the projected Q, K and V (the projections stay MatMuls,
  which is what static INT8 wants: the QDQ pass quantizes them, the core stays in float);

A site's additive bias that is provably the padding mask (ort_mask) and/or the causal mask (ort_causal) goes: the
fused op takes the raw mask and/or runs unidirectional=1. Then ORT's own fusions run for the rest
(SkipLayerNormalization, BiasGelu, FastGelu, LayerNormalization), with the head count and hidden size found here.
Every Softmax that did not fuse is listed with the reason.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelport.backends.ort_causal import bias_mask
from modelport.backends.ort_mask import NotTheMask, attribute

if TYPE_CHECKING:
    import onnx

MS_DOMAIN = "com.microsoft"
HEADS_PERM = [0, 2, 1, 3]
# What ORT's fusion statistics report that this module reads back, and what each one means when it did not fire.
ORT_FUSIONS = ("SkipLayerNormalization", "LayerNormalization", "BiasGelu", "FastGelu", "Gelu",
               "EmbedLayerNormalization", "SkipSimplifiedLayerNormalization", "SimplifiedLayerNormalization")


@dataclass
class FusionReport:
    """What fused and what did not, with reasons: the manifest's `fusions` entry."""

    attention_op: str | None = None
    attention_fused: int = 0
    attention_sites: int = 0
    num_heads: int = 0
    hidden_size: int = 0
    not_fused: list[dict[str, str]] = field(default_factory=list)
    ort: dict[str, int] = field(default_factory=dict)
    ort_not_fired: dict[str, str] = field(default_factory=dict)
    ort_error: str | None = None
    mask_index: int = 0
    mask_input: str | None = None
    causal: int = 0
    additive_bias: list[dict[str, str]] = field(default_factory=list)
    zero_bias_dropped: int = 0

    @property
    def fired(self) -> bool:
        return bool(self.attention_fused or self.ort)

    def to_json(self) -> dict[str, Any]:
        return {"attention": {"op": self.attention_op, "fused": self.attention_fused, "sites": self.attention_sites,
                              "num_heads": self.num_heads, "hidden_size": self.hidden_size,
                              "not_fused": self.not_fused},
                "mask": {"mask_index": self.mask_index, "input": self.mask_input, "causal": self.causal,
                         "additive_bias": self.additive_bias, "zero_bias_dropped": self.zero_bias_dropped},
                "ort": self.ort, "ort_not_fired": self.ort_not_fired, "ort_error": self.ort_error}


class _NoMatch(Exception):
    """One attention site that does not have the shape this fusion rewrites; the message says where it differs."""


@dataclass
class _Site:
    softmax: Any
    q: str
    k: str
    v: str
    bias: str | None
    scale: float
    head_size: int
    out_reshape: Any
    dead: list[Any]
    bias_factor: float = 1.0  # a scale applied after the bias is added (to the bias too)
    mask: str | None = None  # the raw int32 mask fed instead of the bias, where the bias is the padding mask's
    fill: float = 0.0  # the bias where the mask is 0
    causal: bool = False  # the bias was (also) the causal mask: the fused op runs unidirectional=1 instead


class OnnxGraph:
    """Producers, consumers and constant values of one ONNX graph: what the matcher walks."""

    def __init__(self, model: onnx.ModelProto) -> None:
        from onnx import numpy_helper

        self.model = model
        self.graph = model.graph
        self.producer = {o: n for n in self.graph.node for o in n.output}
        self.consumers: dict[str, list[Any]] = {}
        for node in self.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.const = {i.name: numpy_helper.to_array(i) for i in self.graph.initializer}
        for node in self.graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.const[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        self.outputs = {o.name for o in self.graph.output}

    def make(self, op: str, name: str) -> Any:
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op else None

    def need(self, op: str, name: str, what: str) -> Any:
        node = self.make(op, name)
        if node is None:
            raise _NoMatch(f"{what} comes from {self.origin(name)}, not {op}")
        return node

    def origin(self, name: str) -> str:
        found = self.producer.get(name)
        return found.op_type if found is not None else "a constant" if name in self.const else "a graph input"

    def only_use(self, name: str) -> bool:
        return len(self.consumers.get(name, [])) == 1 and name not in self.outputs

    def scalar(self, name: str) -> float | None:
        value = self.const.get(name)
        return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None


def _scaled(g: OnnxGraph, name: str) -> tuple[str, float, list[Any]]:
    """Strip Mul/Div by a scalar constant: (tensor, factor, the nodes stripped)."""
    factor, nodes = 1.0, []
    while True:
        node = g.producer.get(name)
        if node is None or node.op_type not in ("Mul", "Div") or not g.only_use(node.output[0]):
            return name, factor, nodes
        consts = [g.scalar(i) for i in node.input]
        if node.op_type == "Mul" and consts[1] is not None:
            factor, name = factor * consts[1], node.input[0]
        elif node.op_type == "Mul" and consts[0] is not None:
            factor, name = factor * consts[0], node.input[1]
        elif node.op_type == "Div" and consts[1] is not None:
            factor, name = factor / consts[1], node.input[0]
        else:
            return name, factor, nodes
        nodes.append(node)


def _heads_input(g: OnnxGraph, name: str, what: str) -> tuple[str, int, list[Any]]:
    """(B,S,H*D) -> Reshape(B,S,H,D) -> Transpose(0,2,1,3): the projected tensor, the head size, the two nodes."""
    transpose = g.need("Transpose", name, what)
    if list(attribute(transpose, "perm", [])) != HEADS_PERM:
        raise _NoMatch(f"{what} is transposed with perm {list(attribute(transpose, 'perm', []))}, not {HEADS_PERM}")
    reshape = g.need("Reshape", transpose.input[0], what)
    head = _head_size(g, reshape.input[1])
    if head is None:
        raise _NoMatch(f"the head size of {what} is not a constant in its Reshape")
    return reshape.input[0], head, [transpose, reshape]


def _head_size(g: OnnxGraph, shape: str) -> int | None:
    if shape in g.const:
        dims = g.const[shape].reshape(-1)
        return int(dims[-1]) if dims.size == 4 and dims[-1] > 0 else None
    concat = g.make("Concat", shape)
    if concat is None or len(concat.input) != 4:
        return None
    last = g.const.get(concat.input[-1])
    return int(last.reshape(-1)[0]) if last is not None and last.size == 1 and last.reshape(-1)[0] > 0 else None


def _key_input(g: OnnxGraph, name: str) -> tuple[str, int, list[Any]]:
    """K^T in (B,H,D,S): Transpose(0,1,3,2) of K's heads, the exporter's Reshape/Transpose(0,2,1)/Reshape chain
    of them, or Transpose(0,2,3,1) straight from (B,S,H,D)."""
    node = g.producer.get(name)
    if node is not None and node.op_type == "Transpose" and list(attribute(node, "perm", [])) == [0, 1, 3, 2]:
        k, head, nodes = _heads_input(g, node.input[0], "K")
        return k, head, [node, *nodes]
    if node is not None and node.op_type == "Transpose" and list(attribute(node, "perm", [])) == [0, 2, 3, 1]:
        reshape = g.need("Reshape", node.input[0], "K")
        head = _head_size(g, reshape.input[1])
        if head is None:
            raise _NoMatch("the head size of K is not a constant in its Reshape")
        return reshape.input[0], head, [node, reshape]
    if node is not None and node.op_type == "Reshape":
        transpose = g.need("Transpose", node.input[0], "K")
        if list(attribute(transpose, "perm", [])) != [0, 2, 1]:
            raise _NoMatch("K is not transposed to (B,H,D,S) in a form this fusion knows")
        inner = g.need("Reshape", transpose.input[0], "K")
        k, head, nodes = _heads_input(g, inner.input[0], "K")
        return k, head, [node, transpose, inner, *nodes]
    raise _NoMatch(f"K^T comes from {g.origin(name)}, not a transpose of K")


def _match(g: OnnxGraph, softmax: Any) -> _Site:
    """The attention site around one Softmax, or _NoMatch saying why not."""
    if attribute(softmax, "axis", -1) not in (-1, 3):
        raise _NoMatch("Softmax is not over the last axis")
    probs, dead = softmax.output[0], [softmax]
    users = g.consumers.get(probs, [])
    isnan = next((u for u in users if u.op_type == "IsNaN"), None)
    if isnan is not None:  # the exporter's guard for fully masked rows: Where(IsNaN(p), 0, p)
        where = next((u for u in g.consumers.get(isnan.output[0], []) if u.op_type == "Where"), None)
        if where is None or where.input[2] != probs or len(users) != 2:
            raise _NoMatch("Softmax's output feeds more than attention")
        dead += [isnan, where]
        probs = where.output[0]
    context = g.consumers.get(probs, [])
    if len(context) != 1 or context[0].op_type != "MatMul" or context[0].input[0] != probs:
        raise _NoMatch("the attention probabilities do not feed one MatMul with V")
    matmul_v = context[0]
    v, head_v, nodes = _heads_input(g, matmul_v.input[1], "V")
    dead += [matmul_v, *nodes]
    out = g.consumers.get(matmul_v.output[0], [])
    if len(out) != 1 or out[0].op_type != "Transpose" or list(attribute(out[0], "perm", [])) != HEADS_PERM:
        raise _NoMatch("the attention output is not transposed back to (B,S,H,D)")
    merged = g.consumers.get(out[0].output[0], [])
    if len(merged) != 1 or merged[0].op_type != "Reshape":
        raise _NoMatch("the attention output's heads are not merged by one Reshape")
    dead.append(out[0])
    scores, scale, nodes = _scaled(g, softmax.input[0])
    dead += nodes
    bias, bias_factor = None, scale
    add = g.make("Add", scores)
    if add is not None:
        data = [i for i in add.input if g.make("MatMul", i) is not None or g.make("Mul", i) is not None]
        if len(data) != 1:
            raise _NoMatch("the scores' Add has no single MatMul operand")
        bias = add.input[1] if add.input[0] == data[0] else add.input[0]
        dead.append(add)
        scores, more, nodes = _scaled(g, data[0])
        scale *= more
        dead += nodes
    matmul_qk = g.need("MatMul", scores, "the attention scores")
    dead.append(matmul_qk)
    q_scaled, q_factor, nodes = _scaled(g, matmul_qk.input[0])
    dead += nodes
    k_scaled, k_factor, nodes = _scaled(g, matmul_qk.input[1])
    dead += nodes
    q, head_q, nodes = _heads_input(g, q_scaled, "Q")
    dead += nodes
    k, head_k, nodes = _key_input(g, k_scaled)
    dead += nodes
    if not head_q == head_k == head_v:
        raise _NoMatch(f"Q, K and V have different head sizes ({head_q}, {head_k}, {head_v})")
    return _Site(softmax, q, k, v, bias, scale * q_factor * k_factor, head_q, merged[0], dead, bias_factor)


@dataclass
class _Packed:
    x: str
    weight: np.ndarray
    bias: np.ndarray


def _projection(g: OnnxGraph, name: str) -> tuple[str, np.ndarray, np.ndarray | None] | None:
    """name = X @ W (+ b) with constant W: (X, W, b)."""
    bias = None
    add = g.make("Add", name)
    if add is not None:
        consts = [i for i in add.input if i in g.const]
        if len(consts) != 1:
            return None
        bias = g.const[consts[0]]
        name = add.input[1] if add.input[0] == consts[0] else add.input[0]
    matmul = g.make("MatMul", name)
    if matmul is None or matmul.input[1] not in g.const or g.const[matmul.input[1]].ndim != 2:
        return None
    return matmul.input[0], g.const[matmul.input[1]], bias


def _packed(g: OnnxGraph, site: _Site) -> _Packed | None:
    """Q, K and V as one packed projection of one input, if they are (else None: MultiHeadAttention instead)."""
    split = g.make("Split", site.q)
    if split is not None and list(split.output) == [site.q, site.k, site.v]:
        return _packed_split(g, split)
    parts = [_projection(g, t) for t in (site.q, site.k, site.v)]
    if any(p is None for p in parts) or len({p[0] for p in parts}) != 1:
        return None
    width = parts[0][1].shape[1]
    if any(p[1].shape != parts[0][1].shape for p in parts):
        return None
    biases = [p[2] if p[2] is not None else np.zeros(width, np.float32) for p in parts]
    if any(b.shape != (width,) for b in biases):
        return None
    return _Packed(parts[0][0], np.concatenate([p[1] for p in parts], axis=1), np.concatenate(biases))


def _packed_split(g: OnnxGraph, split: Any) -> _Packed | None:
    """GPT-2's c_attn: Split(Reshape(Gemm(Reshape(X)))) or Split(X @ W + b) in three equal parts of the last axis."""
    if attribute(split, "axis", 0) not in (-1, 2) or (len(split.input) > 1 and split.input[1]):
        return None
    name = split.input[0]
    reshape = g.make("Reshape", name)
    gemm = g.make("Gemm", reshape.input[0]) if reshape is not None else None
    if gemm is not None:
        flat = g.make("Reshape", gemm.input[0])
        plain = (attribute(gemm, "alpha", 1.0) == 1.0 and attribute(gemm, "beta", 1.0) == 1.0
                 and not attribute(gemm, "transA", 0))
        if flat is None or not plain or gemm.input[1] not in g.const:
            return None
        weight = g.const[gemm.input[1]]
        weight = weight.T if attribute(gemm, "transB", 0) else weight
        bias = g.const.get(gemm.input[2]) if len(gemm.input) > 2 and gemm.input[2] else None
        x = flat.input[0]
    else:
        found = _projection(g, name)
        if found is None:
            return None
        x, weight, bias = found
    bias = np.zeros(weight.shape[1], np.float32) if bias is None else np.broadcast_to(bias, (weight.shape[1],))
    return _Packed(x, np.ascontiguousarray(weight, dtype=np.float32), np.ascontiguousarray(bias, dtype=np.float32))


def _rewrite(g: OnnxGraph, site: _Site, index: int, pack: bool, pack_biased: bool) -> tuple[str, int, int]:
    """Put the fused node in the graph (dead nodes are pruned after): (op type, heads, hidden size)."""
    from onnx import helper, numpy_helper

    packed = _packed(g, site) if pack and (pack_biased or not site.bias) else None
    out = f"fused_attention_{index}"
    if packed is not None:
        hidden = packed.weight.shape[1] // 3
        heads = hidden // site.head_size
        w, b = f"fused_attention_{index}_qkv_weight", f"fused_attention_{index}_qkv_bias"
        g.graph.initializer.extend([numpy_helper.from_array(packed.weight.astype(np.float32), w),
                                    numpy_helper.from_array(packed.bias.astype(np.float32), b)])
        inputs = [packed.x, w, b, site.mask or "", "", site.bias or ""]
        op = "Attention"
    else:
        hidden = _width(g, site.q)
        if hidden is None:
            raise _NoMatch("the width of Q is not known (no constant projection weight)")
        heads = hidden // site.head_size
        inputs = [site.q, site.k, site.v, "", site.mask or "", site.bias or ""]
        op = "MultiHeadAttention"
    while inputs and not inputs[-1]:
        inputs.pop()
    masked = {"mask_filter_value": float(site.fill)} if site.mask or site.causal else {}
    if site.causal:
        masked["unidirectional"] = 1
    node = helper.make_node(op, inputs, [out], name=f"{op}_{index}", domain=MS_DOMAIN, num_heads=heads,
                            scale=float(site.scale), **masked)
    position = list(g.graph.node).index(site.out_reshape)
    g.graph.node.insert(position, node)
    site.out_reshape.input[0] = out
    return op, heads, hidden


def _width(g: OnnxGraph, name: str) -> int | None:
    """The width of a projected Q: its weight's columns (a third of them where one projection is split in three)."""
    split = g.make("Split", name)
    if split is not None and len(split.output) == 3:
        packed = _packed_split(g, split)
        return packed.weight.shape[1] // 3 if packed is not None else None
    found = _projection(g, name)
    return int(found[1].shape[1]) if found is not None else None


def prune_dead(model: onnx.ModelProto) -> None:
    """Drop nodes whose outputs nothing reads (the unfused attention left behind), and unused initializers."""
    graph = model.graph
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(keep))
    used = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(used)


def fuse_attention(model: onnx.ModelProto, pack: bool = True, pack_biased: bool = True) -> FusionReport:
    """Fuse every attention site of `model` in place: Attention where Q/K/V pack, else MultiHeadAttention.

    `pack=False` keeps the Q, K, V projections as MatMuls (MultiHeadAttention everywhere), for static INT8;
    `pack_biased=False` does so only where a site keeps an additive bias, for dynamic INT8: ORT's quantizer turns
    Attention into QAttention, which has no attention_bias input and would drop the bias (a proved causal mask is no
    bias: it runs as unidirectional=1, which QAttention keeps).
    """
    from onnx import helper

    report = FusionReport()
    g = OnnxGraph(model)
    softmaxes = [n for n in model.graph.node if n.op_type == "Softmax"]
    report.attention_sites = len(softmaxes)
    sites = []
    for softmax in softmaxes:
        try:
            sites.append(_match(g, softmax))
        except _NoMatch as why:
            report.not_fused.append({"node": softmax.name, "reason": str(why)})
    _masks_as_index(g, sites, report)
    ops = Counter()
    for index, site in enumerate(sites):
        try:
            op, report.num_heads, report.hidden_size = _rewrite(g, site, index, pack, pack_biased)
        except _NoMatch as why:
            report.not_fused.append({"node": site.softmax.name, "reason": str(why)})
            continue
        ops[op] += 1
        report.mask_index += site.mask is not None
        report.causal += site.causal
    report.attention_fused = sum(ops.values())
    report.attention_op = "+".join(sorted(ops)) or None
    if ops:
        if not any(o.domain == MS_DOMAIN for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
        prune_dead(model)
    return report


def _masks_as_index(g: OnnxGraph, sites: list[_Site], report: FusionReport) -> None:
    """Point each site whose bias is the exporter's padding mask at the raw mask, cast to int32 once for all
    layers (through bool: nonzero keeps, as the exporter's Cast to bool does, for any mask values), mark a site
    whose bias is (also) the causal mask to run unidirectional, and drop a bias that is 0 everywhere; the others keep
    their additive bias, with the reason in the report."""
    from onnx import TensorProto, helper

    cast: dict[str, str] = {}
    for site in sites:
        if site.bias is None:
            continue
        try:
            if site.bias_factor != 1.0:
                raise NotTheMask(f"the scores are scaled by {site.bias_factor:g} after the bias is added")
            found = bias_mask(g, site.bias)
        except NotTheMask as why:
            report.additive_bias.append({"node": site.softmax.name, "reason": str(why)})
            continue
        site.bias = None
        if found is None:  # 0 everywhere: adding it changes nothing
            report.zero_bias_dropped += 1
            continue
        site.causal, site.fill = found.causal, found.fill
        if found.padding is None:
            continue
        if found.padding not in cast:
            keep, cast[found.padding] = f"{found.padding}_keep", f"{found.padding}_int32"
            g.graph.node.insert(0, helper.make_node("Cast", [keep], [cast[found.padding]], to=TensorProto.INT32,
                                                    name=f"{found.padding}_to_int32"))
            g.graph.node.insert(0, helper.make_node("Cast", [found.padding], [keep], to=TensorProto.BOOL,
                                                    name=f"{found.padding}_to_bool"))
        site.mask, report.mask_input = cast[found.padding], found.padding


def fuse_transformer(src: Path, dst: Path, pack: bool = True, pack_biased: bool = True) -> FusionReport:
    """Attention fused here, then ORT's fusions for the rest; writes `dst` when anything fused."""
    import onnx

    from modelport.ort_session import quiet_ort_tools

    model = onnx.load(str(src))
    dst = Path(dst).resolve()
    report = fuse_attention(model, pack, pack_biased)
    before = Counter(n.op_type for n in model.graph.node)
    try:
        from onnxruntime.transformers.fusion_options import FusionOptions
        from onnxruntime.transformers.optimizer import optimize_model

        options = FusionOptions("bert")
        options.enable_attention = False  # done above: ORT's patterns do not match this exporter's attention
        options.enable_embed_layer_norm = False  # its output layout differs from the exporter's embeddings
        # ORT's SkipLayerNorm fusion runs symbolic shape inference, which on failure writes
        # sym_shape_infer_temp.onnx and its weights into the working directory: give it a scratch one
        with quiet_ort_tools(), tempfile.TemporaryDirectory(prefix="modelport-fusion-") as scratch, \
                contextlib.chdir(scratch):
            optimized = optimize_model(model, model_type="bert", num_heads=report.num_heads,
                                       hidden_size=report.hidden_size, opt_level=0, optimization_options=options)
        model = optimized.model
        stats = optimized.get_fused_operator_statistics() or {}
        present = Counter(n.op_type for n in model.graph.node)
        report.ort = {k: present[k] - before[k] for k in ORT_FUSIONS if present[k] > before[k]}
        report.ort_not_fired = {k: "no matching subgraph" for k in ("SkipLayerNormalization", "BiasGelu", "FastGelu")
                                if k in stats and not present[k]}
        report.ort_not_fired["EmbedLayerNormalization"] = "off: the fused op's outputs differ from the exporter's"
    except Exception as exc:  # ORT's scripts fail on a graph they do not understand: the attention fusion stands
        report.ort_error = f"{type(exc).__name__}: {exc}"
    if report.fired:
        _declare_float_outputs(model)
        if any(n.domain == MS_DOMAIN for n in model.graph.node) and \
                not any(o.domain == MS_DOMAIN for o in model.opset_import):  # ORT's fusions may not declare it
            model.opset_import.append(onnx.helper.make_opsetid(MS_DOMAIN, 1))
        onnx.save(model, str(dst))
    return report


def _declare_float_outputs(model: onnx.ModelProto) -> None:
    """Type the outputs of the fused (com.microsoft) nodes: ONNX shape inference does not know them, and ORT's
    quantizer skips a MatMul whose input has no known type (the projection after attention stayed float)."""
    from onnx import TensorProto, helper

    typed = {v.name for v in [*model.graph.value_info, *model.graph.output]}
    for node in model.graph.node:
        if node.domain == MS_DOMAIN:
            model.graph.value_info.extend(helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
                                          for o in node.output if o and o not in typed)


# The fused graph computes the same function in other kernels: beyond this (max error over the output's scale on the
# example inputs) it is not the same model, and the build keeps the unfused graph.
FUSED_RTOL = 1e-4


def approximate_gelu(model: onnx.ModelProto) -> int:
    """Gelu and BiasGelu become ORT's FastGelu (the tanh approximation, what Optimum's O3 does), in place: how many.
    Not the same function: ~1e-3 off erf GELU at its worst, so only where a build asks for it."""
    count = 0
    for node in model.graph.node:
        if node.op_type in ("Gelu", "BiasGelu") and node.domain in ("", MS_DOMAIN):
            node.op_type, node.domain = "FastGelu", MS_DOMAIN  # FastGelu takes (X) or (X, bias), as these do
            del node.attribute[:]  # ONNX Gelu's `approximate`, which FastGelu has no use for
            count += 1
    return count


def _worst_rel(want: list[np.ndarray], got: list[np.ndarray]) -> float:
    """The largest error of any output, relative to that output's scale."""
    from modelport.exporters.parity import output_error

    return max(output_error(a, b).max_rel for a, b in zip(want, got, strict=True))


def fused_for_build(src: Path, dst: Path, feeds: Mapping[str, np.ndarray], pack: bool = True,
                    gelu: str = "exact", pack_biased: bool = True) -> tuple[Path, dict[str, Any]]:
    """The graph a build should start from (`dst` when fusions fired and kept the outputs, else `src`), and the
    manifest's record of what fused, what did not and why. `gelu="approximate"` then swaps the fused graph's GELUs
    for FastGelu and records how far that moves the outputs (it is not held to FUSED_RTOL: the build asked)."""
    import onnx

    from modelport.ort_session import ort_session

    report = fuse_transformer(src, dst, pack, pack_biased)
    record = report.to_json()
    if not report.fired:
        record["applied"] = False
        record["reason"] = ("no attention, LayerNorm or GELU subgraph matched: the graph builds unfused"
                            if not report.attention_sites else "no attention site matched (see not_fused)")
        return src, record
    plain = ort_session(src)
    names = [o.name for o in plain.get_outputs()]
    bound = {i.name: np.asarray(feeds[i.name]) for i in plain.get_inputs()}
    want = plain.run(names, bound)
    try:  # a fused op ORT rejects on these inputs (an additive bias it cannot broadcast) leaves the graph unfused
        got = ort_session(dst).run(names, bound)
    except Exception as exc:
        record["applied"] = False
        record["reason"] = f"the fused graph does not run on the example inputs ({type(exc).__name__}: " \
                           f"{str(exc).splitlines()[0][:300]}): the graph builds unfused"
        return src, record
    worst = _worst_rel(want, got)
    record["max_rel_error_vs_unfused"] = float(f"{worst:.3g}")
    record["applied"] = worst <= FUSED_RTOL
    if not record["applied"]:
        record["reason"] = (f"the fused graph differs from the unfused one by {worst:.3g} of the output's scale "
                            f"(over {FUSED_RTOL:g}) on the example inputs: the graph builds unfused")
        return src, record
    if gelu == "approximate":
        model = onnx.load(str(dst))
        count = approximate_gelu(model)
        onnx.save(model, str(dst))
        drift = _worst_rel(want, ort_session(dst).run(names, bound))
        record["gelu_approximation"] = {"fast_gelu": count, "max_rel_error_vs_unfused": float(f"{drift:.3g}")}
    return dst, record
