"""The range cache: the prepared float model, ORT's ranges and what the analysis found, keyed by what they
depend on (model hash, calibration fingerprint, method, pre-processing, enabled algorithms and their options),
so that a second backend (OpenVINO, TensorRT) does not calibrate again."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelport.errors import StepFailed, os_error
from modelport.machine import cache_dir
from modelport.quantize.algorithms import AlgorithmRun, enabled_algorithms
from modelport.quantize.files import write_json_atomic
from modelport.quantize.statistics import measure_sqnr
from modelport.staging import ensure_dir, make_sibling_dir

if TYPE_CHECKING:
    from modelport.calibration.dataset import CalibrationSet
    from modelport.quantize.graph import Graph
    from modelport.quantize.settings import QdqSettings

CACHE_VERSION = 2  # 2: the record holds each algorithm's changes under "algorithms"
PREPARED, RANGES, RECORD = "prepared.onnx", "ranges.json", "record.json"


def model_hash(path: Path) -> str:
    """A content hash of an ONNX file and any external data files it names."""
    import onnx

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    model = onnx.load(str(path), load_external_data=False)
    files = sorted({e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"})
    for name in files:
        with open(path.parent / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:20]


def key_parts(onnx_path: Path, calibration: CalibrationSet, settings: QdqSettings) -> dict[str, Any]:
    """What the cached ranges depend on: the model, the data, the method, what ran before calibrating (with
    the settings each algorithm reads), and the content of a ranges file given in place of calibrated ranges."""
    record = settings.record()
    return {"model": model_hash(onnx_path), "calibration": calibration.fingerprint, "method": settings.method,
            "percentile": settings.percentile if settings.method == "percentile" else None,
            "preprocess": settings.preprocess,
            "given_ranges": settings.ranges_file.digest if settings.ranges_file else None,
            "algorithms": {a.name: {**options.record(), "version": a.version, **{f: record[f] for f in a.reads}}
                           for a, options in enabled_algorithms(settings)},
            "version": CACHE_VERSION}


def cache_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


@dataclass
class Entry:
    """One cache entry: the prepared float model, ORT's ranges, and what the analysis found."""

    folder: Path
    key: str
    record: dict[str, Any]

    @property
    def model_path(self) -> Path:
        return self.folder / PREPARED

    @property
    def ranges_path(self) -> Path:
        return self.folder / RANGES

    def ranges(self):
        from onnxruntime.quantization.calibrate import load_tensors_data

        return load_tensors_data(self.ranges_path)

    def algorithm_runs(self) -> dict[str, AlgorithmRun]:
        return {name: AlgorithmRun.from_json(run) for name, run in self.record["algorithms"].items()}

    def sqnr(self, calibration: CalibrationSet, settings: QdqSettings, graph: Graph) -> dict[str, float]:
        """Signal-to-quantization-noise (dB) of every compute-op input under the cached ranges (cached too)."""
        variant = (f"{settings.activations}-{'sym' if settings.symmetric_activations else 'asym'}-"
                   f"{settings.analysis_samples}")
        found = self.record.setdefault("sqnr", {}).get(variant)
        if found is None:
            found = measure_sqnr(self.model_path, calibration, settings, graph, self.ranges())
            self.record["sqnr"][variant] = found
            write_json_atomic(self.folder / RECORD, self.record)
        return found


def lookup(key: str) -> Entry | None:
    folder = cache_dir() / "qdq" / key
    record_path = folder / RECORD
    if record_path.is_file() and (folder / PREPARED).is_file() and (folder / RANGES).is_file():
        return Entry(folder, key, json.loads(record_path.read_text()))
    return None


def store(key: str, work: Path, record: dict[str, Any]) -> Entry:
    """Move the files made in `work` into the cache as one entry (a whole entry or none)."""
    folder = cache_dir() / "qdq" / key
    write_json_atomic(work / RECORD, record)
    ensure_dir(folder.parent)
    staging = make_sibling_dir(folder, "writing")
    try:
        for f in work.iterdir():
            shutil.move(str(f), staging / f.name)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise os_error(exc, folder, hint="The calibration cache needs a writable directory with free space: fix "
                                         "that, or point MODELPORT_CACHE at another directory.") from exc
    try:
        staging.rename(folder)
    except OSError:  # another process cached the same entry first; theirs is as good
        shutil.rmtree(staging, ignore_errors=True)
    if not (folder / RECORD).is_file():
        raise StepFailed(f"Could not write the calibration cache at {folder}.",
                         hint="Check that MODELPORT_CACHE is writable.")
    return Entry(folder, key, record)
