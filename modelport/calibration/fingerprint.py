"""The content fingerprint of a calibration set: a hash per sample, combined so that order does not matter.

Two sets with the same samples (after conforming to the model's inputs) in any order, from any files,
share a fingerprint; changing one value of one sample changes it. Labels are not part of it: they do
not change what a backend calibrates on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import numpy as np


def sample_digest(sample: Mapping[str, np.ndarray]) -> bytes:
    """The hash of one conformed sample: each input's name, dtype, shape and bytes."""
    h = hashlib.sha256()
    for name in sorted(sample):
        a = np.ascontiguousarray(sample[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape}\0".encode())
        h.update(a.reshape(-1).view(np.uint8).data if a.size else b"")
    return h.digest()


def combine(digests: Iterable[bytes]) -> str:
    """One fingerprint for a multiset of sample digests (sorted, so file and sample order do not count)."""
    h = hashlib.sha256()
    for d in sorted(digests):
        h.update(d)
    return h.hexdigest()[:16]
