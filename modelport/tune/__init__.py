"""The accuracy-budget search: which layers to keep out of INT8 so that an artifact meets `--budget`.

`parse_budget` reads the expression; `search` builds and judges candidates on the target runtime and writes the
fastest that meets it (see search.py). Backends are reached through builder and `exclude.TO_OPTIONS` only.
The search is imported on first use, so that reading a budget (the reports do) imports no runtime or torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from modelport.tune.budget import Budget, parse_budget

if TYPE_CHECKING:
    from modelport.tune.search import Outcome, search, search_closest

_LAZY = {"Outcome": "modelport.tune.search", "search": "modelport.tune.search",
         "search_closest": "modelport.tune.search"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'modelport.tune' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)


__all__ = ["Budget", "Outcome", "parse_budget", "search", "search_closest"]
