"""Calibration sources named on the command line by `--calib SRC` / `--eval SRC`.

- `file.npz`: one array per input, keyed by input name, samples on the first axis (`labels` optional);
- `file.py:fn` / `package.module:fn`: a callable returning an iterable of dicts (or arrays, for a
  one-input model); a dict may carry a `label`;
- `synthetic[:N]`: random data drawn to the input specs, for latency only.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from modelport.calibration.dataset import ArraySource, Source
from modelport.errors import BadInput
from modelport.model import TensorSpec, _import_factory

SYNTHETIC_DEFAULT = 128


class SyntheticSource:
    """Random samples drawn to the specs; sample i is always the same (seeded by its index)."""

    synthetic = True

    def __init__(self, specs: Sequence[TensorSpec], count: int = SYNTHETIC_DEFAULT) -> None:
        self.specs = list(specs)
        self.count = count
        self.description = f"synthetic:{count}"

    def __len__(self) -> int:
        return self.count

    def read(self, index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(index)
        out = {}
        for s in self.specs:
            shape = (1, *s.concrete(default=1)[1:]) if s.shape else ()
            dtype = np.dtype(s.dtype)
            if dtype.kind == "f":
                out[s.name] = rng.standard_normal(shape).astype(dtype)
            elif dtype.kind == "b":
                out[s.name] = rng.integers(0, 2, shape).astype(bool)
            else:
                out[s.name] = rng.integers(0, 2, shape).astype(dtype)
        return out


def _npz_source(path: Path) -> ArraySource:
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files if k not in ("label", "labels")}
        labels = data["labels"] if "labels" in data.files else data["label"] if "label" in data.files else None
    return ArraySource(arrays, labels, description=str(path))


def _callable_source(ref: str, specs: Sequence[TensorSpec]) -> ArraySource:
    fn, _ = _import_factory(ref)
    try:
        items = list(fn())
    except Exception as exc:
        raise BadInput(f"The calibration callable {ref!r} raised {type(exc).__name__}: {exc}") from exc
    if not items:
        raise BadInput(f"The calibration callable {ref!r} returned no samples.")
    if not isinstance(items[0], Mapping):
        if len(specs) != 1:
            raise BadInput(f"{ref!r} yields arrays, but the model has {len(specs)} inputs.",
                           hint="Yield dicts keyed by input name.")
        items = [{specs[0].name: a} for a in items]
    labels = [item.get("label", item.get("labels")) for item in items]
    by_name = {s.name: s for s in specs}
    arrays = {}
    for name in (k for k in items[0] if k not in ("label", "labels")):
        spec = by_name.get(name)
        stacked = []
        for item in items:
            a = np.asarray(item[name])
            if spec is not None and a.ndim == len(spec.shape) and a.shape[:1] == (1,):
                a = a[0]  # one sample given with its batch axis
            stacked.append(a)
        arrays[name] = np.stack(stacked)
    has_labels = all(lbl is not None for lbl in labels)
    return ArraySource(arrays, np.asarray(labels) if has_labels else None, description=ref)


def open_source(text: str, specs: Sequence[TensorSpec]) -> Source:
    """The Source named by `text`."""
    if text == "synthetic" or text.startswith("synthetic:"):
        count = int(text.partition(":")[2] or SYNTHETIC_DEFAULT)
        warnings.warn("Synthetic calibration data: INT8 artifacts built on it say nothing about accuracy.",
                      stacklevel=2)
        return SyntheticSource(specs, count)
    path = Path(text)
    if text.endswith(".npz"):
        if not path.is_file():
            raise BadInput(f"Calibration file {text!r} does not exist.")
        return _npz_source(path)
    if ":" in text:
        return _callable_source(text, specs)
    raise BadInput(f"Cannot read calibration source {text!r}.",
                   hint="Use file.npz, file.py:fn, package.module:fn or synthetic.")
