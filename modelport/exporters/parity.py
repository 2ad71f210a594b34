"""How an exported model's output is compared with eager PyTorch's: one rule for the ONNX and LiteRT checks.

The check inputs are drawn at random, so PyTorch itself may give NaN or inf on them (a log of a negative
number, a division by zero). Where PyTorch is not finite there is no right answer to hold the export to:
those values are counted, not compared. Where PyTorch is finite, an export that is not is a mismatch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class OutputError:
    """The worst error of one output on one input; `max_rel` is `max_abs` over the output's finite scale."""

    max_abs: float
    max_rel: float
    torch_nonfinite: int  # values where PyTorch gives NaN or inf: not compared
    size: int


def output_error(ref: np.ndarray, got: np.ndarray) -> OutputError:
    """Compare where PyTorch (`ref`) is finite; a NaN or inf from the export there is an infinite error."""
    r, o = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    finite = np.isfinite(r)
    diff = np.abs(r[finite] - o[finite])
    diff[~np.isfinite(diff)] = np.inf
    max_abs = float(diff.max(initial=0.0))
    scale = float(np.abs(r[finite]).max(initial=0.0))
    return OutputError(max_abs, max_abs / scale if scale > 0 else max_abs, int(r.size - finite.sum()), int(r.size))
