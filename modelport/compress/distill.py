"""Knowledge distillation: the original model teaches the compressed one while it fine-tunes.

The loss is `alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T))` on classifier outputs (mean
squared error on other outputs) plus `(1 - alpha) *` the task loss, and optionally the mean squared error
between the teacher's and the student's outputs of named layers (feature matching; those layers must
keep their output shape through compression, e.g. a block whose output width pruning left alone).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn import functional as F

from modelport.compress.data import outputs_of
from modelport.compress.train import Loss, TrainStep
from modelport.errors import BadInput


@dataclass(frozen=True)
class Distillation:
    """Settings of the distillation objective."""

    temperature: float = 4.0
    alpha: float = 0.7
    features: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise BadInput(f"The distillation temperature must be positive, not {self.temperature}.")
        if not 0 <= self.alpha <= 1:
            raise BadInput(f"The distillation weight alpha must be in [0, 1], not {self.alpha}.")

    def to_json(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "alpha": self.alpha, "features": list(self.features)}


def _output_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    if student.ndim == 2 and student.shape[1] >= 2:
        return F.kl_div(F.log_softmax(student / temperature, dim=1), F.log_softmax(teacher / temperature, dim=1),
                        reduction="batchmean", log_target=True) * temperature ** 2
    return F.mse_loss(student, teacher)


def _layers(module: torch.nn.Module, names: Sequence[str], which: str) -> dict[str, torch.nn.Module]:
    found = dict(module.named_modules())
    missing = [n for n in names if n not in found]
    if missing:
        raise BadInput(f"--distill-features names {', '.join(missing)}, which the {which} model does not have.",
                       hint=f"Layer names are module paths, e.g. {', '.join(list(found)[1:6])}.")
    return {n: found[n] for n in names}


class _Features:
    """Captures the outputs of named layers during one forward pass."""

    def __init__(self, layers: Mapping[str, torch.nn.Module]) -> None:
        self.values: dict[str, torch.Tensor] = {}
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in layers.items()]

    def _hook(self, name: str):
        def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
            self.values[name] = output
        return hook

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def distill_step(teacher: torch.nn.Module, settings: Distillation, task_loss: Loss, names: list[str]) -> TrainStep:
    """A TrainStep that blends the teacher's outputs (and named features) with the task loss."""
    teacher.eval()

    def step(student: torch.nn.Module, inputs: Mapping[str, torch.Tensor], labels: torch.Tensor | None) -> torch.Tensor:
        t_hooks = _Features(_layers(teacher, settings.features, "original"))
        s_hooks = _Features(_layers(student, settings.features, "compressed"))
        try:
            with torch.no_grad():
                targets = outputs_of(teacher, inputs, names)
            outputs = outputs_of(student, inputs, names)
        finally:
            t_hooks.close()
            s_hooks.close()
        loss = sum(_output_loss(outputs[n], targets[n], settings.temperature) for n in names)
        loss = settings.alpha * loss
        if settings.alpha < 1:
            loss = loss + (1 - settings.alpha) * task_loss(outputs, labels)
        for name in settings.features:
            s, t = s_hooks.values[name], t_hooks.values[name]
            if s.shape != t.shape:
                raise BadInput(f"Layer {name!r} outputs {tuple(s.shape)} after compression but {tuple(t.shape)} in "
                               "the original, so its features cannot be matched.",
                               hint="Match layers whose output width compression keeps (e.g. a block output, or a "
                                    "layer listed in the pruner's ignored layers).")
            loss = loss + F.mse_loss(s, t)
        return loss

    return step
