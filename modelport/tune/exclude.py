"""How each backend keeps a list of ONNX nodes out of INT8, as build options: the only backend knowledge tune has.

Every backend here takes ONNX node names in `exclude`. TFLite finds each node's ops by torch module (litert-torch
names ops by module location) or by the tensor debug maps to the node (exporters/tensor_map.py: a model output, an
activation fused into its conv), so a node of the model's own forward is a candidate there only where debug mapped
it (`KEEPABLE`). A backend missing from `TO_OPTIONS` has no per-layer float option, so the search can only judge its
full INT8 build.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelport.exporters.tensor_map import Layer

ToOptions = Callable[[Sequence[str]], dict[str, str]]


def _exclude(nodes: Sequence[str]) -> dict[str, str]:
    """ONNX Runtime and TensorRT (the shared QDQ pass's `exclude`), OpenVINO (NNCF's ignored scope, or the QDQ
    pass with source=qdq) and TFLite (ai-edge-quantizer's NO_QUANTIZE on the node's ops) all take ONNX node names
    in `exclude`."""
    return {"exclude": ",".join(nodes)}


TO_OPTIONS: dict[str, ToOptions] = {"onnxruntime": _exclude, "openvino": _exclude, "tensorrt": _exclude,
                                    "tflite": _exclude}
# Which ONNX nodes a backend can keep in float, where not every one (the rest are left out of the ranked groups),
# given the nodes debug mapped to a runtime tensor of the artifact.
KEEPABLE: dict[str, Callable[[Layer, Collection[str]], bool]] = {
    "tflite": lambda layer, mapped: layer.module is not None or layer.onnx_node in mapped}


@dataclass(frozen=True)
class Route:
    """Options under which a backend builds differently from its default, and why the search judges that build."""

    options: dict[str, str]
    why: str
    unless: Mapping[str, str] = field(default_factory=dict)  # user options under which these cannot be asked for
    precision: str | None = None  # a HALF route's: what the layers kept out of INT8 compute in


# Measured on tests/outlier.py's planted outlier (24 held-out samples): NNCF's ignored scope does keep the named
# layers in float, but the SQNR stayed at 17.0-17.1 dB with 1, 2 or 3 of the ranked groups in it (full INT8: 17.1);
# the QDQ pass with the same exclusion reached 31 dB keeping `wide` alone out and met cos>=0.9999 keeping `head`.
ROUTES: dict[str, Route] = {"openvino": Route(
    {"source": "qdq"}, "NNCF's ignored scope left the planted-outlier model at 17 dB whatever it kept out, so layers "
                       "are kept in float through the shared QDQ pass (source=qdq) and its exclude")}


def _ort_faster(details: Mapping[str, Any]) -> Route | None:
    guard = details.get("fidelity_guard") or {}
    if guard.get("chosen") != "full_range":
        return None
    return Route({"quant_type": "u8s8", "reduce_range": "true"},
                 "the int8 fidelity guard took u8u8 with 8-bit weights for fidelity; this CPU's u8s8 kernels with "
                 "7-bit weights run faster (CREPE tiny: 1.39x FP32 against 1.13x), so they are judged too")


# Where a backend's default INT8 build chose fidelity over speed: the faster build the search judges beside it
# when the default meets the budget (the fastest candidate that meets it ships).
FASTER: dict[str, Callable[[Mapping[str, Any]], Route | None]] = {"onnxruntime": _ort_faster}


def faster_for(backend: str, details: Mapping[str, Any], options: Mapping[str, Any]) -> Route | None:
    """The faster variant of a built INT8 artifact (its manifest `details`); none where the user chose its options."""
    variant = FASTER[backend](details) if backend in FASTER else None
    return variant if variant is not None and not set(variant.options) & set(options) else None


# A full INT8 build that is closer to float than the default on some models and farther on others, so the default
# does not take it: where the default misses, it is judged too and the search goes on from the closer of the two.
ALTERNATIVES: dict[str, Route] = {"tflite": Route(
    {"ops": "mixed"}, "float-output FULLY_CONNECTED layers (ops=mixed) lift CREPE tiny from 34.2 to 35.9 dB but drop "
                      "a planted 1000x outlier from 27.7 to 16.3, so the default (full-integer) build does not take "
                      "them; judged beside it, the search starts from the closer", unless={"io": "int8"})}


def _openvino_half(options: Mapping[str, Any]) -> Route | None:
    from modelport.backends.openvino import native_bf16

    if not native_bf16(str(options.get("device", "cpu"))):
        return None
    return Route({"inference_precision": "bf16"},
                 "this device computes BF16 natively (AMX or AVX512_BF16), so the layers kept out of INT8 run in BF16 "
                 "before FP32 is tried: CREPE tiny met cos>=0.9999 with 10 nodes in BF16 at 1.08x the full INT8 "
                 "build's time and 0.81x FP32's, where 6 nodes in FP32 met it at 1.35x and 1.03x",
                 precision="bf16")


# Where a backend runs the layers kept out of INT8 in a half precision that is fast on this machine: the options
# that ask for it. The search keeps layers in it first, and in FP32 only where no such candidate meets the budget.
HALF: dict[str, Callable[[Mapping[str, Any]], Route | None]] = {"openvino": _openvino_half}


def _open(route: Route | None, options: Mapping[str, Any]) -> Route | None:
    """`route`, unless the user chose an option it sets or one it cannot go with."""
    if route is None or set(route.options) & set(options):
        return None
    return None if any(str(options.get(k, "")).lower() == v for k, v in route.unless.items()) else route


def route_for(backend: str, options: Mapping[str, Any]) -> Route | None:
    """The route the search takes past a missed default INT8 build; none where the user chose the options it sets."""
    return _open(ROUTES.get(backend), options)


def alternative_for(backend: str, options: Mapping[str, Any]) -> Route | None:
    """The alternative full INT8 build judged beside a missed default one (ALTERNATIVES); none where the user chose
    the options it sets or one it cannot go with."""
    return _open(ALTERNATIVES.get(backend), options)


def half_for(backend: str, options: Mapping[str, Any]) -> Route | None:
    """The options that keep layers out of INT8 in a fast half precision (HALF); none where this machine has none
    or the user chose the precision."""
    make = HALF.get(backend)
    return _open(make(options), options) if make is not None else None


def describe_exclusion(backend: str, options: Mapping[str, Any]) -> str:
    """How the candidates of `backend` built with `options` keep layers out of INT8, for the manifest."""
    if backend not in TO_OPTIONS:
        return f"none: {backend} has no option to keep single layers in float, so only full INT8 is judged"
    if backend == "openvino" and options.get("source", "nncf") == "nncf":
        return "NNCF's ignored scope (exclude)"
    if backend == "tflite":
        return ("ai-edge-quantizer's NO_QUANTIZE on the TFLite ops litert-torch made from each ONNX node's torch "
                "module or writing the tensor debug maps to it (exclude); nodes of the model's own forward that debug "
                "maps to no tensor are not tried")
    return "the shared QDQ pass's exclude: no Q/DQ around the named ONNX nodes" + (
        " (source=qdq)" if backend == "openvino" else "")

# Activations the QDQ pass folds into the Conv/Gemm/MatMul before them: keeping one alone in float changes nothing.
FOLDED = ("Relu", "Clip", "LeakyRelu")
FOLDS_INTO = ("Conv", "Gemm", "MatMul", "ConvTranspose")
# Ops that only move or select values: their INT8 output reuses their input's scale, so the rounding of a tensor
# they read reappears in their output unless the ops reading that are kept in float too.
PASS_THROUGH = frozenset({"MaxPool", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Split",
                          "Gather", "Concat", "Identity", "Pad", "Expand", "Tile", "DepthToSpace", "SpaceToDepth",
                          *FOLDED})
# Backends whose search keeps single ops in float rather than whole tensors. On TFLite an INT8 producer hands its
# INT8 tensor on as well, but keeping the op alone in float (its weights and arithmetic) did better: on the digits CNN
# at cos>=0.9999 it met at 39.9 dB and 1.04x FP32's time with 5 nodes, the tensor groups at 54.3 dB and 1.15x with 9.
OP_GROUPS = frozenset({"tflite"})


def already_float(details: Mapping[str, Any]) -> set[str]:
    """The ONNX nodes a QDQ-pass build kept in float by its rules (ONNX Runtime's `kept_float`, OpenVINO's under
    `qdq`): a group of only these changes nothing when kept in float, however large debug's jump at it (a float
    Sigmoid reshapes its input's error, it adds none)."""
    kept = details.get("kept_float") or (details.get("qdq") or {}).get("kept_float") or ()
    return {k["node"] for k in kept if isinstance(k, Mapping) and "node" in k}


