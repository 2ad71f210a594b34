"""Low-rank factorization of Linear and Conv2d layers by truncated SVD.

A Linear (out x in) becomes Linear(in -> r) then Linear(r -> out); a Conv2d becomes a conv with r filters
of the original kernel, then a 1x1 conv to the original channels. The rank comes from an energy threshold
(the smallest r whose singular values keep that share of the squared sum) or from a MACs target (r such
that the pair costs that share of the layer's MACs). A factorization is kept only where the pair costs
fewer MACs than the layer it replaces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from modelport.errors import BadInput

TARGETS = ("energy", "macs")


@dataclass(frozen=True)
class LowRank:
    """`ratio`: the share of singular-value energy kept (target `energy`) or of each layer's MACs (`macs`)."""

    ratio: float
    target: str = "energy"

    def __post_init__(self) -> None:
        if not 0 < self.ratio < 1:
            raise BadInput(f"--low-rank {self.ratio}: the ratio must be in (0, 1).",
                           hint="With --low-rank-target energy, e.g. 0.9 keeps 90% of each layer's singular-value "
                                "energy; with macs, e.g. 0.5 aims at half of each layer's MACs.")
        if self.target not in TARGETS:
            raise BadInput(f"Unknown --low-rank-target {self.target!r}.", hint=f"Use one of {', '.join(TARGETS)}.")

    def to_json(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "target": self.target}


def _matrix(layer: nn.Module) -> torch.Tensor:
    w = layer.weight.detach()
    return w.reshape(w.shape[0], -1)


def _rank(s: torch.Tensor, rows: int, cols: int, settings: LowRank) -> int:
    if settings.target == "energy":
        energy = torch.cumsum(s ** 2, 0) / torch.sum(s ** 2)
        return int(torch.searchsorted(energy, torch.tensor(settings.ratio, dtype=energy.dtype)).item()) + 1
    return max(1, int(settings.ratio * rows * cols / (rows + cols)))


def _pair(layer: nn.Module, u: torch.Tensor, v: torch.Tensor) -> nn.Sequential:
    """The two layers computing `u @ v` (u: out x r, v: r x in*k*k) in place of `layer`."""
    r = u.shape[1]
    bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        first, second = nn.Linear(layer.in_features, r, bias=False), nn.Linear(r, layer.out_features, bias=bias)
        first.weight.data.copy_(v)
    else:
        first = nn.Conv2d(layer.in_channels, r, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                          bias=False, padding_mode=layer.padding_mode)
        second = nn.Conv2d(r, layer.out_channels, 1, bias=bias)
        first.weight.data.copy_(v.reshape(r, *layer.weight.shape[1:]))
        u = u[:, :, None, None]
    second.weight.data.copy_(u)
    if bias:
        second.bias.data.copy_(layer.bias.detach())
    return nn.Sequential(first, second)


def factorize(module: nn.Module, settings: LowRank) -> dict[str, dict[str, int]]:
    """Replace every Linear/Conv2d where a truncated SVD pays in MACs, in place; returns {layer: ranks}."""
    done = {}
    for name, layer in list(module.named_modules()):
        if not isinstance(layer, nn.Linear | nn.Conv2d) or (isinstance(layer, nn.Conv2d) and layer.groups != 1):
            continue
        w = _matrix(layer)
        rows, cols = w.shape
        u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
        r = _rank(s, rows, cols, settings)
        if r * (rows + cols) >= rows * cols:  # the pair would cost as much as the layer: keep the layer
            continue
        root = s[:r].sqrt()
        pair = _pair(layer, (u[:, :r] * root).to(w.dtype), (root[:, None] * vh[:r]).to(w.dtype))
        parent_name, _, child = name.rpartition(".")
        setattr(module.get_submodule(parent_name) if parent_name else module, child, pair)
        done[name] = {"rank": r, "full_rank": min(rows, cols)}
    return done
