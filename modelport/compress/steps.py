"""The techniques a compression run applies, in order: each changes the model once, then it is fine-tuned.

A Technique is one step of the plan: `apply` changes the module in place (pruning, factorization, QAT's
fake quantization) and says what it did; the shared loop in train.py then fine-tunes it with the run's
objective (the task loss, or distillation from the original model) on the step's `schedule`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from modelport.compress import lowrank, prune, qat
from modelport.compress.data import Examples
from modelport.compress.settings import Settings
from modelport.compress.train import Schedule, TrainStep

CALIBRATION_BATCH = 256  # QAT's initial ranges: min/max over the training data, read in batches this big


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


@dataclass
class QuantizeAware:
    """Quantization-aware training: fake quantization inserted here, trained by the shared loop, removed by
    `qat.freeze` once the run ends (its learned ranges go to the QDQ writer)."""

    equalize: bool = True
    reduce_range: bool = False
    reason: str = ""  # why the weights have the bits they have
    name: str = "qat"

    def settings(self) -> dict[str, Any]:
        weights = "7-bit (reduce_range)" if self.reduce_range else "int8"
        return {"weights": f"{weights} symmetric per channel ({self.reason})",
                "activations": "8-bit asymmetric, learned ranges", "equalize": self.equalize}

    def apply(self, module: torch.nn.Module, ctx: Context) -> dict[str, Any]:
        return qat.prepare(module, ctx.inputs, ctx.train.batches(CALIBRATION_BATCH), equalize=self.equalize,
                           reduce_range=self.reduce_range)


def qat_reduce_range(setting: str) -> tuple[bool, str]:
    """Whether QAT trains 7-bit weights, and why: as the user says, else as ONNX Runtime's int8 build on this CPU
    chooses (the build that most needs the weights on its own grid: its u8s8 kernels saturate otherwise)."""
    if setting != "auto":
        return setting == "true", f"--qat-reduce-range {setting}"
    from modelport.backends.onnxruntime import cpu_choice

    choice = cpu_choice()
    return choice.reduce_range, f"as ONNX Runtime's int8 build on this CPU: {choice.reason.split(':')[0]}"


def plan(settings: Settings) -> list[Technique]:
    """The steps `settings` asks for: pruning rounds, then low-rank, then QAT (distillation is the objective of
    each)."""
    steps: list[Technique] = []
    if settings.prune is not None:
        steps += [PruneRound(r) for r in prune.schedule(settings.prune, settings.prune_rounds, settings.importance)]
    if settings.low_rank is not None:
        steps.append(Factorize(lowrank.LowRank(settings.low_rank, settings.low_rank_target)))
    if not steps and not settings.qat:
        steps.append(Distill())
    if settings.qat:
        steps.append(QuantizeAware(settings.qat_equalize, *qat_reduce_range(settings.qat_reduce_range)))
    return steps


def schedule(settings: Settings, technique: Technique) -> Schedule:
    """How the step after `technique` fine-tunes: QAT has its own epochs and learning rate."""
    if isinstance(technique, QuantizeAware):
        return Schedule(settings.qat_epochs, settings.qat_lr, settings.batch_size, settings.seed)
    return Schedule(settings.epochs, settings.lr, settings.batch_size, settings.seed)
