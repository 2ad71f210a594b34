"""Calibration sources named on the command line by `--calib SRC` / `--eval SRC`.

- `file.npz`: one array per input, keyed by input name, samples on the first axis (`labels` optional);
  `file.npy` the same for a one-input model;
- `DIR` of `.npy` / `.npz` files, one sample or one batch each (class subfolders give labels);
- `images:DIR[?resize=256,crop=224,...]`: a folder of images with a preprocessing spec (images.py);
- `file.py:fn` / `package.module:fn`: a callable returning an iterable of samples (see CallableSource);
- `synthetic[:N]`: random data drawn to the input specs, for latency only.

Every source reads one sample at a time from disk (or from the callable's iterable), so memory stays
flat however large the source is.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from modelport.calibration.checks import LABEL_KEYS, CalibrationWarning, to_numpy
from modelport.calibration.dataset import ArraySource, Source, SourceBase
from modelport.calibration.folders import scan_folder
from modelport.calibration.npyio import DiskArray, open_npy, open_npz
from modelport.errors import BadInput
from modelport.specs import TensorSpec
from modelport.usercode import import_user_callable, user_code

SYNTHETIC_DEFAULT = 128
UNNAMED = "arr_0"  # the key numpy.savez gives a positional array


class SyntheticSource(SourceBase):
    """Random samples drawn to the specs; sample i is always the same (seeded by its index)."""

    kind = "synthetic"
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

    def label(self, index: int) -> None:
        return None


def _single_input_name(names: Sequence[str], specs: Sequence[TensorSpec]) -> dict[str, str]:
    """Map an unnamed array (`arr_0`, or a bare .npy) to a one-input model's input."""
    if list(names) == [UNNAMED] and len(specs) == 1:
        return {UNNAMED: specs[0].name}
    return {}


class ArrayFileSource(SourceBase):
    """An `.npz` (or `.npy`) file with samples on the first axis, read one row per sample, never whole."""

    kind = "npz"

    def __init__(self, path: Path, specs: Sequence[TensorSpec]) -> None:
        self.path = path
        self.description = str(path)
        if path.suffix == ".npy":
            self.kind = "npy"
            arrays: dict[str, DiskArray] = {UNNAMED: open_npy(path)}
            if len(specs) != 1:
                raise BadInput(f"{str(path)!r} holds one array, but the model has inputs {[s.name for s in specs]}.",
                               hint="Save an .npz with one array per input: np.savez(path, name=array, ...).")
        else:
            arrays = open_npz(path)
        label_keys = [k for k in LABEL_KEYS if k in arrays]
        self.labels = arrays.pop(label_keys[0]) if label_keys else None
        rename = _single_input_name(list(arrays), specs)
        self.arrays = {rename.get(k, k): v for k, v in arrays.items()}
        if not self.arrays:
            raise BadInput(f"{str(path)!r} holds no arrays besides labels.")
        for a in self.arrays.values():
            if a.ndim == 0:
                raise BadInput(f"{a.where} is a scalar; calibration arrays hold samples on their first axis.")
        counts = {name: len(a) for name, a in self.arrays.items()}
        if self.labels is not None:
            counts["labels"] = len(self.labels)
        if len(set(counts.values())) > 1:
            raise BadInput(f"{str(path)!r}: the arrays have different sample counts on their first axis: {counts}.",
                           hint="Every input (and labels) needs one entry per sample on axis 0.")
        self.count = next(iter(counts.values()))

    def __len__(self) -> int:
        return self.count

    def read(self, index: int) -> dict[str, np.ndarray]:
        sample = {name: a.read(index, index + 1) for name, a in self.arrays.items()}
        if self.labels is not None:
            sample["label"] = self.labels.read(index, index + 1)[0]
        return sample

    def label(self, index: int) -> np.ndarray | None:
        return None if self.labels is None else self.labels.read(index, index + 1)[0]

    def locate(self, index: int) -> str:
        return f"{self.path} sample {index}"

    def details(self) -> dict[str, Any]:
        return {"bytes": sum(a.nbytes for a in self.arrays.values())}


