"""Per-tensor metrics accumulated sample by sample, the jump (the error a layer adds), and the ranking.

Only running sums are kept per tensor (signal and noise power, per-sample cosines, maxima), so memory does
not grow with the number of samples. SQNR and cosine are modelport's one implementation (`modelport/similarity.py`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelport.exporters.tensor_map import Layer
from modelport.similarity import finite_or_none, row_cosines, sqnr_db


def align(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """`value` in the reference's shape: as is, NHWC transposed back to NCHW, or with size-1 axes added or
    dropped; None where no such view fits (then the tensor is not compared)."""
    if value.shape == shape:
        return value
    if value.ndim == len(shape) == 4 and value.transpose(0, 3, 1, 2).shape == shape:
        return value.transpose(0, 3, 1, 2)
    if value.size == math.prod(shape) and [d for d in value.shape if d != 1] == [d for d in shape if d != 1]:
        return value.reshape(shape)
    return None


@dataclass
class Accumulator:
    """Running sums of one tensor against its reference over the samples seen so far."""

    signal: float = 0.0
    noise: float = 0.0
    cosines: float = 0.0
    rows: int = 0
    max_abs: float = 0.0
    ref_max: float = 0.0
    nonfinite: int = 0

    def add(self, out: np.ndarray, ref: np.ndarray) -> None:
        """Fold in one batch (samples on axis 0, the same shape on both sides)."""
        rows = len(ref) if ref.ndim else 1
        o = out.astype(np.float64).reshape(rows, -1)
        r = ref.astype(np.float64).reshape(rows, -1)
        bad = ~np.isfinite(o)
        if bad.any():
            self.nonfinite += int(bad.sum())
            return
        err = o - r
        self.signal += float(np.sum(r * r))
        self.noise += float(np.sum(err * err))
        self.cosines += float(row_cosines(o, r).sum())
        self.rows += rows
        self.max_abs = max(self.max_abs, float(np.abs(err).max(initial=0.0)))
        self.ref_max = max(self.ref_max, float(np.abs(r).max(initial=0.0)))

    def metrics(self) -> dict[str, Any]:
        """SQNR (dB, None where identical), mean per-sample cosine, max abs error and it relative to the
        reference's largest magnitude."""
        if not self.rows:
            return {"sqnr_db": None, "cosine": None, "max_abs": None, "max_rel": None, "nonfinite": self.nonfinite}
        return {"sqnr_db": finite_or_none(sqnr_db(self.signal, self.noise)), "cosine": self.cosines / self.rows,
                "max_abs": self.max_abs, "max_rel": self.max_abs / self.ref_max if self.ref_max else None,
                "nonfinite": self.nonfinite}


EXACT_DB = 6.02 * 24  # float32's 24-bit significand: the SQNR of a tensor rounded to float32, about 144 dB


def jumps(layers: Sequence[Layer], sqnr: Mapping[str, float | None]) -> dict[str, float]:
    """Per compared tensor (the keys of `sqnr`), its inputs' worst SQNR minus its own: the error it adds.

    Inputs are the nearest compared tensors upstream (a tensor the runtime fused away is looked through).
    An identical tensor has no finite SQNR; it counts as the cleanest tensor of the comparison, as does the
    input side of a tensor that reads nothing compared (a graph input, or one computed from constants). The
    ceiling is at most float32's own resolution (EXACT_DB): beyond it two tensors agree to the last bit of a
    float32, and a float op that matches to 800 dB in float64 would otherwise make the first quantized layer
    after it "add" 776 dB.
    """
    finite = [v for v in sqnr.values() if v is not None]
    ceiling = min(max(finite, default=0.0), EXACT_DB)
    sources: dict[str, frozenset[str]] = {}  # tensor -> the compared tensors it reads, through uncompared ones
    for layer in layers:  # topological order: every input is resolved before its readers
        sources[layer.tensor] = frozenset().union(
            *({name} if name in sqnr else sources.get(name, frozenset()) for name in layer.inputs))

    def level(tensor: str) -> float:
        value = sqnr[tensor]
        return ceiling if value is None else min(value, ceiling)

    out = {}
    for layer in layers:
        if layer.tensor in sqnr:
            inputs = sources[layer.tensor]
            worst_input = min((level(t) for t in inputs), default=ceiling)
            out[layer.tensor] = worst_input - level(layer.tensor)
    return out


def rank_layers(layers: Sequence[Mapping[str, Any]], top: int | None = None) -> list[Mapping[str, Any]]:
    """The layer entries that have a jump, worst first (largest jump; ties by lower SQNR): the culprits."""
    ranked = sorted((e for e in layers if e.get("jump_db") is not None),
                    key=lambda e: (-e["jump_db"], e["sqnr_db"] if e["sqnr_db"] is not None else math.inf))
    return ranked[:top] if top is not None else ranked
