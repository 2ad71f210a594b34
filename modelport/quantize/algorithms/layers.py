"""What CLE, bias correction and AdaRound share: the layers they rewrite (Conv, Gemm and MatMul with a constant
weight that ORT's quantizer will take), those weights quantized exactly as ORT's quantizer will quantize them,
each layer's float computation in torch, and the model's output fidelity with its weights so quantized."""

from __future__ import annotations

import math
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelport.quantize.graph import Graph, candidates
from modelport.quantize.statistics import output_sqnr, quant_params, run_collecting

# what the weight-aware algorithms' results depend on besides their options: the cache key holds these
READS = ("per_channel", "weight_type", "reduce_range", "op_types", "analysis_samples", "batch_size")

if TYPE_CHECKING:
    import onnx
    import torch

    from modelport.calibration.dataset import CalibrationSet
    from modelport.quantize.settings import QdqSettings


@dataclass(frozen=True)
class Layer:
    """One Conv/Gemm/MatMul whose weight is a constant used by it alone."""

    node: onnx.NodeProto
    weight: str              # the weight initializer
    bias: str | None         # Conv/Gemm input 2, or the 1-D constant of the Add after a MatMul
    output: str              # the tensor after the bias (the Add's output for a MatMul)
    attrs: dict[str, Any]
    out_axis: int            # the weight axis of output channels: ORT's per-channel axis
    in_axis: int             # the weight axis of input channels (0 for a depthwise conv: one slice per channel)
    grouped: bool            # a conv whose groups are neither 1 nor one per channel

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def input(self) -> str:
        return self.node.input[0]


def find_layers(graph: Graph, settings: QdqSettings) -> list[Layer]:
    """The layers ORT's quantizer will take (the settings' op types, less what `exclude` keeps in float), in
    graph order."""
    from onnx import helper

    chosen = candidates(graph, settings.op_types) - {n.name for n in graph.model.graph.node
                                                     if n.name in settings.exclude or n.op_type in settings.exclude}
    uses = Counter(i for n in graph.model.graph.node for i in n.input if i in graph.inits)
    found = []
    for node in graph.model.graph.node:
        if node.name not in chosen or node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        w = node.input[1]
        if w not in graph.inits or uses[w] != 1 or node.input[0] not in graph.float_tensors:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        dims = list(graph.inits[w].dims)
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        output = node.output[0]
        if node.op_type == "Conv":
            group = int(attrs.get("group", 1))
            depthwise = group > 1 and dims[1] == 1 and dims[0] == group
            if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
                continue
            out_axis, in_axis, grouped = 0, 0 if depthwise else 1, group > 1 and not depthwise
        elif node.op_type == "Gemm":
            if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
                continue
            out_axis = 0 if attrs.get("transB", 0) else 1
            in_axis, grouped = 1 - out_axis, False
        else:
            if len(dims) != 2:
                continue
            out_axis, in_axis, grouped = 1, 0, False
            readers = graph.consumers[output]
            if len(readers) == 1 and readers[0].op_type == "Add":
                other = [i for i in readers[0].input if i != output]
                if (len(other) == 1 and other[0] in graph.inits and uses[other[0]] == 1
                        and list(graph.inits[other[0]].dims) == [dims[1]]):
                    bias, output = other[0], readers[0].output[0]
        if bias is not None and (bias not in graph.inits or uses[bias] != 1):
            continue
        found.append(Layer(node, w, bias, output, attrs, out_axis, in_axis, grouped))
    return found


@dataclass(frozen=True)
class Grid:
    """ORT's integer grid for one weight: value = (q - zero) * scale, q in [qmin, qmax] (arrays broadcast)."""

    scale: np.ndarray
    zero: np.ndarray
    qmin: float
    qmax: float

    def integers(self, w: np.ndarray) -> np.ndarray:
        """ORT's own rounding (float32 division, round half to even, clip)."""
        q = (w.astype(np.float32) / self.scale.astype(np.float32)).round() + self.zero
        return np.clip(q, self.qmin, self.qmax)

    def values(self, q: np.ndarray) -> np.ndarray:
        return ((q - self.zero) * self.scale).astype(np.float32)


def weight_grid(w: np.ndarray, layer: Layer, settings: QdqSettings) -> Grid:
    """The grid ORT's QDQ quantizer computes for this weight with these settings: symmetric (WeightSymmetric, and
    always per channel), per output channel or per tensor, reduce_range honoured (its compute_data_quant_params)."""
    from onnx import TensorProto
    from onnxruntime.quantization.quant_utils import compute_data_quant_params, get_qmin_qmax_for_qType

    qtype = TensorProto.INT8 if settings.weight_type == "int8" else TensorProto.UINT8
    qmin, qmax = get_qmin_qmax_for_qType(qtype, reduce_range=settings.reduce_range, symmetric=True)
    w = w.astype(np.float32)
    if settings.per_channel:
        params = [compute_data_quant_params(w.take(i, layer.out_axis).ravel(), qtype, True, settings.reduce_range)
                  for i in range(w.shape[layer.out_axis])]
        shape = [1] * w.ndim
        shape[layer.out_axis] = -1
        zero = np.array([float(z) for z, _ in params]).reshape(shape)
        scale = np.array([float(s) for _, s in params], dtype=np.float32).reshape(shape)
    else:
        z, s = compute_data_quant_params(w.ravel(), qtype, True, settings.reduce_range)
        zero, scale = np.array(float(z)), np.array(float(s), dtype=np.float32)
    return Grid(scale, zero, float(qmin), float(qmax))


