"""The fine-tuning loop every technique shares: seeded epochs, Adam, a loss, the eval metric, a checkpoint hook.

A technique changes the model (pruning, factorization; later QAT's fake quantization) or the objective
(distillation); this loop only minimises a `TrainStep` over the training data. Each epoch reseeds torch
and the shuffle from (seed, step, epoch), so an epoch run after a resume is the epoch an uninterrupted
run would have run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from modelport.compress.data import Examples, outputs_of
from modelport.errors import BadInput

Loss = Callable[[Mapping[str, torch.Tensor], torch.Tensor | None], torch.Tensor]
"""A task loss: (outputs keyed by output name, labels or None) -> scalar tensor."""
TrainStep = Callable[[torch.nn.Module, Mapping[str, torch.Tensor], torch.Tensor | None], torch.Tensor]
"""One training step's loss: (module in train mode, a batch of named inputs, its labels or None) -> scalar."""


def cross_entropy(outputs: Mapping[str, torch.Tensor], labels: torch.Tensor | None) -> torch.Tensor:
    """The built-in task loss: cross-entropy of the first N x C output against integer labels."""
    if labels is None:
        raise BadInput("The built-in task loss (cross-entropy) needs labels in the training data.")
    for value in outputs.values():
        if value.ndim == 2 and value.shape[1] >= 2 and value.is_floating_point():
            return torch.nn.functional.cross_entropy(value, labels.long())
    raise BadInput("The built-in task loss needs a classifier output (N x C), and this model has none: "
                   f"{ {k: tuple(v.shape) for k, v in outputs.items()} }.",
                   hint="Pass your own loss= (outputs, labels) -> tensor through modelport.compress.compress.")


def task_step(loss: Loss, names: list[str]) -> TrainStep:
    """A TrainStep from a task loss: forward, name the outputs, apply the loss."""
    def step(module: torch.nn.Module, inputs: Mapping[str, torch.Tensor], labels: torch.Tensor | None) -> torch.Tensor:
        return loss(outputs_of(module, inputs, names), labels)
    return step


@dataclass
class Schedule:
    """How each step fine-tunes: epochs, learning rate, batch size, seed."""

    epochs: int = 2
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0


@dataclass
class EpochRecord:
    step: int
    epoch: int
    loss: float
    metric: float | None
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def epoch_seed(schedule: Schedule, step: int, epoch: int) -> int:
    return schedule.seed * 1_000_003 + step * 1_009 + epoch


def param_groups(module: torch.nn.Module, lr: float) -> list[dict[str, Any]]:
    """The trainable parameters, one group per learning rate: a module's `lr_scale` scales it for its own
    parameters (QAT's ranges, learned as shares of their span, move faster than weights)."""
    groups: dict[float, list[torch.nn.Parameter]] = {}
    for m in module.modules():
        scale = float(getattr(m, "lr_scale", 1.0))
        groups.setdefault(scale, []).extend(p for p in m.parameters(recurse=False) if p.requires_grad)
    return [{"params": params, "lr": lr * scale} for scale, params in groups.items() if params]


def fine_tune(module: torch.nn.Module, train_step: TrainStep, data: Examples, schedule: Schedule, *, step: int,
              start_epoch: int = 0, optimizer_state: dict | None = None,
              evaluate: Callable[[torch.nn.Module], float] | None = None,
              on_epoch: Callable[[EpochRecord, torch.optim.Optimizer], None] | None = None) -> list[EpochRecord]:
    """Train `module` for the epochs of `schedule` from `start_epoch`; `on_epoch` sees each finished epoch."""
    optimizer = torch.optim.Adam(param_groups(module, schedule.lr))
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    records = []
    for epoch in range(start_epoch, schedule.epochs):
        start = time.perf_counter()
        seed = epoch_seed(schedule, step, epoch)
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        module.train()
        losses = []
        for inputs, labels in data.batches(schedule.batch_size, generator):
            optimizer.zero_grad()
            loss = train_step(module, inputs, labels)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        module.eval()
        metric = evaluate(module) if evaluate is not None else None
        record = EpochRecord(step, epoch + 1, float(np.mean(losses)), metric, time.perf_counter() - start)
        records.append(record)
        if on_epoch is not None:
            on_epoch(record, optimizer)
    return records
