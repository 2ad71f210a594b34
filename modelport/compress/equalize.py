"""Cross-layer equalization in torch, before QAT: what makes outlier channels trainable at 8 bits.

For consecutive layers A -> ReLU (-> MaxPool) -> B, A's output channel i is divided by s_i and B's input
channel i multiplied by it, with s_i = sqrt(rA_i / rB_i) from the channels' weight ranges (Nagel et al. 2019,
the rule the QDQ pass's `cle` algorithm applies to ONNX graphs). ReLU and max pooling commute with a positive
per-channel scale, so the float model computes the same function. A channel that a network grew k times
larger (and that the next layer reads k times weaker) then comes back to the others' size: before, it set
the 8-bit range of B's input, leaving the other channels a few levels, and B's weights for it rounded to
zero on B's per-output-channel grid; fine-tuning at a small learning rate cannot move a factor of k.
The data flow comes from torch.export, as the BatchNorm folding's does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

SWEEPS = 20  # passes over the pairs; chains (A -> B -> C) settle in a few
SETTLED = 1e-3  # largest |log s| of a sweep under which the pairs are settled
_LAYERS = ("aten.conv", "aten.linear")
_KINDS = (nn.Conv1d, nn.Conv2d, nn.Linear)
_PASSING = ("aten.relu.default", "aten.relu_.default", "aten.max_pool2d.default", "aten.max_pool1d.default")


def _path(node: Any) -> str | None:
    stack = node.meta.get("nn_module_stack")
    return list(stack.values())[-1][0] if stack else None


def _is_layer(node: Any) -> bool:
    return node.op == "call_function" and str(node.target).startswith(_LAYERS)


def _kind(layer: nn.Module) -> type | None:
    return next((k for k in _KINDS if isinstance(layer, k)), None)


def pairs(module: nn.Module, program: torch.export.ExportedProgram) -> list[tuple[str, str]]:
    """(A, B) module paths where A's output reaches only B's input, through ReLU and max pooling, channel for
    channel (ungrouped layers of one kind, A's output channels B's input channels)."""
    found = []
    for node in program.graph.nodes:
        if not _is_layer(node):
            continue
        tensor, relu = node, False
        while len(tensor.users) == 1 and str((user := next(iter(tensor.users))).target) in _PASSING:
            relu = relu or "relu" in str(user.target)
            tensor = user
        if not relu or len(tensor.users) != 1 or not _is_layer(b_node := next(iter(tensor.users))):
            continue
        a_path, b_path = _path(node), _path(b_node)
        if b_node.args[0] is not tensor or a_path is None or b_path is None:
            continue
        a, b = module.get_submodule(a_path), module.get_submodule(b_path)
        if _kind(a) is None or _kind(a) is not _kind(b):
            continue  # a Linear after a convolution reads its last axis, not its channels
        if getattr(a, "groups", 1) != 1 or getattr(b, "groups", 1) != 1 or a.weight.shape[0] != b.weight.shape[1]:
            continue
        found.append((a_path, b_path))
    return found


def _out_range(weight: torch.Tensor) -> torch.Tensor:
    return weight.abs().reshape(len(weight), -1).amax(1)


def _in_range(weight: torch.Tensor) -> torch.Tensor:
    return weight.abs().transpose(0, 1).reshape(weight.shape[1], -1).amax(1)


def _spread(weight: torch.Tensor) -> float:
    r = _out_range(weight)
    r = r[r > 0]
    return round(float(r.max() / r.min()), 1) if len(r) else 1.0


def equalize(module: nn.Module, inputs: Mapping[str, torch.Tensor]) -> list[dict[str, Any]]:
    """Equalize every pair in place; returns, per pair, its layers and their output-channel range spread
    (largest over smallest) before and after."""
    program = torch.export.export(module.eval(), tuple(inputs.values()))
    found = pairs(module, program)
    layers = {p: module.get_submodule(p) for pair in found for p in pair}
    before = {p: _spread(m.weight.detach()) for p, m in layers.items()}
    with torch.no_grad():
        for _ in range(SWEEPS):
            moved = 0.0
            for a_path, b_path in found:
                a, b = layers[a_path], layers[b_path]
                ra, rb = _out_range(a.weight), _in_range(b.weight)
                s = torch.where((ra > 0) & (rb > 0), torch.sqrt(ra / rb.clamp(min=1e-30)), torch.ones_like(ra))
                a.weight.div_(s.reshape(-1, *([1] * (a.weight.ndim - 1))))
                if a.bias is not None:
                    a.bias.div_(s)
                b.weight.mul_(s.reshape(1, -1, *([1] * (b.weight.ndim - 2))))
                moved = max(moved, float(s.log().abs().max()))
            if moved < SETTLED:
                break
    return [{"layers": [a, b], "range_spread_before": [before[a], before[b]],
             "range_spread_after": [_spread(layers[a].weight.detach()), _spread(layers[b].weight.detach())]}
            for a, b in found]
