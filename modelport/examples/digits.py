"""A small CNN trained on scikit-learn's bundled 8x8 digits: real images, real labels, no download.

Training takes a few seconds on a CPU; the weights are cached (MODELPORT_CACHE, default
~/.cache/modelport) so later calls load them. The held-out split is what accuracy is measured on.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

from modelport.machine import cache_dir

_SEED = 0
_TEST_SIZE = 497  # about 28% of the 1,797 images


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def digits_data(split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 1, 8, 8) float32 in [0, 1] and int64 labels of the 'train' or 'test' split."""
    from sklearn.datasets import load_digits

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[:, None]
    labels = data.target.astype(np.int64)
    order = np.random.default_rng(_SEED).permutation(len(labels))
    idx = order[_TEST_SIZE:] if split == "train" else order[:_TEST_SIZE]
    return images[idx], labels[idx]


def fit_digits(model: nn.Module, epochs: int, lr: float = 3e-3) -> nn.Module:
    """Train `model` on the digits train split (Adam, cross-entropy, batches of 64); returned in eval mode.
    Seed torch before making the model: its initialisation and the batches' order draw from one stream."""
    x, y = (torch.from_numpy(a) for a in digits_data("train"))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        perm = torch.randperm(len(y))
        for i in range(0, len(y), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def _train() -> DigitsCNN:
    torch.manual_seed(_SEED)
    return fit_digits(DigitsCNN(), epochs=25)


def cached_digits_model(name: str, make: Callable[[], nn.Module], train: Callable[[], nn.Module]
                        ) -> tuple[nn.Module, tuple[torch.Tensor]]:
    """`train()`'s model, trained once and cached (MODELPORT_CACHE) under a key of the source of `make`, `train`
    and the data, with one held-out image as its example input: every digits-trained model here is made so."""
    code = inspect.getsource(make) + inspect.getsource(train) + inspect.getsource(digits_data)
    key = hashlib.sha256(f"{code}{torch.__version__}".encode()).hexdigest()[:12]
    path = cache_dir() / "examples" / f"{name}-{key}.pt"
    model = make()
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
    else:
        model = train()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(model.state_dict(), tmp)
        tmp.replace(path)
    x, _ = digits_data("test")
    return model.eval(), (torch.from_numpy(x[:1]),)


def digits_cnn() -> tuple[nn.Module, tuple[torch.Tensor]]:
    """The trained digits CNN and one held-out image as its example input (input `x`, 1x1x8x8)."""
    return cached_digits_model("digits_cnn", DigitsCNN, _train)


def _samples(split: str) -> Iterator[dict[str, np.ndarray]]:
    images, labels = digits_data(split)
    for image, label in zip(images, labels, strict=True):
        yield {"x": image[None], "label": np.asarray(label)}


def digits_calibration() -> Iterator[dict[str, np.ndarray]]:
    """Training images as calibration samples: `--calib modelport.examples:digits_calibration`."""
    return _samples("train")


def digits_evaluation() -> Iterator[dict[str, np.ndarray]]:
    """Held-out images with labels (an evaluation source: `--eval modelport.examples:digits_evaluation`)."""
    return _samples("test")