def _rows(a: DiskArray | np.ndarray, spec: TensorSpec | None) -> int:
    """Samples in one array: a batch (rows on axis 0) where it has the input's full rank, else one sample."""
    return len(a) if _batched(a, spec) else 1


def _batched(a: DiskArray | np.ndarray, spec: TensorSpec | None) -> bool:
    return a.ndim > 0 and (spec is None or a.ndim >= len(spec.shape))


class ArrayDirSource(SourceBase):
    """A directory of `.npy` / `.npz` files, each one sample or one batch; class subfolders give labels.

    Only the file list and each file's sample count stay in memory; a read opens one file and reads
    one row of it.
    """

    kind = "npy-dir"

    def __init__(self, root: Path, specs: Sequence[TensorSpec]) -> None:
        folder = scan_folder(root, (".npy", ".npz"), ".npy/.npz")
        self.root = root
        self.description = str(root)
        self.specs = {s.name: s for s in specs}
        self.files = [str(f) for f in folder.files]
        self.class_labels = folder.labels
        self.classes = folder.classes
        if len(specs) != 1 and any(f.endswith(".npy") for f in self.files):
            raise BadInput(f"{str(root)!r} holds .npy files, which hold one array, but the model has inputs "
                           f"{list(self.specs)}.", hint="Save one .npz per sample keyed by input name.")
        self._cache: tuple[int, dict[str, DiskArray], DiskArray | None] | None = None
        counts = [self._count(self._open(i)[0], f) for i, f in enumerate(self.files)]
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cache": None}

    def _open(self, file_index: int) -> tuple[dict[str, DiskArray], DiskArray | None]:
        if self._cache is not None and self._cache[0] == file_index:
            return self._cache[1], self._cache[2]
        path = Path(self.files[file_index])
        if path.suffix == ".npy":
            arrays: dict[str, DiskArray] = {next(iter(self.specs)): open_npy(path)}
        else:
            found = open_npz(path)
            rename = _single_input_name([k for k in found if k not in LABEL_KEYS], list(self.specs.values()))
            arrays = {rename.get(k, k): v for k, v in found.items()}
        label_keys = [k for k in LABEL_KEYS if k in arrays]
        labels = arrays.pop(label_keys[0]) if label_keys else None
        self._cache = (file_index, arrays, labels)
        return arrays, labels

    def _count(self, arrays: Mapping[str, DiskArray], path: str) -> int:
        if not arrays:
            raise BadInput(f"{path!r} holds no arrays.")
        counts = {name: _rows(a, self.specs[name]) for name, a in arrays.items() if name in self.specs}
        if not counts:  # no array named after an input: the names check reports it when the sample is read
            name, a = next(iter(arrays.items()))
            counts = {name: _rows(a, None)}
        if len(set(counts.values())) > 1:
            raise BadInput(f"{path!r}: its arrays hold different sample counts {counts}.",
                           hint="Each file holds one sample, or one batch with the same count in every array.")
        return next(iter(counts.values()))

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _find(self, index: int) -> tuple[int, int]:
        file_index = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return file_index, index - int(self.offsets[file_index])

    def read(self, index: int) -> dict[str, np.ndarray]:
        file_index, row = self._find(index)
        arrays, labels = self._open(file_index)
        sample = {name: a.read(row, row + 1) if _batched(a, self.specs.get(name)) else a.read()[None]
                  for name, a in arrays.items()}
        label = self._label(file_index, row, labels)
        if label is not None:
            sample["label"] = label
        return sample

    def _label(self, file_index: int, row: int, labels: DiskArray | None) -> np.ndarray | None:
        if labels is not None:
            rows = int(self.offsets[file_index + 1] - self.offsets[file_index])
            if labels.ndim and len(labels) == rows and (rows > 1 or labels.ndim == 1):
                return labels.read(row, row + 1)[0]
            return labels.read()
        if self.class_labels is not None:
            return np.asarray(self.class_labels[file_index], dtype=np.int64)
        return None

    def label(self, index: int) -> np.ndarray | None:
        file_index, row = self._find(index)
        return self._label(file_index, row, self._open(file_index)[1])

    def locate(self, index: int) -> str:
        file_index, row = self._find(index)
        rows = int(self.offsets[file_index + 1] - self.offsets[file_index])
        return self.files[file_index] + (f" row {row}" if rows > 1 else "") + f" (sample {index})"

    def details(self) -> dict[str, Any]:
        return {"files": len(self.files), "classes": self.classes}


