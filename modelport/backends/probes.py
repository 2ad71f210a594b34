"""Fidelity guards' shared pieces: probe inputs made from the example feeds, and the choice between built variants.

A backend that can build one precision two ways (ONNX Runtime's int8-dynamic against `quantize_dynamic`'s
defaults, OpenVINO's NNCF INT8 against the shared QDQ model) builds both, runs both on the same probes, and keeps
the one whose outputs are closer to FP32: neither way is assumed better on a model nobody has measured.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from modelport.similarity import array_sqnr_db

# A challenger replaces the preferred variant only when this much closer to FP32: probe SQNRs move by tenths.
GUARD_MARGIN_DB = 0.5


def probe_feeds(feeds: Mapping[str, np.ndarray], copies: int = 7) -> list[dict[str, np.ndarray]]:
    """The example feeds and `copies` of them with Gaussian noise at 10% of each float input's spread (integer
    inputs such as token ids are kept as they are): a few inputs near the real one, with no data source needed."""
    rng = np.random.default_rng(0)
    probes = [{k: np.asarray(v) for k, v in feeds.items()}]
    for _ in range(copies):
        probes.append({k: (v + rng.normal(0, 0.1 * (float(v.std()) or 1.0), v.shape)).astype(v.dtype)
                       if v.dtype.kind == "f" else v for k, v in probes[0].items()})
    return probes


def closest(reference: np.ndarray, outputs: Mapping[str, np.ndarray], preferred: str) -> tuple[str, dict[str, float]]:
    """The variant to keep and every variant's output SQNR (dB) against `reference`: `preferred` unless another is
    more than GUARD_MARGIN_DB closer."""
    scores = {label: round(array_sqnr_db(reference, got), 2) for label, got in outputs.items()}
    best = max(scores, key=scores.__getitem__)
    return (best if scores[best] > scores[preferred] + GUARD_MARGIN_DB else preferred), scores
