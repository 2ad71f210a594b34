"""TFLite's `exclude`: the ONNX nodes the search and debug name, found among the ops of the float .tflite.

litert-torch names each op's output tensors by torch module location and the dynamo ONNX exporter records each
node's module scopes, so a node's ops are those whose outputs lie in its module (modelport/exporters/
module_names.py); a node that makes a model output also takes the op writing that signature output (litert-torch
renames those tensors `serving_default_...`). ai-edge-quantizer matches its recipe by regex on an op's scope (its
output tensor names joined by ';'), so each matched op's exact scope becomes a NO_QUANTIZE entry of the recipe.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelport.errors import BadInput
from modelport.exporters.module_names import module_path, tensor_modules


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
    signature_tensors = {(sig.subgraphIndex, t.tensorIndex): _text(t.name)
                         for sig in model.signatureDefs or [] for t in sig.outputs}
    ops = []  # (type, scope, modules of its outputs, signature outputs it writes)
    for s, subgraph in enumerate(model.subgraphs):
        for op in subgraph.operators:
            names = [_text(subgraph.tensors[i].name) for i in op.outputs if i >= 0]
            ops.append((flatbuffer_utils.opcode_to_name(model, op.opcodeIndex),
                        tfl_flatbuffer_utils.get_op_scope(op, subgraph.tensors),
                        {m for name in names for m in tensor_modules(name, modules)},
                        {signature_tensors[(s, i)] for i in op.outputs if (s, i) in signature_tensors}))
    graph_outputs = {o.name for o in graph.output}
    found: dict[str, list[dict[str, str]]] = {}
    for name in nodes:
        node = by_name[name]
        module = module_path(node)
        written = {outputs[o] for o in node.output if o in graph_outputs and o in outputs}
        found[name] = [{"op": kind, "scope": scope} for kind, scope, in_modules, writes in ops
                       if (module is not None and module in in_modules) or written & writes]
    unmatched = [n for n, matched in found.items() if not matched]
    if unmatched:
        raise BadInput(f"exclude: no TFLite op implements ONNX node(s) {', '.join(unmatched)} (litert-torch names "
                       "ops by torch module; these come from no module of their own, or were folded away).",
                       hint="Keep the node's module in float through a node that has one: "
                            + ", ".join(n for n in by_name if module_path(by_name[n])) + ".")
    return FloatOps(found)


def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")
