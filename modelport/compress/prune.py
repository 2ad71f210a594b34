"""Structured pruning with torch-pruning: whole channels, MLP neurons and attention heads are removed.

torch-pruning traces the model's dependency graph, so coupled layers (a conv and its BatchNorm, the next
layer's inputs, residual additions) lose the same channels and the result is a smaller dense model that
every runtime runs with fewer MACs. The layers that produce the model's outputs keep their width (the
outputs keep their shape). Attention written the timm way (a module with `num_heads` and a `qkv`
Linear) loses whole heads, and its `num_heads`/`head_dim` are updated to match.

Iterative schedules prune in rounds: round k of n keeps `1 - ratio * k / n` of the original channels,
each round fine-tuned before the next; each round is computed from the model as it stands, so a round
resumes from a checkpoint without pruner state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from modelport.compress.data import Examples
from modelport.compress.train import TrainStep
from modelport.errors import BadInput, Unavailable

IMPORTANCES = ("magnitude", "taylor")
_PRUNABLE = (nn.Linear, nn.modules.conv._ConvNd)


@dataclass(frozen=True)
class Pruning:
    """Settings of one pruning round: the share of channels this round removes from the model as it stands."""

    ratio: float
    importance: str = "magnitude"
    round: int = 1
    rounds: int = 1
    target: float = 0.0  # the share of the original channels removed once this round is done
    taylor_batches: int = 4

    def to_json(self) -> dict[str, Any]:
        return {"target_ratio": self.target, "round": f"{self.round}/{self.rounds}", "round_ratio": self.ratio,
                "importance": self.importance}


def schedule(ratio: float, rounds: int, importance: str) -> list[Pruning]:
    """The rounds of an iterative schedule that removes `ratio` of the channels in `rounds` steps."""
    if not 0 < ratio < 1:
        raise BadInput(f"--prune {ratio}: the share of channels to remove must be in (0, 1).",
                       hint="e.g. --prune 0.5 removes half the channels of every prunable layer.")
    if rounds < 1:
        raise BadInput(f"--prune-rounds must be at least 1, not {rounds}.")
    if importance not in IMPORTANCES:
        raise BadInput(f"Unknown pruning importance {importance!r}.", hint=f"Use one of {', '.join(IMPORTANCES)}.")
    out = []
    for k in range(1, rounds + 1):
        kept_before, kept_after = 1 - ratio * (k - 1) / rounds, 1 - ratio * k / rounds
        out.append(Pruning(1 - kept_after / kept_before, importance, k, rounds, ratio * k / rounds))
    return out


def output_layers(module: nn.Module, inputs: Mapping[str, torch.Tensor]) -> list[nn.Module]:
    """The Linear/Conv layers nearest each output: walking back from the outputs, the first ones met."""
    from modelport.model import flatten_outputs

    by_fn: dict[Any, nn.Module] = {}

    def hook(layer: nn.Module, _inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.grad_fn is not None:
            by_fn[output.grad_fn] = layer

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, _PRUNABLE)]
    try:
        with torch.enable_grad():
            outs = flatten_outputs(module(*(t.detach().requires_grad_(t.is_floating_point())
                                            for t in inputs.values())))
    finally:
        for h in handles:
            h.remove()
    found: list[nn.Module] = []
    seen: set[Any] = set()
    stack = [o.grad_fn for o in outs if o.grad_fn is not None]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if fn in by_fn:
            if by_fn[fn] not in found:
                found.append(by_fn[fn])
            continue
        stack.extend(next_fn for next_fn, _ in fn.next_functions)
    return found


def _heads(module: nn.Module) -> dict[nn.Module, int]:
    return {m.qkv: int(m.num_heads) for m in module.modules()
            if isinstance(getattr(m, "num_heads", None), int) and isinstance(getattr(m, "qkv", None), nn.Linear)}


def _accumulate_gradients(module: nn.Module, train_step: TrainStep, data: Examples, batches: int) -> None:
    """Gradients of the training loss over a few batches: what Taylor importance weighs channels by."""
    module.zero_grad()
    module.train()
    for i, (inputs, labels) in enumerate(data.batches(64)):
        if i == batches:
            break
        train_step(module, inputs, labels).backward()
    module.eval()


def prune(module: nn.Module, settings: Pruning, inputs: Mapping[str, torch.Tensor], train_step: TrainStep,
          data: Examples) -> nn.Module:
    """Remove `settings.ratio` of the channels (and heads) of `module` in place; returns it."""
    try:
        import torch_pruning as tp
    except ImportError as exc:
        raise Unavailable("Structured pruning needs torch-pruning, which is not installed.",
                          hint="pip install 'modelport[compress]'") from exc

    heads = _heads(module)
    importance = (tp.importance.GroupTaylorImportance() if settings.importance == "taylor"
                  else tp.importance.GroupMagnitudeImportance(p=2))
    args = tuple(inputs.values())
    try:
        keep = output_layers(module, inputs)
        pruner = tp.pruner.BasePruner(module, args, importance=importance, pruning_ratio=settings.ratio,
                                      ignored_layers=keep, num_heads=heads, prune_num_heads=bool(heads),
                                      prune_head_dims=not heads, head_pruning_ratio=settings.ratio if heads else 0.0)
    except Exception as exc:
        raise BadInput(f"torch-pruning cannot trace this model: {type(exc).__name__}: {exc}",
                       hint="Structured pruning needs a model whose forward() torch-pruning can trace with "
                            "autograd (no data-dependent Python control flow around the layers); low-rank "
                            "(--low-rank) and distillation work without tracing.") from exc
    if settings.importance == "taylor":
        _accumulate_gradients(module, train_step, data, settings.taylor_batches)
    with torch.no_grad():
        pruner.step()
    module.zero_grad(set_to_none=True)
    for m in module.modules():
        if isinstance(getattr(m, "qkv", None), nn.Linear) and m.qkv in pruner.num_heads:
            m.num_heads = pruner.num_heads[m.qkv]
            m.head_dim = m.qkv.out_features // (3 * m.num_heads)
    return module


def widths(module: nn.Module) -> dict[str, int]:
    """Output channels / features of every Linear and Conv layer: what the manifest shows pruning did."""
    return {name: (m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else m.out_features)
            for name, m in module.named_modules() if isinstance(m, _PRUNABLE)}

