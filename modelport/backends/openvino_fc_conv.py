"""INT8 MatMuls with constant weights laid out as 1x1 convolutions over a batch of rows, for OpenVINO's CPU plugin.

On x86 without VNNI the plugin runs an INT8 FullyConnected on oneDNN's generic GEMM (jit_gemm_I8), slower than
its own FP32 kernels (brgemm, MLAS), while an INT8 1x1 convolution gets a dedicated AVX2 kernel
(jit_avx2_1x1_I8). The arithmetic is the same: rows [..., K] become a batch [rows, K, 1, 1], weights [N, K]
become [N, K, 1, 1], and the result is reshaped back to [..., N]. The weights keep their int8 constant and
dequantization (Convert, Subtract, Multiply) so the plugin's low-precision pass still runs the layer in INT8.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# Ops between a FakeQuantize and a MatMul that keep the rows INT8 for the plugin's low-precision pass.
_PRECISION_PRESERVING = ("Reshape", "Squeeze", "Unsqueeze", "Transpose", "MaxPool")
CONV_SUFFIX = "/conv1x1"  # a rewritten MatMul's convolution is named after it, so its profile entry is found


@dataclass(frozen=True)
class _Dequantized:
    """An int8 weight [N, K] (N outputs) with its zero point and scale, each [N, 1] or a scalar."""

    values: np.ndarray
    zero_point: np.ndarray | None
    scale: np.ndarray


def rewrite_int8_matmuls(model: Any) -> list[str]:
    """Rewrite, in place, each MatMul whose activation is FakeQuantized (zero on a level) and whose weight is an
    int8 constant dequantized per output channel; return the rewritten MatMuls' names."""
    import openvino as ov
    import openvino.opset13 as op

    done = []
    for node in list(model.get_ordered_ops()):
        weight = _int8_weight(node)
        if weight is None:
            continue
        n, k = weight.values.shape
        rows = node.input(0).get_source_output()
        batch = op.reshape(rows, op.constant(np.array([-1, k, 1, 1], np.int64)), special_zero=False)
        kernel: Any = op.convert(op.constant(weight.values.reshape(n, k, 1, 1)), ov.Type.f32)
        if weight.zero_point is not None:
            kernel = op.subtract(kernel, op.constant(_per_output(weight.zero_point, n)))
        kernel = op.multiply(kernel, op.constant(_per_output(weight.scale, n)))
        conv = op.convolution(batch, kernel, [1, 1], [0, 0], [0, 0], [1, 1])
        conv.set_friendly_name(node.get_friendly_name() + CONV_SUFFIX)
        lead = op.slice(op.shape_of(rows, ov.Type.i64), op.constant(np.array([0], np.int64)),
                        op.constant(np.array([-1], np.int64)), op.constant(np.array([1], np.int64)))
        out = op.reshape(conv, op.concat([lead, op.constant(np.array([n], np.int64))], 0), special_zero=False)
        out.set_friendly_name(node.get_friendly_name())  # debug and exclude find the layer by its old name
        names = node.output(0).get_names()
        node.output(0).set_names(set())
        node.output(0).replace(out.output(0))
        out.output(0).set_names(names)
        done.append(node.get_friendly_name())
    model.validate_nodes_and_infer_types()
    return done


def _int8_weight(node: Any) -> _Dequantized | None:
    """The MatMul's int8 weight as [N, K] with per-output dequantization, or None where the rewrite does not apply."""
    if node.get_type_name() != "MatMul" or node.get_attributes()["transpose_a"]:
        return None
    if not _quantized_activation(node) or node.input(0).get_partial_shape().rank.get_length() < 2:
        return None
    k_dim = node.input(0).get_partial_shape()[-1]
    multiply = _source(node, 1)
    if multiply.get_type_name() != "Multiply" or not k_dim.is_static:
        return None
    scale, inner = _constant_and_other(multiply)
    zero_point = None
    if inner is not None and inner.get_type_name() == "Subtract":
        zero_point, inner = _constant_and_other(inner)
    if scale is None or inner is None or inner.get_type_name() != "Convert":
        return None
    values_node = _source(inner, 0)
    if values_node.get_type_name() != "Constant" or values_node.get_element_type().get_type_name() not in ("i8", "u8"):
        return None
    values = values_node.get_data()
    if values.ndim != 2:
        return None
    transpose = not node.get_attributes()["transpose_b"]  # [K, N] weights: outputs on the last axis
    if transpose:
        values, scale = values.T, scale.T if scale.ndim == 2 else scale
        zero_point = zero_point.T if zero_point is not None and zero_point.ndim == 2 else zero_point
    n = values.shape[0]
    if values.shape[1] != k_dim.get_length() or not all(_per_output_ok(a, n) for a in (scale, zero_point)
                                                         if a is not None):
        return None
    return _Dequantized(np.ascontiguousarray(values), zero_point, scale)


def _quantized_activation(node: Any) -> bool:
    """Whether the MatMul's rows come from a FakeQuantize, directly or through ops that keep them INT8 (the
    pool and flatten before a classifier head)."""
    source = _source(node, 0)
    while source.get_type_name() in _PRECISION_PRESERVING:
        source = _source(source, 0)
    return source.get_type_name() == "FakeQuantize" and _integer_zero_point(source)


def _integer_zero_point(fake_quantize: Any) -> bool:
    """Whether the FakeQuantize's output range puts zero on a level: the INT8 convolution kernel then computes
    exactly what the FullyConnected did, where a fractional zero point would be rounded (1.4% off in a test)."""
    bounds = [_source(fake_quantize, i) for i in (3, 4)]
    if any(b.get_type_name() != "Constant" for b in bounds):
        return False
    lo, hi = (np.asarray(b.get_data(), np.float64) for b in bounds)
    levels = fake_quantize.get_attributes()["levels"]
    with np.errstate(divide="ignore", invalid="ignore"):
        zero = np.where(hi > lo, -lo / (hi - lo) * (levels - 1), 0.0)
    return bool(np.all(np.abs(zero - np.round(zero)) < 1e-3))


def _source(node: Any, index: int) -> Any:
    return node.input(index).get_source_output().get_node()


def _constant_and_other(node: Any) -> tuple[np.ndarray | None, Any]:
    """A binary op's constant operand (a Constant, or a Convert of one) and its other input's node. The second
    input is tried first: the weight itself is a Convert of a Constant too, and comes first in NNCF's chains."""
    for const_index in (1, 0):
        constant, other = _source(node, const_index), _source(node, 1 - const_index)
        if constant.get_type_name() == "Convert" and _source(constant, 0).get_type_name() == "Constant":
            return np.asarray(_source(constant, 0).get_data(), np.float32), other
        if constant.get_type_name() == "Constant":
            return np.asarray(constant.get_data(), np.float32), other
    return None, None


def _per_output_ok(array: np.ndarray, n: int) -> bool:
    return array.size == 1 or (array.ndim == 2 and array.shape == (n, 1))


def _per_output(array: np.ndarray, n: int) -> np.ndarray:
    """A scalar or [N, 1] dequantization constant as the convolution's [N, 1, 1, 1] (a scalar stays one)."""
    return np.asarray(array, np.float32).reshape(()) if array.size == 1 else array.reshape(n, 1, 1, 1)
