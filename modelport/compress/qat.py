"""Quantization-aware training: fake quantization that is the shared QDQ pass's int8 scheme, ranges learned.

Weights are fake-quantized per output channel, symmetric int8 on [-127, 127] with the scale ONNX Runtime's
quantizer computes (max |w| / 127), or on ORT's 7-bit grid [-64, 64] (max |w| / 64) where its build reduces
the range (`reduce_range`: x86 without VNNI, whose u8s8 kernels saturate 16-bit pair sums with full 8-bit
weights), so once training ends the weights sit on the grid the QDQ writer will put them on and quantizing
them again changes nothing. Each Conv/Linear input is fake-quantized with
8-bit asymmetric activations whose range [lo, hi] is learned (LSQ-style: rounding passes gradients
straight through, so the loss reaches the range and clipping is trained); the range starts at the
min/max of the training data, as ORT's MinMax calibration would set it, and maps to a scale and zero
point by ORT's own arithmetic. BatchNorm after a convolution is folded into it first: ORT folds it before
quantizing, and fake-quantizing the unfolded weights would train the wrong ones. Consecutive layers are then
cross-layer equalized (`equalize.py`), so that no channel grown large sets a layer's input range alone.

`freeze` ends it: the fake quantizers go, the weights keep their quantized values, and the learned
ranges come back keyed by layer, for `qdq_ranges.py` to name by the ONNX tensors they quantize.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from modelport.compress import equalize as equalization
from modelport.errors import BadInput

WEIGHT_QMAX = 127  # symmetric int8 weights: [-127, 127], as ORT quantizes them
REDUCED_QMAX = 64  # ORT's reduce_range weights: [-64, 64] (its get_qmin_qmax_for_qType)
ACTIVATION_LEVELS = 255  # 8-bit activations: 256 levels, the zero point among them
RANGE_LR_SCALE = 100.0  # the ranges' learning rate over the weights' (ranges are learned as shares of their span)
QUANTIZED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_BATCH_NORM = "aten.batch_norm.default"
_CONV = "aten.conv"


def _round(x: torch.Tensor) -> torch.Tensor:
    """Round to nearest even in the forward pass, identity in the backward pass (the straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def quantize_weight(weight: torch.Tensor, qmax: int = WEIGHT_QMAX) -> torch.Tensor:
    """Per-output-channel symmetric fake quantization on [-qmax, qmax], with ORT's scale (max |w| / qmax; 1 for a
    zero channel)."""
    absmax = weight.detach().abs().reshape(len(weight), -1).amax(1)
    scale = torch.where(absmax > 0, absmax / qmax, torch.ones_like(absmax))
    scale = scale.reshape(-1, *([1] * (weight.ndim - 1)))
    return torch.clamp(_round(weight / scale), -qmax, qmax) * scale


class RangeQuantizer(nn.Module):
    """8-bit fake quantization of an activation over a learned range: the scale and zero point ORT derives
    from (lo, hi) — the range widened to hold 0, 255 steps, the zero point rounded onto the grid.

    The range is learned in units of its initial span, with `lr_scale` times the step's learning rate, so an
    Adam step moves every range by the same share whatever its size (the weights' rate would leave a range
    of 30 where minmax put it)."""

    counted = False  # the model as written holds no such parameters (macs.count_params skips them)
    lr_scale = RANGE_LR_SCALE

    def __init__(self, lo: float, hi: float) -> None:
        super().__init__()
        span = max(hi - lo, 1e-6)
        self.register_buffer("span", torch.tensor(float(span)))
        self.lo = nn.Parameter(torch.tensor(lo / span))
        self.hi = nn.Parameter(torch.tensor(hi / span))

    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.clamp(self.lo * self.span, max=0.0), torch.clamp(self.hi * self.span, min=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self._range()
        scale = torch.clamp((hi - lo) / ACTIVATION_LEVELS, min=1e-8)
        zero = torch.clamp(_round(-lo / scale), 0, ACTIVATION_LEVELS)
        return (torch.clamp(_round(x / scale) + zero, 0, ACTIVATION_LEVELS) - zero) * scale

    def bounds(self) -> tuple[float, float]:
        """The range as the quantizer uses it (widened to hold 0), what the QDQ writer is given."""
        lo, hi = self._range()
        return float(lo.detach()), float(hi.detach())


class FakeQuantized(nn.Module):
    """A Conv/Linear layer running on fake-quantized inputs and weights."""

    def __init__(self, layer: nn.Module, lo: float, hi: float, qmax: int = WEIGHT_QMAX) -> None:
        super().__init__()
        self.layer = layer
        self.qmax = qmax
        self.input_quantizer = RangeQuantizer(lo, hi)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, weight = self.input_quantizer(x), quantize_weight(self.layer.weight, self.qmax)
        if isinstance(self.layer, nn.Linear):
            return nn.functional.linear(x, weight, self.layer.bias)
        return self.layer._conv_forward(x, weight, self.layer.bias)


def _set(module: nn.Module, path: str, child: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(module.get_submodule(parent) if parent else module, name, child)


def fold_batch_norms(module: nn.Module, inputs: Mapping[str, torch.Tensor]) -> list[str]:
    """Fold each BatchNorm whose input is a convolution used by nothing else into it (eval statistics), in
    place; returns the folded BatchNorms' paths. The data flow comes from torch.export, not module order."""
    try:
        program = torch.export.export(module.eval(), tuple(inputs.values()))
    except Exception as exc:
        raise BadInput(f"QAT folds BatchNorm into the convolutions before it, and torch.export cannot trace this "
                       f"model to find them: {type(exc).__name__}: {exc}") from exc

    def path(node: Any) -> str | None:
        stack = node.meta.get("nn_module_stack")
        return list(stack.values())[-1][0] if stack else None

    folded = []
    for node in program.graph.nodes:
        source = node.args[0] if node.op == "call_function" and str(node.target) == _BATCH_NORM else None
        if source is None or not str(source.target).startswith(_CONV) or len(source.users) != 1:
            continue
        conv_path, bn_path = path(source), path(node)
        conv, bn = module.get_submodule(conv_path), module.get_submodule(bn_path)
        if isinstance(conv, nn.Conv1d | nn.Conv2d | nn.Conv3d) and isinstance(bn, nn.modules.batchnorm._BatchNorm):
            _set(module, conv_path, fuse_conv_bn_eval(conv, bn))
            _set(module, bn_path, nn.Identity())
            folded.append(bn_path)
    return folded


def _input_ranges(module: nn.Module, layers: Mapping[str, nn.Module], batches: Any) -> dict[str, list[float]]:
    """Min and max of each layer's input over the training data: ORT's MinMax calibration, in torch."""
    found: dict[str, list[float]] = {}

    def observe(name: str):
        def hook(_layer: nn.Module, args: tuple) -> None:
            lo, hi = float(args[0].min()), float(args[0].max())
            old = found.setdefault(name, [lo, hi])
            found[name] = [min(old[0], lo), max(old[1], hi)]
        return hook

    handles = [layer.register_forward_pre_hook(observe(name)) for name, layer in layers.items()]
    module.eval()
    try:
        with torch.no_grad():
            for inputs, _ in batches:
                module(*inputs.values())
    finally:
        for h in handles:
            h.remove()
    return found


def prepare(module: nn.Module, inputs: Mapping[str, torch.Tensor], batches: Any, *, equalize: bool = True,
            reduce_range: bool = False) -> dict[str, Any]:
    """Fold BatchNorms, equalize consecutive layers (`equalize`), then wrap every Conv/Linear in fake
    quantization (7-bit weights with `reduce_range`) whose input ranges start at the min/max of `batches` (of
    the training data), in place; says what it did."""
    folded = fold_batch_norms(module, inputs)
    layers = {name: m for name, m in module.named_modules() if isinstance(m, QUANTIZED)}
    if not layers:
        raise BadInput("--qat quantizes Conv and Linear layers, and this model has none.")
    equalized = equalization.equalize(module, inputs) if equalize else []
    ranges = _input_ranges(module, layers, batches)
    qmax = REDUCED_QMAX if reduce_range else WEIGHT_QMAX
    for name, layer in layers.items():
        if name in ranges:  # a layer the forward pass never reaches stays as it is
            _set(module, name, FakeQuantized(layer, *ranges[name], qmax))
    return {"folded_batch_norms": folded, "equalized": equalized, "weight_qmax": qmax,
            "quantized_layers": sorted(ranges),
            "initial_ranges": {n: [round(v, 6) for v in r] for n, r in sorted(ranges.items())}}


def freeze(module: nn.Module) -> dict[str, tuple[float, float]]:
    """Remove the fake quantizers in place, keeping the quantized weights; returns {layer path: learned range}.

    A model without fake quantizers is left alone (empty result)."""
    learned = {}
    for name, wrapper in list(module.named_modules()):
        if isinstance(wrapper, FakeQuantized):
            layer = wrapper.layer
            with torch.no_grad():
                layer.weight.copy_(quantize_weight(layer.weight, wrapper.qmax))
            _set(module, name, layer)
            learned[name] = wrapper.input_quantizer.bounds()
    return learned
