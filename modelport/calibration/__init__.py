"""One calibration set for every backend: sources, sampling, checks, and the shared QDQ pass."""

from collections.abc import Sequence

from modelport.calibration.dataset import ArraySource, CalibrationSet, Source, conform
from modelport.calibration.sources import SyntheticSource, open_source
from modelport.model import TensorSpec


def open_calibration(text: str, specs: Sequence[TensorSpec], *, size: int | None = None,
                     seed: int = 0) -> CalibrationSet:
    """The CalibrationSet named by `--calib SRC` for a model with inputs `specs`."""
    return CalibrationSet(open_source(text, specs), specs, size=size, seed=seed)


__all__ = ["ArraySource", "CalibrationSet", "Source", "SyntheticSource", "conform", "open_calibration",
           "open_source"]
