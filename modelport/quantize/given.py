"""Ranges given to the pass instead of calibrated ones (QAT's learned ranges: `ranges_file=`).

The file (`{"ranges": {tensor: [min, max]}}`, as `modelport compress --qat` writes it) is read and checked
once, when the setting is parsed; its content hash is part of the cache and artifact keys. Its tensors
must be tensors of the float ONNX model. The pass calibrates as usual, then the given ranges replace the
calibrated ones before anything reads them (the rules, the noise analysis, ORT's quantizer). ORT quantizes
the output of a shape-preserving op (Reshape, Flatten, MaxPool...) with its input's parameters, so a
range given for such an output is given to that input too: otherwise the calibrated range upstream
would win.

A ranges file beside a `.pt2` model (`OUT.pt2.ranges.json`, as `compress --qat` writes it) is picked up by
every int8 build that reads ranges (`beside`); it records the SHA-256 of the model file it was learned with,
and one that does not match (the model was written again since) is refused: ranges learned for other
weights would quantize this model wrongly, without a sign.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelport.artifact import file_sha256

if TYPE_CHECKING:
    from modelport.quantize.graph import Graph


@dataclass(frozen=True)
class RangesFile:
    """A checked ranges file: where it is, its content hash, and {tensor: (min, max)}."""

    path: str
    digest: str
    ranges: tuple[tuple[str, tuple[float, float]], ...]

    def __str__(self) -> str:  # what recipes, keys and manifests show: the file and the content it had
        return f"{self.path} (sha256 {self.digest[:16]})"

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.digest, "tensors": len(self.ranges)}

    @property
    def by_tensor(self) -> dict[str, tuple[float, float]]:
        return dict(self.ranges)


SUFFIX = ".ranges.json"


def path_beside(model: Path) -> Path:
    """Where the ranges learned for a model file live: beside it, as MODEL.pt2.ranges.json."""
    return model.with_name(model.name + SUFFIX)


def beside(origin: str) -> Path | None:
    """The ranges file beside a `.pt2` model, checked against the model file; None where there is none.

    A file for another model file (its `model_sha256` differs or is missing) is bad input: the hint says how
    to build without it or with it regardless."""
    from modelport.errors import BadInput

    model = Path(origin)
    if model.suffix != ".pt2" or not model.is_file() or not (path := path_beside(model)).is_file():
        return None
    try:
        recorded = json.loads(path.read_bytes()).get("model_sha256")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if recorded != file_sha256(model):
        raise BadInput(f"{path} sits beside {model} but was not learned for it: the model file changed since "
                       f"(its SHA-256 is not the one the ranges file records{'' if recorded else ', which is none'}).",
                       hint="Run `modelport compress --qat` again to relearn them, delete the file, add "
                            "--option ranges_file=none to build with calibrated ranges, or name the file with "
                            f"--option ranges_file={path} to use it regardless.")
    return path


def read_ranges_file(value: Any) -> RangesFile | None:
    """Parse the `ranges_file` setting: a path to a ranges file (none or empty: no file); ValueError says why not."""
    if value is None or isinstance(value, RangesFile):
        return value
    if str(value).strip().lower() in ("", "none"):
        return None
    path = Path(str(value)).expanduser()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {str(path)!r} ({exc.strerror or exc})") from None
    try:
        ranges = json.loads(data)["ranges"]
        pairs = tuple(sorted((str(t), (float(lo), float(hi))) for t, (lo, hi) in ranges.items()))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ValueError(f"{str(path)!r} is not a ranges file: JSON with \"ranges\": {{tensor: [min, max]}}, as "
                         "`modelport compress --qat` writes it") from None
    bad = [t for t, (lo, hi) in pairs if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi)]
    if bad:
        raise ValueError(f"{str(path)!r} gives tensor(s) {', '.join(bad)} a range that is not finite min <= max")
    return RangesFile(str(path.resolve()), hashlib.sha256(data).hexdigest(), pairs)


def unknown_tensors(given: RangesFile, model: Any) -> list[str]:
    """The tensors the file names that the ONNX model (inputs, node outputs) does not have."""
    names = {i.name for i in model.graph.input} | {o for n in model.graph.node for o in n.output}
    return sorted(t for t, _ in given.ranges if t not in names)


def _sharing_ops() -> frozenset[str]:
    """Op types whose output ORT's QDQ quantizer gives its input's scale and zero point."""
    from onnxruntime.quantization.operators.direct_q8 import QDQDirect8BitOp
    from onnxruntime.quantization.registry import QDQRegistry

    return frozenset(op for op, cls in QDQRegistry.items() if issubclass(cls, QDQDirect8BitOp))


def expand(given: Mapping[str, tuple[float, float]], graph: Graph) -> dict[str, tuple[float, float]]:
    """The given ranges, each also given upstream through the ops that share their input's parameters."""
    sharing = _sharing_ops()
    out = dict(given)
    for tensor, bounds in given.items():
        node = graph.producer.get(tensor)
        while node is not None and node.op_type in sharing and node.input and node.input[0] not in given:
            out.setdefault(node.input[0], bounds)
            node = graph.producer.get(node.input[0])
    return out


def apply(ranges_path: Path, given: RangesFile, graph: Graph) -> dict[str, Any]:
    """Replace the calibrated ranges saved at `ranges_path` with the given ones; what the record keeps of it."""
    import numpy as np
    from onnxruntime.quantization.calibrate import TensorData, load_tensors_data, save_tensors_data

    ranges = load_tensors_data(ranges_path)
    wanted = expand(given.by_tensor, graph)
    applied = {t: b for t, b in wanted.items() if t in ranges.data}
    for tensor, (lo, hi) in applied.items():
        ranges.data[tensor] = TensorData(lowest=np.array(lo, np.float32), highest=np.array(hi, np.float32))
    save_tensors_data(ranges, ranges_path)
    return {**given.to_json(), "applied": sorted(t for t in applied if t in given.by_tensor),
            "shared_upstream": sorted(t for t in applied if t not in given.by_tensor),
            "not_in_prepared_graph": sorted(t for t in given.by_tensor if t not in ranges.data)}
