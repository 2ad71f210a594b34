"""The registry of algorithms that rewrite the float model before calibration: SmoothQuant, cross-layer
equalization, AdaRound and bias correction (`layers.py` holds what the last three share).

To add one: write `algorithms/NAME.py` with its keyword-only options dataclass (a `Declared` whose fields
are `setting`s: that declaration gives its validation, its `--option` entries and its manifest record) and
an `Algorithm(name, summary, options, apply)`, then list it in `ALGORITHMS` below. The pass runs every
registered algorithm whose options are enabled, in this order, and records what each changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from modelport.errors import BadInput
from modelport.quantize.algorithms import adaround, bias_correction, cle, smoothquant
from modelport.quantize.algorithms.base import Algorithm, AlgorithmRun

if TYPE_CHECKING:
    from modelport.calibration.dataset import CalibrationSet
    from modelport.quantize.declare import Declared
    from modelport.quantize.settings import QdqSettings

# equalization before rounding is learnt; bias correction last, so it corrects the weights as finally rounded
ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (smoothquant.ALGORITHM, cle.ALGORITHM, adaround.ALGORITHM,
                                                        bias_correction.ALGORITHM)}


def algorithm(name: str) -> Algorithm:
    found = ALGORITHMS.get(name)
    if found is None:
        raise BadInput(f"Unknown quantization algorithm {name!r}.", hint=f"Known: {', '.join(ALGORITHMS)}.")
    return found


def algorithm_options(given: Mapping[str, Declared] | None = None) -> dict[str, Declared]:
    """Options for every registered algorithm: those given, the declared defaults for the rest."""
    given = dict(given or {})
    for name, options in given.items():
        expected = algorithm(name).options
        if not isinstance(options, expected):
            raise BadInput(f"The options of algorithm {name} must be a {expected.__name__}, not "
                           f"{type(options).__name__}.")
    return {name: given[name] if name in given else a.options() for name, a in ALGORITHMS.items()}


def enabled_algorithms(settings: QdqSettings) -> list[tuple[Algorithm, Declared]]:
    return [(a, options) for name, a in ALGORITHMS.items()
            if (options := settings.algorithms[name]).enabled and a.applies(options, settings)]


def apply_algorithms(prepared: Path, calibration: CalibrationSet, settings: QdqSettings) -> dict[str, AlgorithmRun]:
    """Run the enabled algorithms on the prepared model, in registry order; name -> what each changed."""
    return {a.name: a.apply(prepared, calibration, options, settings) for a, options in enabled_algorithms(settings)}


__all__ = ["ALGORITHMS", "Algorithm", "AlgorithmRun", "algorithm", "algorithm_options", "apply_algorithms",
           "enabled_algorithms"]
