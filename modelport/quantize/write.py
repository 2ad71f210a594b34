"""The pass from float ONNX to QDQ ONNX, step by step: prepare, run the algorithms and calibrate (or take both
from the cache), decide what stays in float, quantize, guard fidelity, write atomically, and say what it did."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelport import progress
from modelport.errors import BadInput
from modelport.ort_session import quiet_ort_tools
from modelport.quantize import cache, given
from modelport.quantize.algorithms import apply_algorithms
from modelport.quantize.algorithms.bias_correction import float_bias_quantizer
from modelport.quantize.fallback import guard_fidelity
from modelport.quantize.files import atomic_copy
from modelport.quantize.graph import Graph, candidate_types, candidates, precision_counts
from modelport.quantize.ort_tools import static_quantizer
from modelport.quantize.prepare import prepare
from modelport.quantize.ranges import batch_size, calibrate
from modelport.quantize.rules import automatic_float, resolve_exclude
from modelport.quantize.settings import QdqSettings

if TYPE_CHECKING:
    from modelport.calibration.dataset import CalibrationSet


@dataclass
class QdqResult:
    """What the QDQ pass wrote and decided; backends copy it into their manifest details."""

    path: Path
    method: str
    samples_seen: int          # calibration samples that reached ORT's calibrator when the ranges were made
    samples_available: int
    seconds: float
    calibration_seconds: float  # of the pass that made the ranges (0 work now when from_cache)
    from_cache: bool
    quantized: dict[str, int]   # op type -> nodes running on quantized inputs
    float_ops: dict[str, int]   # op type -> nodes left in float
    kept_float: list[dict[str, str]]  # node, op_type, rule, reason (decisions, not whole op types)
    kept_summary: dict[str, int]      # rule -> nodes
    algorithms: dict[str, list[dict[str, Any]]]  # algorithm -> what it changed in the float model
    settings: dict[str, Any]
    fidelity: dict[str, Any] | None = None
    preprocess: str = "none"
    cache_key: str = ""
    notes: list[str] = field(default_factory=list)
    given_ranges: dict[str, Any] | None = None  # the ranges file used in place of calibrated ranges, and where

    @property
    def smoothed(self) -> list[dict[str, Any]]:
        """The tensors SmoothQuant smoothed (ONNX Runtime's manifest lists them as `smoothed`)."""
        return self.algorithms.get("smoothquant", [])

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        return data


def write_qdq_model(onnx_path: str | Path, calibration: CalibrationSet, out_path: str | Path,
                    settings: QdqSettings | None = None, **changes: Any) -> QdqResult:
    """Write a QDQ-quantized copy of a float ONNX model, calibrated on `calibration`; atomic at `out_path`.

    `settings` (default: QdqSettings()) says how; `changes` are QdqSettings field names applied on top, e.g.
    `method="entropy", exclude=["Softmax"]`. Unknown names and bad values are BadInput.
    """
    start = time.perf_counter()
    settings = (settings or QdqSettings()).replace(**changes)
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if not onnx_path.is_file():
        raise BadInput(f"The ONNX model {str(onnx_path)!r} does not exist.")
    _check_given(onnx_path, settings)
    with tempfile.TemporaryDirectory(prefix="modelport-qdq-") as tmp_name, quiet_ort_tools():
        tmp = Path(tmp_name)
        entry, from_cache = _calibrated(onnx_path, calibration, settings, tmp)
        record = entry.record
        runs = entry.algorithm_runs()
        graph = Graph.load(entry.model_path)
        nodes = candidates(graph, settings.op_types)
        notes: list[str] = []
        kept = {n: ("user", r) for n, r in resolve_exclude(settings.exclude, graph.model, onnx_path, notes).items()}
        needs_sqnr = settings.auto_exclude or bool(settings.fidelity_target)
        sqnr = entry.sqnr(calibration, settings, graph) if needs_sqnr else {}
        by_algorithms = {n: why for run in runs.values() for n, why in run.keep_float.items()}
        for name, reason in automatic_float(graph, by_algorithms, entry.ranges(), sqnr, nodes, settings,
                                            kept).items():
            kept.setdefault(name, reason)
        quantize = float_bias_quantizer(entry.model_path, runs,
                                        lambda model, out: static_quantizer(model, entry.ranges_path, settings, out),
                                        tmp)
        with progress.stage("quantize"):
            q_path = quantize(kept)
        fidelity = None
        if settings.fidelity_target:
            # against the user's float model: bias correction and AdaRound change the prepared one on purpose
            with progress.stage("fidelity guard"):
                q_path, fidelity = guard_fidelity(onnx_path, q_path, calibration, settings, graph, sqnr, nodes,
                                                  kept, quantize)
        atomic_copy(q_path, out_path)
        quantized, float_ops = precision_counts(out_path)
    kept_list = [{"node": n, "op_type": graph.nodes[n].op_type, "rule": rule, "reason": reason}
                 for n, (rule, reason) in kept.items() if n in graph.nodes]
    if record["samples_seen"] < len(calibration):
        notes.append(f"{len(calibration) - record['samples_seen']} calibration samples did not fill a whole batch "
                     "of the model's static batch size and were not used.")
    return QdqResult(
        path=out_path, method=settings.method, samples_seen=record["samples_seen"],
        samples_available=len(calibration), seconds=round(time.perf_counter() - start, 3),
        calibration_seconds=record["calibration_seconds"], from_cache=from_cache, quantized=quantized,
        float_ops=float_ops, kept_float=kept_list,
        kept_summary=dict(Counter(k["rule"] for k in kept_list).most_common()),
        algorithms={name: run.changes for name, run in runs.items()},
        # op_types as quantized: the declared default () means ORT's full set, so record the types found
        settings={**settings.record(), "op_types": sorted(candidate_types(graph, nodes))},
        fidelity=fidelity, preprocess=record["preprocess"], cache_key=entry.key, notes=notes,
        given_ranges=record.get("given_ranges"))


def _check_given(onnx_path: Path, settings: QdqSettings) -> None:
    """A ranges file naming tensors the model does not have is a mistake (another model's, another export)."""
    import onnx

    if settings.ranges_file is None:
        return
    unknown = given.unknown_tensors(settings.ranges_file, onnx.load(str(onnx_path), load_external_data=False))
    if unknown:
        raise BadInput(f"The ranges file {settings.ranges_file.path} names tensor(s) {', '.join(unknown)}, which the "
                       f"ONNX model {onnx_path.name} does not have.",
                       hint="Give the ranges file written for this model (modelport compress --qat writes "
                            "OUT.pt2.ranges.json beside OUT.pt2), and build OUT.pt2 with the default --opset.")


def _calibrated(onnx_path: Path, calibration: CalibrationSet, settings: QdqSettings, tmp: Path
                ) -> tuple[cache.Entry, bool]:
    """The cache entry for this model, data and method; prepared, rewritten and calibrated now unless cached."""
    parts = cache.key_parts(onnx_path, calibration, settings)
    key = cache.cache_key(parts)
    entry = cache.lookup(key)
    if entry is not None:
        return entry, True
    work = tmp / "entry"
    work.mkdir()
    prepared = work / cache.PREPARED
    with progress.stage("prepare"):
        how = prepare(onnx_path, prepared, settings.preprocess)
        runs = apply_algorithms(prepared, calibration, settings)
    ranges_key = cache.ranges_key(prepared, calibration, settings, batch_size(calibration, settings.batch_size))
    found = cache.lookup_ranges(ranges_key)
    if found is not None:  # the algorithms left the model as an earlier entry's: its ranges hold
        shutil.copyfile(found[0], work / cache.RANGES)
        measured = found[1]
    else:
        with progress.stage("calibrate"):
            measured = asdict(calibrate(prepared, calibration, settings, work / cache.RANGES, tmp))
        cache.store_ranges(ranges_key, work / cache.RANGES, measured)
    given_ranges = (given.apply(work / cache.RANGES, settings.ranges_file, Graph.load(prepared))
                    if settings.ranges_file else None)
    record = {"key": key, "parts": parts, "samples_seen": measured["samples"], "batches": measured["batches"],
              "batch_size": measured["batch_size"] or "static", "calibration_seconds": measured["seconds"],
              "preprocess": how, "algorithms": {name: run.to_json() for name, run in runs.items()}, "sqnr": {},
              "given_ranges": given_ranges, "ranges_key": ranges_key}
    return cache.store(key, work, record), found is not None
