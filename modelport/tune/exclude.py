"""How each backend keeps a list of ONNX nodes out of INT8, as build options: the only backend knowledge tune has.

A backend missing from `TO_OPTIONS` has no per-layer float option (TFLite: its options are layout, dynamic, io
and ops), so the search can only judge its full INT8 build.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from modelport.debug.mapping import Layer

ToOptions = Callable[[Sequence[str]], dict[str, str]]


def _exclude(nodes: Sequence[str]) -> dict[str, str]:
    """ONNX Runtime and TensorRT (the shared QDQ pass's `exclude`) and OpenVINO (NNCF's ignored scope, or the QDQ
    pass with source=qdq) all take ONNX node names in `exclude`."""
    return {"exclude": ",".join(nodes)}


TO_OPTIONS: dict[str, ToOptions] = {"onnxruntime": _exclude, "openvino": _exclude, "tensorrt": _exclude}

# Activations the QDQ pass folds into the Conv/Gemm/MatMul before them: keeping one alone in float changes nothing.
FOLDED = ("Relu", "Clip", "LeakyRelu")
FOLDS_INTO = ("Conv", "Gemm", "MatMul", "ConvTranspose")


def with_nodes(backend: str, options: Mapping[str, Any], nodes: Sequence[str]) -> dict[str, Any]:
    """The user's options plus what keeps `nodes` in float, joined to any list the user already gave."""
    merged = dict(options)
    for key, value in TO_OPTIONS[backend](nodes).items():
        given = merged.get(key)
        given = ",".join(given) if isinstance(given, list | tuple) else given
        merged[key] = f"{given},{value}" if given and value else value or given
    return merged


def layer_groups(layers: Sequence[Layer]) -> dict[str, tuple[str, ...]]:
    """ONNX node -> the nodes kept in float together with it: a Conv/Gemm/MatMul and the activation folded into it
    (either one brings the other), any other node alone."""
    producer = {layer.tensor: layer for layer in layers}
    groups: dict[str, tuple[str, ...]] = {}
    for layer in layers:
        if not layer.onnx_node:
            continue
        before = producer.get(layer.inputs[0]) if layer.op_type in FOLDED and layer.inputs else None
        if before is not None and before.onnx_node and before.op_type in FOLDS_INTO:
            pair = (before.onnx_node, layer.onnx_node)
            groups[before.onnx_node] = groups[layer.onnx_node] = pair
        else:
            groups.setdefault(layer.onnx_node, (layer.onnx_node,))
    return groups
