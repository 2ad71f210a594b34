"""TFLite's `exclude`: the ONNX nodes the search and debug name, found among the ops of the float .tflite.

A node's ops are those whose outputs lie in its torch module (litert-torch names each op's output tensors by module
location and the dynamo ONNX exporter records each node's module scopes: modelport/exporters/module_names.py), and
the op writing the tensor debug's mapping (exporters/tensor_map.py, the same code) matches to the node's output:
the op writing a model output (litert-torch renames those tensors `serving_default_...`), an op with the node's
activation fused into it, or a pass-through op of the node's kind reading what the node's input maps to. So a
functional `torch.sigmoid` ending a model, a functional `F.relu` fused into its conv, or a functional `F.max_pool2d`
can be kept in float although no module of its own made it. ai-edge-quantizer matches its recipe by regex on
an op's scope (its output tensor names joined by ';'), so each matched op's exact scope becomes a NO_QUANTIZE
entry of the recipe.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelport.errors import BadInput
from modelport.exporters.module_names import module_path, tensor_modules
from modelport.exporters.tensor_map import map_tensors, reference_layers


@dataclass(frozen=True)
class FloatOps:
    """The TFLite ops kept in float for each named ONNX node, by op type and scope."""

    ops: dict[str, list[dict[str, str]]]

    @property
    def regex(self) -> str:
        """One regex matching exactly the scopes of every op kept in float."""
        scopes = dict.fromkeys(op["scope"] for found in self.ops.values() for op in found)
        return "^(?:" + "|".join(re.escape(s) for s in scopes) + ")$"

    def to_json(self) -> dict[str, Any]:
        return {"onnx_nodes": list(self.ops), "tflite_ops": self.ops}


def fused_activations(model: Any) -> dict[tuple[int, int], str]:
    """(subgraph, tensor index) -> the activation fused into the op writing it (RELU, RELU6...), from a flatbuffer
    model as `flatbuffer_utils.read_model` reads it; a QUANTIZE or DEQUANTIZE of such a tensor (an op kept in float
    between int8 neighbours) carries the activation on."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    names = {v: k for k, v in vars(schema.ActivationFunctionType).items() if not k.startswith("_")}
    found = {}
    for s, subgraph in enumerate(model.subgraphs):
        for op in subgraph.operators:  # in execution order: a QUANTIZE comes after the op it reads
            kind = getattr(op.builtinOptions, "fusedActivationFunction", 0) or 0
            carried = (found.get((s, op.inputs[0])) if op.inputs and flatbuffer_utils.opcode_to_name(
                model, op.opcodeIndex) in ("QUANTIZE", "DEQUANTIZE") else None)
            if kind or carried:
                found.update({(s, i): carried or names.get(kind, str(kind)) for i in op.outputs if i >= 0})
    return found


def tensor_producers(model: Any) -> dict[tuple[int, int], tuple[str, tuple[int, int] | None]]:
    """(subgraph, tensor index) -> the type of the op writing it and that op's first input, from a flatbuffer model as
    `flatbuffer_utils.read_model` reads it: what debug's mapping finds pass-through ops of no module by."""
    from ai_edge_litert.tools import flatbuffer_utils

    found = {}
    for s, subgraph in enumerate(model.subgraphs):
        for op in subgraph.operators:
            kind = flatbuffer_utils.opcode_to_name(model, op.opcodeIndex)
            first = (s, op.inputs[0]) if len(op.inputs) and op.inputs[0] >= 0 else None
            found.update({(s, i): (kind, first) for i in op.outputs if i >= 0})
    return found


def find_float_ops(tflite: Path, onnx_path: Path, nodes: Sequence[str], outputs: Mapping[str, str]) -> FloatOps:
    """The ops of the float .tflite at `tflite` implementing each ONNX node of `nodes`; BadInput naming a node the
    ONNX graph lacks, or one no op implements. `outputs`: model output name -> signature output name."""
    import onnx
    from ai_edge_litert.tools import flatbuffer_utils
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    by_name = {n.name: n for n in graph.node if n.name and n.op_type != "Constant"}
    unknown = [n for n in nodes if n not in by_name]
    if unknown:
        raise BadInput(f"exclude: no ONNX node named {', '.join(unknown)}. Known: {', '.join(by_name)}.",
                       hint="Name ONNX nodes as `modelport debug` lists them.")
    modules = {m for m in map(module_path, graph.node) if m}
    model = flatbuffer_utils.read_model(str(tflite))
    model_output = {signature: name for name, signature in outputs.items()}
    signature_tensors = {(sig.subgraphIndex, t.tensorIndex): model_output.get(_text(t.name), _text(t.name))
                         for sig in model.signatureDefs or [] for t in sig.outputs}
    activations = fused_activations(model)
    tensor_names = {(s, i): signature_tensors.get((s, i), _text(t.name))
                    for s, subgraph in enumerate(model.subgraphs) for i, t in enumerate(subgraph.tensors)}
    producers = {tensor_names[out]: (kind, tensor_names.get(first) if first else None)
                 for out, (kind, first) in tensor_producers(model).items()}
    ops = []  # (type, scope, modules of its outputs, its outputs named as debug's mapping names them)
    fused: dict[str, str] = {}
    for s, subgraph in enumerate(model.subgraphs):
        for op in subgraph.operators:
            written = [i for i in op.outputs if i >= 0]
            names = [signature_tensors.get((s, i), _text(subgraph.tensors[i].name)) for i in written]
            fused.update({n: activations[(s, i)] for n, i in zip(names, written, strict=True) if (s, i) in activations})
            ops.append((flatbuffer_utils.opcode_to_name(model, op.opcodeIndex),
                        tfl_flatbuffer_utils.get_op_scope(op, subgraph.tensors),
                        {m for name in names for m in tensor_modules(name, modules)}, set(names)))
    matched = map_tensors(reference_layers(onnx_path), [n for op in ops for n in op[3]], by_module=True, fused=fused,
                          producers=producers)
    found: dict[str, list[dict[str, str]]] = {}
    for name in nodes:
        node = by_name[name]
        module = module_path(node)
        mine = {matched[o] for o in node.output if o in matched}
        found[name] = [{"op": kind, "scope": scope} for kind, scope, in_modules, names in ops
                       if (module is not None and module in in_modules) or mine & names]
    unmatched = [n for n, hits in found.items() if not hits]
    if unmatched:
        raise BadInput(f"exclude: no TFLite op implements ONNX node(s) {', '.join(unmatched)} (litert-torch names "
                       "ops by torch module; these come from no module of their own and write no tensor debug maps, "
                       "or were folded away).",
                       hint="Keep the node's module in float through a node that has one: "
                            + ", ".join(n for n in by_name if module_path(by_name[n])) + ".")
    return FloatOps(found)


def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")
