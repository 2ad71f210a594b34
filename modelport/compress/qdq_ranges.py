"""QAT's learned ranges named as the QDQ pass meets them: by the ONNX tensors the quantized layers read.

OUT.pt2 is exported as `modelport build` exports it (the same ModelBundle, cached, so the build reuses
this export). A quantized layer's node is the Conv/Gemm/MatMul whose weight initializer carries the
layer's parameter name, else the one whose torch name scope (node metadata the dynamo exporter writes,
`pkg.torch.onnx.name_scopes`, a Python list literal: the module paths, then the op) is the layer, as for
a Linear on 3-D inputs (a MatMul whose weight is a transposed copy); its first input is the tensor
the layer's input quantizer stood for. The int8 builds of OUT.pt2 read the file from beside it (or from
`--option ranges_file=`).
"""

from __future__ import annotations

import ast
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modelport.artifact import file_sha256
from modelport.quantize.given import path_beside
from modelport.quantize.graph import COMPUTE_OPS

FORMAT = "modelport.ranges/1"
_SCOPES = "pkg.torch.onnx.name_scopes"


def _layer_of(node: Any, layers: set[str]) -> str | None:
    for name in node.input[1:2]:
        if name.endswith(".weight") and name[:-len(".weight")] in layers:
            return name[:-len(".weight")]
    scopes = next((ast.literal_eval(p.value) for p in node.metadata_props if p.key == _SCOPES), None)
    return scopes[-2] if scopes and len(scopes) >= 2 and scopes[-2] in layers else None


def by_tensor(onnx_path: Path, learned: Mapping[str, tuple[float, float]]) -> tuple[dict[str, list[float]],
                                                                                   dict[str, list[str]]]:
    """({tensor: [min, max]}, {tensor: layers}) for the layers found in the graph; a tensor read by several
    quantized layers gets the union of their ranges (one QuantizeLinear serves them all)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    ranges: dict[str, list[float]] = {}
    layers: dict[str, list[str]] = {}
    for node in graph.node:
        layer = _layer_of(node, set(learned)) if node.op_type in COMPUTE_OPS else None
        if layer is None:
            continue
        tensor, (lo, hi) = node.input[0], learned[layer]
        old = ranges.get(tensor, [lo, hi])
        ranges[tensor] = [min(old[0], lo), max(old[1], hi)]
        layers.setdefault(tensor, []).append(layer)
    return ranges, layers


def build_command(out: Path, calibration: str) -> str:
    return f"modelport build {out} -b onnxruntime -p int8 --calib {calibration}"


def write_ranges(out: Path, learned: Mapping[str, tuple[float, float]], calibration: str) -> dict[str, Any]:
    """Export OUT.pt2 as the builds will, write OUT.pt2.ranges.json (with OUT.pt2's SHA-256, so that the int8
    builds of OUT.pt2 pick it up, and of no other file); returns what the report says of it."""
    from modelport.bundle import ModelBundle
    from modelport.model import load_model

    onnx_path = ModelBundle(load_model(str(out))).onnx_path
    ranges, layers = by_tensor(onnx_path, learned)
    path = path_beside(out)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps({"format": FORMAT, "model": out.name, "model_sha256": file_sha256(out),
                               "ranges": ranges, "layers": layers}, indent=1))
    tmp.replace(path)
    named = {layer for names in layers.values() for layer in names}
    return {"ranges_file": str(path), "tensors": len(ranges), "layers": {t: ls for t, ls in layers.items()},
            "unnamed_layers": sorted(set(learned) - named), "build": build_command(out, calibration)}
