"""An accuracy budget (`--budget cos>=0.995,sqnr>=25,drop<=1.0`): what an INT8 artifact must keep of FP32.

`cos` is the mean per-sample cosine to PyTorch FP32 and `sqnr` its SQNR in dB, each the worst over outputs (the
harness's fidelity summary); `drop` is the task metric's loss in its points (top-1 accuracy: percentage points),
which needs labelled evaluation data. Each figure has one direction, so `cos<=...` is refused, not guessed at.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from modelport.errors import BadInput

# figure -> (the only comparison that makes sense for it, the scale its shortfall is measured in)
FIGURES = {"cos": (">=", "1 - cosine"), "sqnr": (">=", "dB"), "drop": ("<=", "metric points")}
_TERM = re.compile(r"^\s*([a-z]+)\s*(>=|<=)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?)\s*$", re.IGNORECASE)
EXAMPLE = "cos>=0.995, sqnr>=25 or drop<=1.0, several joined by commas"


@dataclass(frozen=True)
class Bound:
    """One figure and its limit."""

    figure: str
    limit: float

    def __str__(self) -> str:
        return f"{self.figure}{FIGURES[self.figure][0]}{self.limit:.10g}"

    def shortfall(self, value: float | None) -> float:
        """How far `value` is from meeting the bound, relative to its scale (0 when met; inf when undefined)."""
        if value is None or math.isnan(value):
            return math.inf
        if self.figure == "cos":
            return max(0.0, self.limit - value) / max(1.0 - self.limit, 1e-12)
        if self.figure == "sqnr":
            return max(0.0, self.limit - value) / max(abs(self.limit), 1.0)
        return max(0.0, value - self.limit) / max(abs(self.limit), 1.0)


@dataclass(frozen=True)
class Budget:
    """Every bound must hold; `figures` maps cos, sqnr and drop to measured values (None: undefined)."""

    bounds: tuple[Bound, ...]

    @property
    def needs_labels(self) -> bool:
        return any(b.figure == "drop" for b in self.bounds)

    def met(self, figures: Mapping[str, float | None]) -> bool:
        return self.shortfall(figures) == 0

    def shortfall(self, figures: Mapping[str, float | None]) -> float:
        """The worst bound's relative shortfall: what ranks the candidates when none meets the budget."""
        return max(b.shortfall(figures.get(b.figure)) for b in self.bounds)

    def describe(self) -> str:
        return ", ".join(map(str, self.bounds))


def parse_budget(text: str) -> Budget:
    """The Budget `text` names; BadInput for anything else."""
    bounds = []
    for term in text.split(","):
        match = _TERM.match(term)
        if not match:
            raise BadInput(f"--budget {text!r}: {term.strip()!r} is not FIGURE>=VALUE or FIGURE<=VALUE.",
                           hint=f"Write e.g. {EXAMPLE}.")
        figure, op, value = match[1].lower(), match[2], float(match[3])
        if figure not in FIGURES:
            raise BadInput(f"--budget {text!r}: unknown figure {figure!r}.",
                           hint=f"Figures: {', '.join(FIGURES)} (e.g. {EXAMPLE}).")
        if op != FIGURES[figure][0]:
            raise BadInput(f"--budget {text!r}: {figure} is bounded with {FIGURES[figure][0]}, not {op}.",
                           hint=f"Write e.g. {EXAMPLE}.")
        if figure == "cos" and not -1 <= value <= 1:
            raise BadInput(f"--budget {text!r}: a cosine lies in [-1, 1], not {value:g}.")
        if any(b.figure == figure for b in bounds):
            raise BadInput(f"--budget {text!r} bounds {figure} twice.")
        bounds.append(Bound(figure, value))
    return Budget(tuple(bounds))


def check_applies(budget: Budget, precision: str, has_labels: bool) -> None:
    """BadInput where the budget cannot be searched: a float precision has no layers to keep out of INT8, and
    `drop` needs labels."""
    if precision != "int8":
        raise BadInput(f"--budget searches which layers of a calibrated INT8 build to keep in float; --precision "
                       f"{precision} is not one.", hint="Pass --precision int8 with --budget, or drop --budget.")
    if budget.needs_labels and not has_labels:
        raise BadInput(f"--budget {budget.describe()}: drop is the task metric's loss and the evaluation data has "
                       "no labels.", hint="Give --eval data with labels (an npz with a `labels` array, images:DIR "
                                          "with class folders), or bound cos or sqnr instead.")