class CallableSource(SourceBase):
    """Samples from a user's callable, streamed: it is called again for each pass and never materialised.

    The callable returns an iterable (a generator, a list, a Dataset-like object with __len__ and
    __getitem__, or a numpy array). Each item is a dict keyed by input name (a `label` may ride along),
    a tuple of the inputs in order (plus a trailing label), or an array for a one-input model. An item
    is one sample, or a batch where its inputs have the model's full rank. The first call counts the
    samples; later passes call the callable again, so it must yield the same samples each time.
    """

    kind = "callable"

    def __init__(self, ref: str, specs: Sequence[TensorSpec]) -> None:
        self.ref = ref
        self.description = ref
        self.specs = list(specs)
        self._fn = None
        self._cursor: tuple[int, Iterator[Any], int, Any] | None = None  # (pid, iterator, item index, item)
        counts = []
        result = self._call()
        self._random = _random_access(result)
        self._items: Any = result if self._random else None  # kept only where it allows random access
        for k, item in self._iterate(result):
            counts.append(self._item_rows(self._sample(item, k), k))
        if not counts:
            raise BadInput(f"The calibration callable {ref!r} returned no samples.")
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fn": None, "_items": None, "_cursor": None}

    def _call(self) -> Any:
        if self._fn is None:
            self._fn, _ = import_user_callable(self.ref, "calibration callable", "--calib/--eval")
        try:
            result = self._fn()
        except BadInput:
            raise
        except Exception as exc:
            raise BadInput(f"The calibration callable {self.ref!r} raised {type(exc).__name__}: {exc}",
                           hint="Run it in Python to see the traceback, or pass --debug.") from exc
        if isinstance(result, Mapping) or result is None or isinstance(result, str | bytes):
            raise BadInput(f"The calibration callable {self.ref!r} returned a {type(result).__name__}.",
                           hint="Return an iterable of samples: dicts keyed by input name, tuples, or arrays.")
        return result

    def _iterate(self, result: Any) -> Iterator[tuple[int, Any]]:
        if _random_access(result):
            for k in range(len(result)):
                yield k, self._get(result, k)
            return
        try:
            iterator = iter(result)
        except TypeError:
            raise BadInput(f"The calibration callable {self.ref!r} returned a {type(result).__name__}, which is "
                           "not iterable.", hint="Return a list, a generator or a Dataset of samples.") from None
        k = 0
        while True:
            try:
                with user_code(self.ref, f"reading item {k} of"):
                    item = next(iterator)
            except StopIteration:
                return
            except BadInput:
                raise
            except Exception as exc:
                raise BadInput(f"The calibration callable {self.ref!r} raised {type(exc).__name__} at item {k}: "
                               f"{exc}") from exc
            yield k, item
            k += 1

    def _get(self, items: Any, k: int) -> Any:
        try:
            with user_code(self.ref, f"reading item {k} of"):
                return items[k]
        except BadInput:
            raise
        except Exception as exc:
            raise BadInput(f"The calibration callable {self.ref!r}: reading item {k} raised {type(exc).__name__}: "
                           f"{exc}") from exc

    def _sample(self, item: Any, k: int) -> dict[str, Any]:
        names = [s.name for s in self.specs]
        if isinstance(item, Mapping):
            return dict(item)
        if isinstance(item, tuple | list):
            if len(item) == len(names):
                return dict(zip(names, item, strict=True))
            if len(item) == len(names) + 1:
                return {**dict(zip(names, item[:-1], strict=True)), "label": item[-1]}
            raise BadInput(f"{self.ref!r} item {k} is a {type(item).__name__} of {len(item)} values; the model has "
                           f"inputs {names}.", hint="Yield the inputs in order, optionally followed by a label, or "
                                                    "dicts keyed by input name.")
        if len(names) != 1:
            raise BadInput(f"{self.ref!r} yields arrays, but the model has inputs {names}.",
                           hint="Yield dicts keyed by input name.")
        return {names[0]: item}

    def _item_rows(self, sample: Mapping[str, Any], k: int) -> int:
        counts = {s.name: _rows(to_numpy(sample[s.name]), s) for s in self.specs if s.name in sample}
        if len(set(counts.values())) > 1:
            raise BadInput(f"{self.ref!r} item {k}: its inputs hold different sample counts {counts}.")
        return next(iter(counts.values()), 1)

    def _item(self, k: int) -> Any:
        if self._random:
            if self._items is None:  # unpickled in another process
                self._items = self._call()
            return self._get(self._items, k)
        pid = os.getpid()
        if self._cursor is None or self._cursor[0] != pid or self._cursor[2] > k:
            self._cursor = (pid, self._iterate(self._call()), -1, None)
        _, iterator, at, item = self._cursor
        while at < k:
            try:
                at, item = next(iterator)
            except StopIteration:
                self._cursor = None
                raise BadInput(f"The calibration callable {self.ref!r} yielded fewer samples on a later call than "
                               f"on its first ({at + 1} items, not {len(self.offsets) - 1}).",
                               hint="It is called once per pass over the data and must yield the same samples "
                                    "each time.") from None
        self._cursor = (pid, iterator, at, item)
        return item

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _find(self, index: int) -> tuple[int, int, int]:
        k = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return k, index - int(self.offsets[k]), int(self.offsets[k + 1] - self.offsets[k])

    def read(self, index: int) -> dict[str, np.ndarray]:
        k, row, rows = self._find(index)
        sample = self._sample(self._item(k), k)
        out = {}
        for name, value in sample.items():
            if name in LABEL_KEYS:
                if value is None:
                    continue
                label = to_numpy(value)
                out["label"] = label[row] if label.ndim and len(label) == rows and (rows > 1 or label.ndim == 1) \
                    else label
                continue
            a = to_numpy(value)
            spec = next((s for s in self.specs if s.name == name), None)
            out[name] = a[row:row + 1] if _batched(a, spec) else a[None]
        return out

    def locate(self, index: int) -> str:
        k, row, rows = self._find(index)
        return f"{self.ref} item {k}" + (f" row {row}" if rows > 1 else "") + f" (sample {index})"

    def details(self) -> dict[str, Any]:
        items = len(self.offsets) - 1
        return {"items": items} if items != len(self) else {}


