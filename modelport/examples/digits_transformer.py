"""A small ViT-style encoder trained on scikit-learn's 8x8 digits: the trained transformer for INT8 fidelity claims.

Each image is cut into sixteen 2x2 patches, embedded linearly with a learned position embedding, and passed
through pre-LayerNorm encoder layers (multi-head self-attention, GELU MLP); the mean token is classified.
Attention is written out (MatMul, Softmax, MatMul) rather than through nn.MultiheadAttention, so its export
is the plain graph ONNX Runtime's fusions and quantizers see on a real encoder. It trains in seconds and is
cached like the digits CNN; its input is the CNN's (`x`, Nx1x8x8), so `digits_calibration` and
`digits_evaluation` serve it as they are.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from modelport.examples.digits import cached_digits_model, fit_digits

PATCH = 2
TOKENS = (8 // PATCH) ** 2


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // self.heads), dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(n, t, d))


class EncoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class DigitsTransformer(nn.Module):
    def __init__(self, dim: int = 64, heads: int = 4, hidden: int = 128, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(PATCH * PATCH, dim)
        self.position = nn.Parameter(torch.zeros(1, TOKENS, dim))
        self.layers = nn.Sequential(*(EncoderLayer(dim, heads, hidden) for _ in range(layers)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        side = 8 // PATCH
        patches = x.reshape(n, side, PATCH, side, PATCH).permute(0, 1, 3, 2, 4).reshape(n, TOKENS, PATCH * PATCH)
        tokens = self.layers(self.embed(patches) + self.position)
        return self.head(self.norm(tokens).mean(dim=1))


def _train() -> DigitsTransformer:
    # One thread: a step is many small ops, which two threads on a busy machine ran 15x slower (578 vs 35 ms).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        return fit_digits(DigitsTransformer(), epochs=50, lr=1e-3)
    finally:
        torch.set_num_threads(threads)


def digits_transformer() -> tuple[nn.Module, tuple[torch.Tensor]]:
    """The trained digits encoder and one held-out image as its example input (input `x`, 1x1x8x8)."""
    return cached_digits_model("digits_transformer", DigitsTransformer, _train)
