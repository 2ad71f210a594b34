"""The range cache: the prepared float model, ORT's ranges and what the analysis found, keyed by what they
depend on (model hash, calibration fingerprint, method, pre-processing, enabled algorithms and their options),
so that a second backend (OpenVINO, TensorRT) does not calibrate again. The ranges alone are kept too, keyed by
the prepared model's content: an entry whose algorithms left the model as another's did (CLE in auto mode reads
the weight settings, and often keeps no chain) takes that one's ranges instead of calibrating again."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelport.errors import ModelportError, StepFailed, os_error
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
RANGES_ONLY = "qdq-ranges"  # beside "qdq": ranges by prepared-model content


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


def ranges_key(prepared: Path, calibration: CalibrationSet, settings: QdqSettings, size: int | None) -> str:
    """What calibrated ranges depend on: the prepared model's content, the data, the method and the batching."""
    return cache_key({"prepared": model_hash(prepared), "calibration": calibration.fingerprint,
                      "method": settings.method,
                      "percentile": settings.percentile if settings.method == "percentile" else None,
                      "batch_size": size,  # histogram methods also probe sentinel ranges on the analysis samples
                      "analysis_samples": None if settings.method == "minmax" else settings.analysis_samples,
                      "version": CACHE_VERSION})


def lookup_ranges(key: str) -> tuple[Path, dict[str, Any]] | None:
    """Ranges calibrated before for the same prepared model, data and method, and what that pass measured."""
    folder = cache_dir() / RANGES_ONLY / key
    if (folder / RANGES).is_file() and (folder / RECORD).is_file():
        return folder / RANGES, json.loads((folder / RECORD).read_text())
    return None


def store_ranges(key: str, ranges: Path, measured: dict[str, Any]) -> None:
    """Keep calibrated ranges under `ranges_key`; best effort, as a miss only costs a later calibration."""
    folder = cache_dir() / RANGES_ONLY / key
    try:
        ensure_dir(folder.parent)
        staging = make_sibling_dir(folder, "writing")
    except (OSError, ModelportError):  # no writable cache: store() says so
        return
    try:
        shutil.copyfile(ranges, staging / RANGES)
        write_json_atomic(staging / RECORD, measured)
        staging.rename(folder)
    except OSError:  # a full disk, or another process stored the same ranges first
        shutil.rmtree(staging, ignore_errors=True)


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