def _random_access(result: Any) -> bool:
    return hasattr(result, "__len__") and hasattr(result, "__getitem__") and not isinstance(result, Iterator)


def open_source(text: str, specs: Sequence[TensorSpec]) -> Source:
    """The Source named by `text` for a model with inputs `specs`."""
    if text == "synthetic" or text.startswith("synthetic:"):
        count_text = text.partition(":")[2] or str(SYNTHETIC_DEFAULT)
        if not count_text.isdigit() or int(count_text) < 1:
            raise BadInput(f"Cannot read {text!r}.", hint="Write synthetic or synthetic:N with N >= 1.")
        warnings.warn("Synthetic calibration data: INT8 artifacts built on it say nothing about accuracy "
                      "(use it for latency only).", CalibrationWarning, stacklevel=2)
        return SyntheticSource(specs, int(count_text))
    if text.startswith("images:"):
        from modelport.calibration.images import open_images

        return open_images(text.removeprefix("images:"), specs)
    path = Path(text)
    if path.is_dir():
        return ArrayDirSource(path, specs)
    if path.suffix in (".npz", ".npy"):
        if not path.is_file():
            raise BadInput(f"Calibration file {text!r} does not exist.", hint="Check the path.")
        return ArrayFileSource(path, specs)
    if ":" in text:
        if not specs:
            raise BadInput("The model has no inputs to calibrate.")
        return CallableSource(text, specs)
    raise BadInput(f"Cannot read calibration source {text!r}" + (" (no such file or directory)."
                                                                  if not path.exists() else "."),
                   hint="Use file.npz, a directory of .npy/.npz files, images:DIR, file.py:fn, package.module:fn, "
                        "or synthetic.")


__all__ = ["ArrayDirSource", "ArrayFileSource", "ArraySource", "CallableSource", "SyntheticSource", "open_source"]