def with_nodes(backend: str, options: Mapping[str, Any], nodes: Sequence[str]) -> dict[str, Any]:
    """The user's options plus what keeps `nodes` in float, joined to any list the user already gave."""
    merged = dict(options)
    for key, value in TO_OPTIONS[backend](nodes).items():
        given = merged.get(key)
        given = ",".join(given) if isinstance(given, list | tuple) else given
        merged[key] = f"{given},{value}" if given and value else value or given
    return merged


def layer_groups(layers: Sequence[Layer], backend: str | None = None,
                 mapped: Collection[str] = ()) -> dict[str, tuple[str, ...]]:
    """ONNX node -> the nodes kept in float together so that the error debug measured at its output stays out.

    A Conv/Gemm/MatMul and the activation folded into it are one unit (either brings the other). The QDQ pass and
    NNCF round a tensor wherever an op on either side of it is INT8 (each INT8 op's inputs and outputs), so there a
    tensor stays float only with its producer and every reader in float, following pass-through readers (MaxPool,
    Reshape...) to the compute ops behind them; on `OP_GROUPS` backends a unit is kept alone. Only the nodes
    `backend` can keep in float take part (`mapped`: the nodes debug mapped to a runtime tensor)."""
    rule = KEEPABLE.get(backend or "")

    def keeps(layer: Layer) -> bool:
        return rule is None or rule(layer, mapped)

    units = _units([layer for layer in layers if layer.onnx_node and keeps(layer)])
    return units if backend in OP_GROUPS else _tensor_groups(layers, units)


