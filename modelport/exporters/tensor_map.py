"""Which tensor is which: the FP32 ONNX export's tensors in topological order, the torch module that produced
each, and the name each runtime gives it.

The dynamo exporter records every node's module scopes (`pkg.torch.onnx.name_scopes`, cumulative paths such
as ['', 'features', 'features.1', 'conv2d']), so a tensor is reported under the user's own module path.
ONNX Runtime and OpenVINO artifacts keep the ONNX tensor names; litert-torch names TFLite tensors by module
location instead (`.../torch.nn.modules.conv.Conv2d_stem;2`), so those are matched module by module. Where a
runtime fused an activation into the op before it (TFLite's fused RELU on CONV_2D), the op's output is the
activation's tensor, not the conv's: a functional `F.relu` has no module of its own, so only the op's fused
activation says so. An op of no module that only moves or selects values (a functional `F.max_pool2d`, a sigmoid)
is found by its producer: the runtime op of its kind reading the runtime tensor its input maps to. debug compares
tensors through this mapping and the TFLite backend's `exclude` finds an ONNX node's ops through it: one mapping
for both (it lives here, below both, as backends/ may not import debug/).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from modelport.exporters.module_names import module_path, tensor_modules


@dataclass(frozen=True)
class Layer:
    """One tensor of the reference graph: the node that makes it, its torch module, the activations it reads."""

    tensor: str
    onnx_node: str | None
    module: str | None
    op_type: str
    inputs: tuple[str, ...]


def reference_layers(onnx_path: Path) -> list[Layer]:
    """The graph inputs, then every node output (Constants aside) in the graph's topological order."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    constants = {i.name for i in graph.initializer}
    layers = [Layer(i.name, None, None, "Input", ()) for i in graph.input if i.name not in constants]
    activations = {layer.tensor for layer in layers}
    for node in graph.node:
        if node.op_type == "Constant":
            continue
        reads = tuple(i for i in node.input if i in activations)
        module = module_path(node)
        for out in filter(None, node.output):
            layers.append(Layer(out, node.name or None, module, node.op_type, reads))
            activations.add(out)
    return layers


# The ONNX ops a runtime's fused activation stands for (TFLite's ActivationFunctionType names).
FUSED_ACTIVATIONS = {"RELU": ("Relu",), "RELU6": ("Clip",), "RELU_N1_TO_1": ("Clip",), "TANH": ("Tanh",)}
# The runtime ops (TFLite's names) an ONNX op of no module of its own maps to through its input; the runtime's
# conversions between int8 and float are looked through.
BY_PRODUCER = {"MaxPool": ("MAX_POOL_2D",), "AveragePool": ("AVERAGE_POOL_2D",), "Sigmoid": ("LOGISTIC",),
               "Tanh": ("TANH",), "Relu": ("RELU",), "Softmax": ("SOFTMAX",)}
CONVERSIONS = ("QUANTIZE", "DEQUANTIZE")


def map_tensors(layers: Sequence[Layer], names: Iterable[str], *, by_module: bool,
                fused: Mapping[str, str] | None = None,
                producers: Mapping[str, tuple[str, str | None]] | None = None) -> dict[str, str]:
    """Reference tensor -> the runtime's name for it: the same name where the runtime keeps it; with
    `by_module` (litert-torch's location names), each module's last runtime tensor stands for that module's
    last reference tensor (where a tensor carries several fused modules, the latest of their tensors). `fused`:
    runtime tensor -> the activation fused into the op writing it; such a tensor stands for the activation
    reading the reference tensor it matched, where the reference graph has one there. `producers`: runtime tensor ->
    the type of the op writing it and that op's first input (runtime name); a reference tensor still unmatched whose
    op `BY_PRODUCER` lists stands for the one unmatched runtime tensor an op of its kind writes from its input's."""
    names = list(names)
    present = set(names)
    found = {layer.tensor: layer.tensor for layer in layers if layer.tensor in present}
    if not by_module:
        return found
    modules = {layer.module for layer in layers if layer.module}
    order = {layer.tensor: i for i, layer in enumerate(layers)}
    last_reference = {layer.module: layer.tensor for layer in layers}
    last_runtime: dict[str | None, str] = {}
    for name in names:
        if name not in found.values():
            for module in tensor_modules(name, modules):
                last_runtime[module] = name
    for name in dict.fromkeys(last_runtime.values()):
        candidates = [last_reference[m] for m, n in last_runtime.items()
                      if n == name and m in last_reference and last_reference[m] not in found]
        if candidates:
            found[max(candidates, key=order.__getitem__)] = name
    return _through_producers(layers, _through_activations(layers, found, fused or {}), producers or {})


def _through_producers(layers: Sequence[Layer], found: dict[str, str],
                       producers: Mapping[str, tuple[str, str | None]]) -> dict[str, str]:
    """`found` plus the reference tensors `BY_PRODUCER` finds, in topological order (a tensor matched here matches
    the pass-through op reading it in turn)."""
    def source(name: str | None) -> str | None:
        seen: set[str] = set()
        while name in producers and producers[name][0] in CONVERSIONS and name not in seen:
            seen.add(name)
            name = producers[name][1]
        return name

    written: dict[tuple[str, str | None], list[str]] = {}
    for tensor, (kind, first) in producers.items():
        if kind not in CONVERSIONS:
            written.setdefault((kind, source(first)), []).append(tensor)
    used = set(found.values())
    for layer in layers:
        if layer.tensor in found or not layer.inputs or layer.inputs[0] not in found:
            continue
        before = source(found[layer.inputs[0]])
        hits = [t for kind in BY_PRODUCER.get(layer.op_type, ()) for t in written.get((kind, before), ())
                if t not in used]
        if len(hits) == 1:
            found[layer.tensor] = hits[0]
            used.add(hits[0])
    return found


def _through_activations(layers: Sequence[Layer], found: dict[str, str], fused: Mapping[str, str]) -> dict[str, str]:
    """`found` with each tensor written by an op with a fused activation moved to the activation's own tensor."""
    readers: dict[str, list[Layer]] = {}
    for layer in layers:
        for tensor in layer.inputs[:1]:
            readers.setdefault(tensor, []).append(layer)
    moved = {}
    for tensor, name in found.items():
        kinds = FUSED_ACTIVATIONS.get(fused.get(name, ""), ())
        after = [r for r in readers.get(tensor, []) if r.op_type in kinds]
        if len(after) == 1 and after[0].tensor not in found:
            tensor = after[0].tensor
        moved[tensor] = name
    return moved
