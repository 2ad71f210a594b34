"""Training and evaluation data for compression: a CalibrationSet read once into tensors, with its labels.

The same sources as `--calib` (npz, folders, images, callables) give the training data; labels come
from the source (`label` in a sample, class folders) and are what the task loss and metric need.
Compression sets are small (fine-tuning data, not a full training set), so they are held in memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from modelport.calibration import CalibrationSet
from modelport.errors import BadInput
from modelport.harness.fidelity import TaskMetric
from modelport.model import flatten_outputs


@dataclass
class Examples:
    """Inputs keyed by name (samples on axis 0) and their labels (None where the source has none)."""

    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor | None
    description: str
    fingerprint: str

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def batches(self, batch_size: int, generator: torch.Generator | None = None
                ) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor | None]]:
        """Batches in a seeded shuffled order (`generator`), or in order where none is given."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            yield ({k: v[idx] for k, v in self.inputs.items()},
                   None if self.labels is None else self.labels[idx])

    def require_labels(self, flag: str, why: str) -> torch.Tensor:
        if self.labels is None:
            raise BadInput(f"{flag} {self.description} has no labels, and {why} needs them.",
                           hint="Give data whose samples carry a `label` (an npz `labels` array, class "
                                "subfolders, or a callable yielding {'x': ..., 'label': ...}), or pass your own "
                                "loss/metric through the Python API (modelport.compress.compress).")
        return self.labels


def read_examples(data: CalibrationSet) -> Examples:
    """Every sample of `data` as tensors, with labels where every sample has one."""
    arrays: dict[str, list[np.ndarray]] = {name: [] for name in data.input_names}
    for sample in data.samples():
        for name in arrays:
            arrays[name].append(sample[name])
    labels = data.labels()
    return Examples({k: torch.from_numpy(np.concatenate(v)) for k, v in arrays.items()},
                    None if labels is None else torch.from_numpy(np.asarray(labels).reshape(len(data), -1)
                                                                  .squeeze(-1)),
                    data.source.description, data.fingerprint)


def outputs_of(module: torch.nn.Module, inputs: Mapping[str, torch.Tensor],
               names: list[str]) -> dict[str, torch.Tensor]:
    """The module's outputs on named inputs, keyed by the model's output names."""
    return dict(zip(names, flatten_outputs(module(*inputs.values())), strict=True))


def evaluate(module: torch.nn.Module, data: Examples, names: list[str], metric: TaskMetric,
             batch_size: int = 256) -> float:
    """The task metric of `module` on `data` (eval mode, no gradients)."""
    labels = data.require_labels("--eval", f"the metric {metric.name}")
    was_training = module.training
    module.eval()
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    try:
        with torch.no_grad():
            for inputs, _ in data.batches(batch_size):
                for name, value in outputs_of(module, inputs, names).items():
                    parts[name].append(value.numpy())
    finally:
        module.train(was_training)
    return metric({n: np.concatenate(v) for n, v in parts.items()}, labels.numpy())