def _units(layers: Sequence[Layer]) -> dict[str, tuple[str, ...]]:
    producer = {layer.tensor: layer for layer in layers}
    units: dict[str, tuple[str, ...]] = {}
    for layer in layers:
        before = producer.get(layer.inputs[0]) if layer.op_type in FOLDED and layer.inputs else None
        if before is not None and before.op_type in FOLDS_INTO:
            units[before.onnx_node] = units[layer.onnx_node] = (before.onnx_node, layer.onnx_node)
        else:
            units.setdefault(layer.onnx_node, (layer.onnx_node,))
    return units


def _tensor_groups(layers: Sequence[Layer], units: Mapping[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    readers: dict[str, list[Layer]] = {}
    for layer in layers:
        for name in dict.fromkeys(layer.inputs):
            readers.setdefault(name, []).append(layer)
    outputs: dict[str, list[str]] = {}
    for layer in layers:
        if layer.onnx_node:
            outputs.setdefault(layer.onnx_node, []).append(layer.tensor)

    def downstream(tensors: Sequence[str], seen: dict[str, None]) -> None:
        for tensor in tensors:
            for reader in readers.get(tensor, []):
                node = reader.onnx_node
                if node in seen or node not in units:
                    continue
                seen.update(dict.fromkeys(units[node]))
                if reader.op_type in PASS_THROUGH:
                    downstream(outputs[node], seen)

    groups: dict[str, tuple[str, ...]] = {}
    for node, unit in units.items():
        seen = dict.fromkeys(unit)
        downstream([t for member in unit for t in outputs[member]], seen)
        groups[node] = tuple(seen)
    return groups
