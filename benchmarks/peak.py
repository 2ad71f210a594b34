"""The machine's achievable peak for FP32 and INT8 matrix multiplication in ONNX Runtime, and MAC counts.

A model's achieved multiply-accumulates per second, divided by this peak, says how much of the machine
a deployment actually uses: the gap is what is left for a faster runtime or a better quantization.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, shape_inference

from modelport.ort_session import ort_session


def _matmul_model(kind: str, m: int, k: int, n: int) -> onnx.ModelProto:
    if kind == "fp32":
        a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k])
        b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [k, n])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])
        node = helper.make_node("MatMul", ["a", "b"], ["y"])
    else:  # u8 activations x s8 weights: the combination ORT's x86 kernels are fastest at without VNNI
        a = helper.make_tensor_value_info("a", TensorProto.UINT8, [m, k])
        b = helper.make_tensor_value_info("b", TensorProto.INT8, [k, n])
        y = helper.make_tensor_value_info("y", TensorProto.INT32, [m, n])
        node = helper.make_node("MatMulInteger", ["a", "b"], ["y"])
    graph = helper.make_graph([node], f"peak_{kind}", [a, b], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


class PeakMatMul:
    """`repeats` large (size x size x size) MatMuls in ONNX Runtime, as a runner: `run` ignores its feeds, so the
    peak can take its turn among a benchmark's rows (interleaved rounds) and a row's share of it is read
    per round, under the same load. Repeated so that one run lasts about as long as a model's: a single
    9 ms MatMul right after another session's run competes with that session's still-spinning threads."""

    def __init__(self, kind: str, threads: int, size: int = 1024, repeats: int = 1) -> None:
        self.repeats = repeats
        self.macs = size**3 * repeats
        self.session = ort_session(_matmul_model(kind, size, size, size).SerializeToString(), threads=threads)
        rng = np.random.default_rng(0)
        if kind == "fp32":
            self.feeds = {"a": rng.standard_normal((size, size), np.float32),
                          "b": rng.standard_normal((size, size), np.float32)}
        else:
            self.feeds = {"a": rng.integers(0, 255, (size, size), dtype=np.uint8),
                          "b": rng.integers(-127, 127, (size, size), dtype=np.int8)}

    def run(self, _feeds: object = None) -> None:
        for _ in range(self.repeats):
            self.session.run(None, self.feeds)


def matmul_peak(kind: str, threads: int, size: int = 1024, seconds: float = 3.0) -> float:
    """Sustained multiply-accumulates per second of one large (size x size x size) MatMul."""
    peak = PeakMatMul(kind, threads, size)
    for _ in range(3):
        peak.run()
    start = time.perf_counter()
    best = float("inf")
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        peak.run()
        best = min(best, time.perf_counter() - t0)
    return peak.macs / best


def count_macs(onnx_path: Path, sizes: dict[str, int]) -> int:
    """Multiply-accumulates of Conv, ConvInteger, MatMul(Integer), Gemm and attention MatMuls in one run.

    Symbolic input dims take the values in `sizes` (e.g. {"batch": 8}); shapes come from ONNX shape
    inference, so the count is the model's arithmetic, independent of any runtime. ONNX shape inference
    leaves a broadcast against a symbolic dim bound to 1 unresolved (BERT's mask against its scores),
    so a batch of 1 is counted at 2 and halved: the arithmetic of a batch is linear in its size.
    """
    if sizes.get("batch") == 1:
        return _count_macs(onnx_path, {**sizes, "batch": 2}) // 2
    return _count_macs(onnx_path, sizes)


def _count_macs(onnx_path: Path, sizes: dict[str, int]) -> int:
    model = onnx.load(str(onnx_path))
    for value in model.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_value = sizes.get(dim.dim_param, 1)
    model = shape_inference.infer_shapes(model, data_prop=True)
    shapes: dict[str, list[int]] = {}
    for v in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        shapes[v.name] = [d.dim_value for d in v.type.tensor_type.shape.dim]
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    total = 0
    for node in model.graph.node:
        out = shapes.get(node.output[0])
        if not out or not all(out):
            continue
        if node.op_type in ("Conv", "ConvInteger", "QLinearConv"):
            weight = shapes.get(node.input[3 if node.op_type == "QLinearConv" else 1])
            if weight:  # [C_out, C_in / group, kH, kW]: each output element is one dot product of this size
                total += int(np.prod(out)) * int(np.prod(weight[1:]))
        elif node.op_type in ("MatMul", "MatMulInteger", "Gemm"):
            a = shapes.get(node.input[0])
            trans_a = any(x.name == "transA" and x.i for x in node.attribute)
            if a:
                total += int(np.prod(out)) * (a[0] if trans_a else a[-1])
    return total
