"""One calibration set for every backend: sources, sampling and checks (no runtime: `quantize/` holds the QDQ pass).

`open_calibration(text, specs)` turns `--calib SRC` into a CalibrationSet (at most DEFAULT_SIZE samples
unless `size` says otherwise); `open_evaluation` does the same for `--eval SRC`, keeping every sample.
Builders call `warn_if_weak(calibration, precision)` before an INT8 build.
"""

from collections.abc import Sequence

from modelport.calibration.checks import (
    MIN_INT8_SAMPLES,
    CalibrationWarning,
    CheckFailed,
    calibration_warnings,
    conform,
    inspect_calibration,
    warn_if_weak,
)
from modelport.calibration.dataset import DEFAULT_SIZE, ArraySource, CalibrationSet, Source, SourceBase
from modelport.calibration.sources import SyntheticSource, open_source
from modelport.specs import TensorSpec


def open_calibration(text: str, specs: Sequence[TensorSpec], *, size: int | None = None,
                     seed: int = 0) -> CalibrationSet:
    """The CalibrationSet named by `--calib SRC`: `size` samples, or DEFAULT_SIZE of a larger source."""
    source = open_source(text, specs)
    if size is None and len(source) > DEFAULT_SIZE:
        size = DEFAULT_SIZE
    return CalibrationSet(source, specs, size=size, seed=seed)


def open_evaluation(text: str, specs: Sequence[TensorSpec], *, size: int | None = None,
                    seed: int = 0) -> CalibrationSet:
    """The data named by `--eval SRC`: every sample unless `size` draws fewer."""
    return CalibrationSet(open_source(text, specs), specs, size=size, seed=seed)


__all__ = ["DEFAULT_SIZE", "MIN_INT8_SAMPLES", "ArraySource", "CalibrationSet", "CalibrationWarning", "CheckFailed",
           "Source", "SourceBase", "SyntheticSource", "calibration_warnings", "conform", "inspect_calibration",
           "open_calibration", "open_evaluation", "open_source", "warn_if_weak"]
