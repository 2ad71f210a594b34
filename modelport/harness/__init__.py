"""The cross-runtime harness: plan backend x precision, measure each row in isolation, report.

`bench(...)` is `modelport bench`; `build_report`/`write_reports` are `modelport report`. They are imported
on first use, so a measuring process (`harness/worker.py`) that loads an artifact never imports torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelport.harness.api import bench
    from modelport.harness.report import Budget, build_report, write_reports

_LAZY = {"bench": "modelport.harness.api", "Budget": "modelport.harness.report",
         "build_report": "modelport.harness.report", "write_reports": "modelport.harness.report"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'modelport.harness' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)


__all__ = ["Budget", "bench", "build_report", "write_reports"]
