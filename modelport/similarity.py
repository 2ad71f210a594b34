"""Cosine similarity and SQNR: the one implementation the harness, debug, the QDQ pass, tests and benchmarks use.

Both are computed in float64, with samples on axis 0. Where a side is all zeros, cosine is undefined; modelport
decides it so that a fidelity figure still reads right:

- both samples all zeros: 1.0 (the outputs agree exactly);
- one all zeros, the other not: 0.0 (nothing of the reference's direction is kept).

SQNR in dB is 10·log10(signal power / noise power) from summed squares: +inf where there is no noise (identical
outputs), -inf where the signal is zero but the noise is not. `finite_or_none` turns those into None for JSON.
Numpy only, below every other package of modelport.
"""

from __future__ import annotations

import math

import numpy as np


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The cosine similarity of each sample (axis 0) of two arrays of one shape, in [-1, 1], zeros as decided."""
    a64 = np.asarray(a, np.float64).reshape(len(a), -1) if np.ndim(a) else np.asarray(a, np.float64).reshape(1, 1)
    b64 = np.asarray(b, np.float64).reshape(a64.shape)
    norm_a, norm_b = np.linalg.norm(a64, axis=1), np.linalg.norm(b64, axis=1)
    norms = norm_a * norm_b
    dots = np.einsum("ij,ij->i", a64, b64)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), np.where((norm_a == 0) & (norm_b == 0), 1, 0))
    return np.clip(cos, -1, 1)


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The per-sample cosine similarity averaged over samples."""
    return float(row_cosines(a, b).mean())


def sqnr_db(signal: float, noise: float) -> float:
    """Signal-to-quantization-noise ratio in dB from summed squares; +inf without noise, -inf without signal."""
    if noise <= 0:
        return math.inf
    if signal <= 0:
        return -math.inf
    return 10 * math.log10(signal / noise)


def array_sqnr_db(reference: np.ndarray, got: np.ndarray) -> float:
    """SQNR in dB of `got` against `reference` over the whole array."""
    r = np.asarray(reference, np.float64)
    return sqnr_db(float(np.square(r).sum()), float(np.square(r - np.asarray(got, np.float64)).sum()))


def finite_or_none(x: float | None) -> float | None:
    """`x` as a plain float, or None where it is missing or not finite (strict JSON has no inf or NaN)."""
    return float(x) if x is not None and math.isfinite(x) else None
