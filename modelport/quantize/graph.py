"""The ONNX graph as the QDQ pass reads it: nodes by name, producers and consumers, weights, float tensors;
unique node names; the nodes ORT's quantizer would take; and the census of a written QDQ graph."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})


class Graph:
    """Nodes by name, producers, consumers, initializers and the float tensors of one ONNX graph."""

    def __init__(self, model: onnx.ModelProto) -> None:
        from onnx import TensorProto

        self.model = model
        g = model.graph
        self.inits = {i.name: i for i in g.initializer}
        self.nodes = {n.name: n for n in g.node}
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers: dict[str, list] = defaultdict(list)
        for n in g.node:
            for i in n.input:
                self.consumers[i].append(n)
        floats = (TensorProto.FLOAT, TensorProto.FLOAT16)
        infos = list(g.value_info) + list(g.input) + list(g.output)
        self.float_tensors = {v.name for v in infos if v.type.tensor_type.elem_type in floats} - set(self.inits)
        self.value_infos = {v.name: v for v in infos}

    @classmethod
    def load(cls, path: Path) -> Graph:
        import onnx

        return cls(onnx.load(str(path)))

    def activations(self, node) -> list[str]:
        """The node's float inputs and outputs that are computed at run time (not weights)."""
        return [t for t in [*node.input, *node.output] if t in self.float_tensors]


def name_nodes(model: onnx.ModelProto) -> None:
    """Give every node a unique name: exclusions, reasons and the cache all refer to nodes by name."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)


def candidates(graph: Graph, op_types: Sequence[str] | None) -> set[str]:
    """Nodes ORT's quantizer would quantize: the given op types, else its own full set."""
    if not op_types:
        from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

        op_types = set(QDQRegistry) | set(QLinearOpsRegistry)
    return {name for name, node in graph.nodes.items() if node.op_type in set(op_types)}


def candidate_types(graph: Graph, names: set[str]) -> set[str]:
    return {graph.nodes[n].op_type for n in names}


def precision_counts(path: Path) -> tuple[dict[str, int], dict[str, int]]:
    """Op type -> count of nodes whose computed inputs all come from DequantizeLinear and whose weights are
    quantized too (the QDQ groups ORT runs in int8), and of nodes left in float."""
    import onnx
    from onnx import TensorProto

    model = onnx.load(str(path), load_external_data=False)
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name for i in model.graph.initializer}
    float_weights = {i.name for i in model.graph.initializer
                     if i.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)}
    quantized: Counter[str] = Counter()
    floats: Counter[str] = Counter()
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        sources = [producer[i].op_type if i in producer else "input" for i in node.input if i and i not in inits]
        if sources and all(s == "DequantizeLinear" for s in sources) and not float_weights & set(node.input):
            quantized[node.op_type] += 1
        else:
            floats[node.op_type] += 1
    return dict(quantized.most_common()), dict(floats.most_common())