def quantize_weight(w: np.ndarray, layer: Layer, settings: QdqSettings) -> np.ndarray:
    """The weight as the quantized model will hold it (dequantized): what all three algorithms measure against."""
    grid = weight_grid(w, layer, settings)
    return grid.values(grid.integers(w))


def forward(layer: Layer, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """The layer's float computation, as the ONNX op defines it (explicit pads, groups, transB)."""
    import torch.nn.functional as F

    op = layer.node.op_type
    if op == "Conv":
        spatial = w.dim() - 2
        pads = list(layer.attrs.get("pads", [0] * 2 * spatial))
        begin, end = pads[:spatial], pads[spatial:]
        if begin != end:
            x = F.pad(x, [p for i in reversed(range(spatial)) for p in (begin[i], end[i])])
            begin = [0] * spatial
        conv = (F.conv1d, F.conv2d, F.conv3d)[spatial - 1]
        return conv(x, w, b, stride=list(layer.attrs.get("strides", [1] * spatial)), padding=begin,
                    dilation=list(layer.attrs.get("dilations", [1] * spatial)), groups=int(layer.attrs.get("group", 1)))
    y = x @ (w.T if op == "Gemm" and layer.attrs.get("transB", 0) else w)
    return y if b is None else y + b


def channel_axis_of_output(layer: Layer) -> int:
    """The axis of output channels in the layer's output tensor (1 for a conv's NC..., last for a matrix product)."""
    return 1 if layer.node.op_type == "Conv" else -1


def channel_max(w: np.ndarray, axis: int) -> np.ndarray:
    """Largest magnitude of each slice along `axis`: a channel's weight range as symmetric quantization sees it."""
    return np.abs(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)).max(axis=1)


def scale_along(w: np.ndarray, axis: int, s: np.ndarray) -> np.ndarray:
    shape = [1] * w.ndim
    shape[axis] = -1
    return (w * s.reshape(shape)).astype(w.dtype)


def initial_values(graph: Graph, names: Sequence[str | None]) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {n: numpy_helper.to_array(graph.inits[n]).copy() for n in names if n is not None}


def write_values(graph: Graph, values: Mapping[str, np.ndarray], path: Path) -> None:
    """Save the graph at `path` with these initializers replaced."""
    import onnx
    from onnx import numpy_helper

    for name, value in values.items():
        graph.inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
    onnx.save(graph.model, str(path))


def quantized_output_sqnr(prepared: Path, layers: Sequence[Layer], values: Mapping[str, np.ndarray],
                          calibration: CalibrationSet, settings: QdqSettings, activations: Sequence[str] = ()) -> float:
    """SQNR (dB) of the model's outputs against the prepared float model when every layer's weight is `values'`
    quantized as ORT will, and its bias is `values`'. Other activations stay float, which isolates the weights;
    `activations` are quantized too, per tensor with their min/max on the analysis samples, where a rewrite moves
    range into them (CLE rescales the channels between the layers it pairs)."""
    graph = Graph.load(prepared)
    replaced = dict(values)
    for layer in layers:
        replaced[layer.weight] = quantize_weight(values[layer.weight], layer, settings)
    with tempfile.TemporaryDirectory(prefix="modelport-weights-") as tmp:
        path = Path(tmp) / "weights-quantized.onnx"
        if activations:
            write_values(graph, values, path)
            limits = _min_max(path, activations, calibration, settings, Path(tmp))
            write_values(graph, replaced, path)
            _fake_quantize(path, limits, settings)
        else:
            write_values(graph, replaced, path)
        return output_sqnr(prepared, path, calibration, settings)


def _min_max(path: Path, tensors: Sequence[str], calibration: CalibrationSet, settings: QdqSettings, tmp: Path
             ) -> dict[str, tuple[float, float]]:
    limits = {t: (math.inf, -math.inf) for t in tensors}

    def collect(result: dict[str, np.ndarray]) -> None:
        for t in tensors:
            lo, hi = limits[t]
            limits[t] = (min(lo, float(result[t].min())), max(hi, float(result[t].max())))

    run_collecting(path, tensors, calibration, settings, collect, tmp)
    return limits


def _fake_quantize(path: Path, limits: Mapping[str, tuple[float, float]], settings: QdqSettings) -> None:
    """Put a QuantizeLinear/DequantizeLinear pair on each tensor, with ORT's parameters for its range."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
    graph = model.graph
    qtype = TensorProto.INT8 if settings.activations == "int8" else TensorProto.UINT8
    for t, (lo, hi) in limits.items():
        scale, zero, _, _ = quant_params(lo, hi, settings.activations, settings.symmetric_activations)
        names = {k: f"{t}__fake_{k}" for k in ("scale", "zero", "q", "dq")}
        for node in graph.node:
            node.input[:] = [names["dq"] if i == t else i for i in node.input]
        graph.initializer.extend([helper.make_tensor(names["scale"], TensorProto.FLOAT, [], [scale]),
                                  helper.make_tensor(names["zero"], qtype, [], [int(zero)])])
        after = next((k + 1 for k, node in enumerate(graph.node) if t in node.output), 0)  # keep the graph sorted
        for k, node in enumerate([
                helper.make_node("QuantizeLinear", [t, names["scale"], names["zero"]], [names["q"]]),
                helper.make_node("DequantizeLinear", [names["q"], names["scale"], names["zero"]], [names["dq"]])]):
            graph.node.insert(after + k, node)
    onnx.save(model, str(path))
