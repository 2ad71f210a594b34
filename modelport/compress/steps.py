"""The techniques a compression run applies, in order: each changes the model once, then it is fine-tuned.

A Technique is one step of the plan: `apply` changes the module in place (pruning, factorization; a QAT
step would insert fake quantization here) and says what it did; the shared loop in train.py then
fine-tunes it with the run's objective (the task loss, or distillation from the original model).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from modelport.compress import lowrank, prune
from modelport.compress.data import Examples
from modelport.compress.settings import Settings
from modelport.compress.train import TrainStep


@dataclass
class Context:
    """What a technique may read while it changes the model."""

    inputs: Mapping[str, torch.Tensor]  # example inputs (tracing, MACs)
    train: Examples
    train_step: TrainStep  # the task loss, e.g. for Taylor importance


class Technique(Protocol):
    name: str

    def settings(self) -> dict[str, Any]: ...

    def apply(self, module: torch.nn.Module, ctx: Context) -> dict[str, Any]: ...


@dataclass
class PruneRound:
    config: prune.Pruning
    name: str = "prune"

    def settings(self) -> dict[str, Any]:
        return self.config.to_json()

    def apply(self, module: torch.nn.Module, ctx: Context) -> dict[str, Any]:
        before = prune.widths(module)
        prune.prune(module, self.config, ctx.inputs, ctx.train_step, ctx.train)
        after = prune.widths(module)
        return {"widths": {n: [before[n], after[n]] for n in before if n in after and before[n] != after[n]}}


@dataclass
class Factorize:
    config: lowrank.LowRank
    name: str = "low_rank"

    def settings(self) -> dict[str, Any]:
        return self.config.to_json()

    def apply(self, module: torch.nn.Module, ctx: Context) -> dict[str, Any]:
        return {"factorized": lowrank.factorize(module, self.config)}


@dataclass
class Distill:
    """Distillation alone: no change to the model, only fine-tuning against the original."""

    name: str = "distill"

    def settings(self) -> dict[str, Any]:
        return {}

    def apply(self, module: torch.nn.Module, ctx: Context) -> dict[str, Any]:
        return {}


def plan(settings: Settings) -> list[Technique]:
    """The steps `settings` asks for: pruning rounds, then low-rank (distillation is the objective of each)."""
    steps: list[Technique] = []
    if settings.prune is not None:
        steps += [PruneRound(r) for r in prune.schedule(settings.prune, settings.prune_rounds, settings.importance)]
    if settings.low_rank is not None:
        steps.append(Factorize(lowrank.LowRank(settings.low_rank, settings.low_rank_target)))
    if not steps:
        steps.append(Distill())
    return steps
