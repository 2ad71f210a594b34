"""Compression: structured pruning, low-rank factorization and distillation (torch in, torch out).

`compress(model, train=..., out="model.pt2", settings=Settings(prune=0.5, distill=True))` is
`modelport compress`; its output is a `.pt2` program every other command takes as MODEL. MACs and
parameters are counted by `macs.size`, the one count reports and benchmarks share. Names are imported
on first use, so the `modelport` command starts without loading the training code.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"CompressResult": "api", "compress": "api", "Settings": "settings", "count_macs": "macs",
            "count_params": "macs", "size": "macs"}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"modelport.compress.{_EXPORTS[name]}"), name)


__all__ = sorted(_EXPORTS)
