"""What an algorithm is to the QDQ pass: a name, an options dataclass declared once, and a rewrite of the
prepared float model that runs before calibration and says what it changed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelport.calibration.dataset import CalibrationSet
    from modelport.quantize.declare import Declared
    from modelport.quantize.rules import Why
    from modelport.quantize.settings import QdqSettings


@dataclass(frozen=True)
class AlgorithmRun:
    """What one algorithm changed in the float model, and the nodes it added that must stay float."""

    changes: list[dict[str, Any]] = field(default_factory=list)
    keep_float: dict[str, Why] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"changes": self.changes, "keep_float": {n: list(why) for n, why in self.keep_float.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AlgorithmRun:
        return cls(data["changes"], {n: (rule, reason) for n, (rule, reason) in data["keep_float"].items()})


def _always(options: Any, settings: QdqSettings) -> bool:
    return True


@dataclass(frozen=True)
class Algorithm:
    """One registered algorithm. `apply(prepared, calibration, options, settings)` rewrites the prepared float
    model in place; its result is cached with the ranges, so a cached entry never runs it again. It runs where
    its options are enabled and `applies(options, settings)` (e.g. only for per-tensor weights); the settings
    it `reads` are part of the cache key."""

    name: str
    summary: str
    options: type[Declared]
    apply: Callable[[Path, CalibrationSet, Any, QdqSettings], AlgorithmRun]
    version: int = 1  # bump when `apply` writes a different model: ranges cached before are not reused
    applies: Callable[[Any, QdqSettings], bool] = _always
    reads: tuple[str, ...] = ("analysis_samples", "batch_size")  # the QdqSettings fields its result depends on
