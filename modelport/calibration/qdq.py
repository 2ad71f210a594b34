"""The shared QDQ pass: one calibration, explicit QuantizeLinear/DequantizeLinear pairs any backend can consume.

ONNX Runtime's quantization tools do the calibrating (MinMax, Entropy, Percentile) and insert the QDQ
pairs. What this module adds is what keeps static INT8 from collapsing on real models:

- pre-processing (shape inference, basic graph optimization) before anything is measured;
- smoothing of outlier channels (SmoothQuant) in front of MatMul/Gemm: a few activation channels far
  larger than the rest would otherwise set the whole tensor's 8-bit step;
- keeping in float the tensors that wreck ranges: mask adds and softmax inputs (a -1e4..-3e38 mask
  constant and the attention logits cannot share 256 levels), normalization, sentinel-sized ranges,
  and inputs whose quantization noise is far above their neighbours';
- a fidelity check on calibration samples that keeps more in float while the result is still poor;
- a cache of the ranges keyed by (model hash, calibration fingerprint, method and its options), so a
  second backend (OpenVINO, TensorRT) does not calibrate again.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelport.errors import BadInput, StepFailed, os_error
from modelport.machine import cache_dir
from modelport.staging import ensure_dir, make_sibling_dir

if TYPE_CHECKING:
    import onnx

    from modelport.calibration.dataset import CalibrationSet

METHODS = ("minmax", "entropy", "percentile")
COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})
NORMALIZATION_OPS = frozenset({"LayerNormalization", "InstanceNormalization", "GroupNormalization",
                               "BatchNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization",
                               "RMSNormalization"})
MASK_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Where"})
EXTREME_ABS = 1e4          # no trained activation reaches this; -1e4, -1e9 and float-min masks do
SQNR_FLOOR_DB = 20.0       # below this an 8-bit tensor keeps under ~3 bits of its signal
SQNR_DROP_DB = 12.0        # ... or when it is this far below the model's median (a 4x wider range)
SMOOTH_SPREAD = 4.0        # largest channel over the median channel that triggers smoothing
ANALYSIS_SAMPLES = 64
CHUNK_SAMPLES = 32         # samples whose reduced min/max the MinMax calibrator holds at once
HISTOGRAM_CHUNK_SAMPLES = 4  # histogram calibrators hold every float tensor of a sample: ~0.4 GB for BERT-base
BACKOFF_ROUNDS = 3
BACKOFF_PAYBACK = 2.0      # a round must close this many times the share of compute ops it moves to float
CACHE_VERSION = 1

Why = tuple[str, str]  # (rule, reason) for a node kept in float

_DEFAULTS: dict[str, Any] = {
    "activation_type": None, "weight_type": "int8", "reduce_range": False, "op_types": None,
    "float_outputs": (), "percentile": 99.999, "smooth": 0.75, "auto_exclude": True, "fidelity_target": 0.99,
    "preprocess": True, "analysis_samples": ANALYSIS_SAMPLES, "batch_size": None, "extra_options": None,
    "weights_only": False,
}


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
    smoothed: list[dict[str, Any]]
    settings: dict[str, Any]
    fidelity: dict[str, Any] | None = None
    preprocess: str = "none"
    cache_key: str = ""
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        return data


@dataclass(frozen=True)
class _Options:
    method: str
    per_channel: bool
    symmetric: bool
    activation_type: str
    weight_type: str
    reduce_range: bool
    op_types: tuple[str, ...] | None
    float_outputs: tuple[str, ...]
    percentile: float
    smooth: float | None
    auto_exclude: bool
    fidelity_target: float | None
    preprocess: bool
    analysis_samples: int
    batch_size: int | None
    extra_options: Mapping[str, Any] | None
    weights_only: bool

    @classmethod
    def parse(cls, method: str, per_channel: bool, symmetric: bool, more: Mapping[str, Any]) -> _Options:
        unknown = sorted(set(more) - set(_DEFAULTS))
        if unknown:
            raise BadInput(f"write_qdq_model does not know option(s) {', '.join(unknown)}.",
                           hint=f"Known: method, per_channel, symmetric_activations, exclude, {', '.join(_DEFAULTS)}.")
        if method not in METHODS:
            raise BadInput(f"Unknown calibration method {method!r}.", hint=f"Use one of {', '.join(METHODS)}.")
        values = {**_DEFAULTS, **more}
        act = values["activation_type"] or ("int8" if symmetric else "uint8")
        for key, value in (("activation_type", act), ("weight_type", values["weight_type"])):
            if value not in ("int8", "uint8"):
                raise BadInput(f"{key} must be int8 or uint8, not {value!r}.")
        smooth = values["smooth"]
        if smooth is not None and not 0 <= float(smooth) <= 1:
            raise BadInput(f"smooth (the SmoothQuant alpha) must be between 0 and 1, not {smooth!r}.")
        op_types = values["op_types"]
        return cls(method, bool(per_channel), bool(symmetric), act, values["weight_type"], bool(values["reduce_range"]),
                   tuple(op_types) if op_types is not None else None, tuple(values["float_outputs"]),
                   float(values["percentile"]), float(smooth) if smooth else None, bool(values["auto_exclude"]),
                   values["fidelity_target"], bool(values["preprocess"]), int(values["analysis_samples"]),
                   values["batch_size"], values["extra_options"], bool(values["weights_only"]))

    def range_key(self) -> dict[str, Any]:
        """What the cached ranges depend on besides the model and the data: the method and its options."""
        return {"method": self.method, "percentile": self.percentile if self.method == "percentile" else None,
                "smooth": self.smooth, "smooth_spread": SMOOTH_SPREAD, "preprocess": self.preprocess,
                "version": CACHE_VERSION}


def write_qdq_model(onnx_path: str | Path, calibration: CalibrationSet, out_path: str | Path, *,
                    method: str = "minmax", per_channel: bool = True, symmetric_activations: bool = False,
                    exclude: Sequence[str] = (), **more: Any) -> QdqResult:
    """Write a QDQ-quantized copy of a float ONNX model, calibrated on `calibration`; atomic at `out_path`.

    `exclude` takes node names or op types to keep in float. Further options (`more`): activation_type
    and weight_type (int8/uint8), reduce_range, op_types (to quantize; default ORT's full set),
    float_outputs (op types whose outputs stay float), percentile, smooth (SmoothQuant alpha, None to
    disable), auto_exclude, fidelity_target (cosine on calibration samples; None to skip the check),
    preprocess, analysis_samples, batch_size, extra_options (passed to ORT's quantizer), weights_only
    (quantize Conv/MatMul/Gemm only where one operand is a constant weight).
    """
    start = time.perf_counter()
    opts = _Options.parse(method, per_channel, symmetric_activations, more)
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if not onnx_path.is_file():
        raise BadInput(f"The ONNX model {str(onnx_path)!r} does not exist.")
    with tempfile.TemporaryDirectory(prefix="modelport-qdq-") as tmp_name, quiet_ort_tools():
        tmp = Path(tmp_name)
        entry, from_cache = _calibrated(onnx_path, calibration, opts, tmp)
        record = entry.record
        graph = _Graph.load(entry.model_path)
        candidates = _candidates(graph, opts.op_types)
        notes: list[str] = []
        kept = {n: ("user", r) for n, r in resolve_exclude(exclude, graph.model, onnx_path, notes).items()}
        needs_sqnr = opts.auto_exclude or opts.fidelity_target is not None
        sqnr = entry.sqnr(calibration, opts, graph) if needs_sqnr else {}
        for name, reason in _automatic_float(graph, record, entry.ranges(), sqnr, candidates, opts, kept).items():
            kept.setdefault(name, reason)
        quantize = _quantizer(entry, opts, tmp)
        q_path = quantize(kept)
        fidelity = None
        if opts.fidelity_target is not None:
            q_path, fidelity = _guard_fidelity(entry.model_path, q_path, calibration, opts, graph, sqnr, candidates,
                                               kept, quantize)
        _atomic_copy(q_path, out_path)
        quantized, float_ops = _precision_counts(out_path)
    kept_list = [{"node": n, "op_type": graph.nodes[n].op_type, "rule": rule, "reason": reason}
                 for n, (rule, reason) in kept.items() if n in graph.nodes]
    if record["samples_seen"] < len(calibration):
        notes.append(f"{len(calibration) - record['samples_seen']} calibration samples did not fill a whole batch "
                     "of the model's static batch size and were not used.")
    return QdqResult(
        path=out_path, method=opts.method, samples_seen=record["samples_seen"], samples_available=len(calibration),
        seconds=round(time.perf_counter() - start, 3), calibration_seconds=record["calibration_seconds"],
        from_cache=from_cache, quantized=quantized, float_ops=float_ops, kept_float=kept_list,
        kept_summary=dict(Counter(k["rule"] for k in kept_list).most_common()),
        smoothed=record["smoothed"],
        settings={"activation_type": opts.activation_type, "weight_type": opts.weight_type,
                  "per_channel": opts.per_channel, "symmetric_activations": opts.symmetric,
                  "reduce_range": opts.reduce_range, "op_types": sorted(_candidate_types(graph, candidates)),
                  "float_outputs": list(opts.float_outputs), "smooth_alpha": opts.smooth,
                  "percentile": opts.percentile if opts.method == "percentile" else None},
        fidelity=fidelity, preprocess=record["preprocess"], cache_key=entry.key, notes=notes)


def _candidate_types(graph: _Graph, candidates: set[str]) -> set[str]:
    return {graph.nodes[n].op_type for n in candidates}


# ---------------------------------------------------------------- the graph


class _Graph:
    """Nodes by name, producers, consumers, initializers and the float tensors of one ONNX graph."""

    def __init__(self, model: onnx.ModelProto) -> None:
        from onnx import TensorProto

        self.model = model
        g = model.graph
        self.inits = {i.name: i for i in g.initializer}
        self.nodes = {n.name: n for n in g.node}
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers: dict[str, list] = defaultdict(list)
        for n in g.node:
            for i in n.input:
                self.consumers[i].append(n)
        floats = (TensorProto.FLOAT, TensorProto.FLOAT16)
        infos = list(g.value_info) + list(g.input) + list(g.output)
        self.float_tensors = {v.name for v in infos if v.type.tensor_type.elem_type in floats} - set(self.inits)
        self.value_infos = {v.name: v for v in infos}

    @classmethod
    def load(cls, path: Path) -> _Graph:
        import onnx

        return cls(onnx.load(str(path)))

    def activations(self, node) -> list[str]:
        """The node's float inputs and outputs that are computed at run time (not weights)."""
        return [t for t in [*node.input, *node.output] if t in self.float_tensors]


def _name_nodes(model: onnx.ModelProto) -> None:
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)


def _candidates(graph: _Graph, op_types: Sequence[str] | None) -> set[str]:
    """Nodes ORT's quantizer would quantize: the given op types, else its own full set."""
    if op_types is None:
        from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

        op_types = set(QDQRegistry) | set(QLinearOpsRegistry)
    return {name for name, node in graph.nodes.items() if node.op_type in set(op_types)}


def resolve_exclude(exclude: Sequence[str], model: onnx.ModelProto, original: Path, notes: list[str]
                    ) -> dict[str, str]:
    """Node names or op types to keep in float -> {node name: reason}; names unknown to both graphs are errors."""
    import onnx

    if not exclude:
        return {}
    graph = _Graph(model)
    types = {n.op_type for n in graph.nodes.values()}
    original_nodes = {n.name for n in onnx.load(str(original), load_external_data=False).graph.node}
    kept, unknown = {}, []
    for item in exclude:
        if item in graph.nodes:
            kept[item] = "excluded by the user"
        elif item in types:
            kept.update({n: f"op type {item} excluded by the user" for n, node in graph.nodes.items()
                         if node.op_type == item})
        elif item in original_nodes:
            notes.append(f"Excluded node {item!r} was fused away by pre-processing; nothing to keep in float.")
        else:
            unknown.append(item)
    if unknown:
        sample = ", ".join(sorted(graph.nodes)[:8])
        raise BadInput(f"exclude names {', '.join(map(repr, unknown))}, which are neither nodes nor op types of the "
                       "model.", hint=f"Op types here: {', '.join(sorted(types))}. Node names look like: {sample}, ...")
    return kept


# ---------------------------------------------------------------- calibration data


def _batch_size(calibration: CalibrationSet, wanted: int | None) -> int | None:
    """The model's static batch, else `wanted`, else 8 (1 where another axis is dynamic: samples differ)."""
    if any(isinstance(s.shape[0], int) for s in calibration.specs if s.shape):
        return None
    if wanted:
        return int(wanted)
    if any(isinstance(d, str) for s in calibration.specs for d in s.shape[1:]):
        return 1
    return 8


def _batches(calibration: CalibrationSet, batch_size: int | None, limit: int | None = None
             ) -> Iterator[dict[str, np.ndarray]]:
    seen = 0
    for batch in calibration.batches(batch_size):
        if limit is not None and seen >= limit:
            return
        yield batch
        seen += len(next(iter(batch.values())))


class _Reader:
    """An ORT CalibrationDataReader over `calibration.batches()`, counting every sample it hands over.

    It pauses (returns None) every `chunk` batches, and wherever the batch shape changes, so that the
    calibrator folds what it holds into its ranges or histograms before reading on: memory stays bounded
    however many samples there are, and ORT's histogram collector only ever stacks equal shapes.
    """

    def __init__(self, batches: Iterator[dict[str, np.ndarray]], input_names: Sequence[str], chunk: int) -> None:
        self._batches = batches
        self._names = list(input_names)
        self._chunk = chunk
        self._pending: dict[str, np.ndarray] | None = None
        self._given = 0
        self._shape: tuple | None = None
        self.samples = 0
        self.batches = 0

    def has_more(self) -> bool:
        if self._pending is None:
            self._pending = next(self._batches, None)
        return self._pending is not None

    def get_next(self) -> dict[str, np.ndarray] | None:
        if not self.has_more():
            return None
        assert self._pending is not None
        shape = tuple(np.shape(self._pending[n]) for n in self._names)
        if self._given >= self._chunk or (self._given and shape != self._shape):
            self._given = 0
            return None
        batch, self._pending, self._shape = self._pending, None, shape
        self._given += 1
        self.batches += 1
        self.samples += len(next(iter(batch.values())))
        return {n: batch[n] for n in self._names}

    def rewind(self) -> None:  # the ORT interface; a stream is read once
        raise StepFailed("The calibration stream cannot be rewound.")


def _as_ort_reader(reader: _Reader):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def get_next(self):
            return reader.get_next()

    return Reader()


# ---------------------------------------------------------------- preparation and the cache


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


@dataclass
class _Entry:
    """One cache entry: the prepared float model, ORT's ranges, and what the analysis found."""

    folder: Path
    key: str
    record: dict[str, Any]

    @property
    def model_path(self) -> Path:
        return self.folder / "prepared.onnx"

    @property
    def ranges_path(self) -> Path:
        return self.folder / "ranges.json"

    def ranges(self):
        from onnxruntime.quantization.calibrate import load_tensors_data

        return load_tensors_data(self.ranges_path)

    def sqnr(self, calibration: CalibrationSet, opts: _Options, graph: _Graph) -> dict[str, float]:
        """Signal-to-quantization-noise (dB) of every compute-op input under the cached ranges (cached too)."""
        variant = f"{opts.activation_type}-{'sym' if opts.symmetric else 'asym'}-{opts.analysis_samples}"
        found = self.record.setdefault("sqnr", {}).get(variant)
        if found is None:
            found = _measure_sqnr(self.model_path, calibration, opts, graph, self.ranges())
            self.record["sqnr"][variant] = found
            _write_json_atomic(self.folder / "record.json", self.record)
        return found


def _calibrated(onnx_path: Path, calibration: CalibrationSet, opts: _Options, tmp: Path) -> tuple[_Entry, bool]:
    """The cache entry for this model, data and method; calibrated now unless it is already on disk."""
    parts = {"model": model_hash(onnx_path), "calibration": calibration.fingerprint, **opts.range_key()}
    key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]
    folder = cache_dir() / "qdq" / key
    record_path = folder / "record.json"
    if record_path.is_file() and (folder / "prepared.onnx").is_file() and (folder / "ranges.json").is_file():
        return _Entry(folder, key, json.loads(record_path.read_text())), True
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import TensorData, create_calibrator, save_tensors_data

    work = tmp / "entry"
    work.mkdir()
    prepared = work / "prepared.onnx"
    how = _prepare(onnx_path, prepared, opts.preprocess)
    smoothed = _smooth(prepared, calibration, opts) if opts.smooth else []
    batch_size = _batch_size(calibration, opts.batch_size)
    chunk = max(1, (CHUNK_SAMPLES if opts.method == "minmax" else HISTOGRAM_CHUNK_SAMPLES) // (batch_size or 1))
    import onnx

    input_names = [i.name for i in onnx.load(str(prepared), load_external_data=False).graph.input]
    reader = _Reader(_batches(calibration, batch_size), input_names, chunk)
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[opts.method]
    extra: dict[str, Any] = {"symmetric": False}
    if opts.method == "percentile":
        extra["percentile"] = opts.percentile
    start = time.perf_counter()
    try:
        # histograms cannot bin a float-min mask: find such tensors on a few samples, give them min/max ranges
        extreme = {} if opts.method == "minmax" else _extreme_ranges(prepared, calibration, opts, input_names, tmp)
        calibrator = create_calibrator(prepared, None, augmented_model_path=str(tmp / "augmented.onnx"),
                                       calibrate_method=method, extra_options=extra)
        if extreme:
            calibrator.tensors_to_calibrate = set(calibrator.tensors_to_calibrate) - set(extreme)
        ort_reader = _as_ort_reader(reader)
        while reader.has_more():
            calibrator.collect_data(ort_reader)
        ranges = calibrator.compute_data()
        for name, (lo, hi) in extreme.items():
            ranges.data[name] = TensorData(lowest=np.array(lo, np.float32), highest=np.array(hi, np.float32))
    except BadInput:
        raise
    except Exception as exc:
        raise StepFailed(f"ONNX Runtime's {opts.method} calibration failed after {reader.samples} samples: "
                         f"{type(exc).__name__}: {exc}") from exc
    if reader.samples == 0:
        raise BadInput("No calibration sample reached the calibrator.",
                       hint="The calibration set has fewer samples than the model's static batch size.")
    save_tensors_data(ranges, work / "ranges.json")
    record = {"key": key, "parts": parts, "samples_seen": reader.samples, "batches": reader.batches,
              "batch_size": batch_size or "static", "calibration_seconds": round(time.perf_counter() - start, 3),
              "preprocess": how, "smoothed": smoothed, "sqnr": {}}
    _write_json_atomic(work / "record.json", record)
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
    if not (folder / "record.json").is_file():
        raise StepFailed(f"Could not write the calibration cache at {folder}.",
                         hint="Check that MODELPORT_CACHE is writable.")
    return _Entry(folder, key, record), False


def _extreme_ranges(prepared: Path, calibration: CalibrationSet, opts: _Options, input_names: Sequence[str],
                    tmp: Path) -> dict[str, tuple[float, float]]:
    """MinMax ranges, on the analysis samples, of the tensors whose values are non-finite or sentinel-sized."""
    from onnxruntime.quantization.calibrate import create_calibrator

    batch_size = _batch_size(calibration, opts.batch_size)
    reader = _Reader(_batches(calibration, batch_size, opts.analysis_samples), input_names, CHUNK_SAMPLES)
    calibrator = create_calibrator(prepared, None, augmented_model_path=str(tmp / "minmax-probe.onnx"))
    ort_reader = _as_ort_reader(reader)
    while reader.has_more():
        calibrator.collect_data(ort_reader)
    found = {}
    for name, data in calibrator.compute_data().data.items():
        lo, hi = (float(np.asarray(v).ravel()[0]) for v in data.range_value)
        if not (math.isfinite(lo) and math.isfinite(hi)) or max(abs(lo), abs(hi)) >= EXTREME_ABS:
            found[name] = (lo, hi)
    return found


def _prepare(src: Path, dst: Path, preprocess: bool) -> str:
    """Shape inference and ORT's basic optimization (quant_pre_process); fall back step by step."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    attempts: list[tuple[str, dict[str, bool]]] = [
        ("symbolic shape inference + optimization + ONNX shape inference", {}),
        ("optimization + ONNX shape inference", {"skip_symbolic_shape": True}),
    ] if preprocess else []
    for label, flags in attempts:
        try:
            quant_pre_process(str(src), str(dst), **flags)
            how = label
            break
        except Exception as exc:  # symbolic shape inference does not know every op; try the next level down
            logging.getLogger(__name__).debug("pre-processing (%s) failed: %s", label, exc)
    else:
        model = onnx.shape_inference.infer_shapes(onnx.load(str(src)))
        onnx.save(model, str(dst))
        how = "ONNX shape inference"
    model = onnx.load(str(dst))
    _name_nodes(model)
    onnx.save(model, str(dst))
    return how


# ---------------------------------------------------------------- statistics passes


def _run_collecting(model_path: Path, tensors: Sequence[str], calibration: CalibrationSet, opts: _Options,
                    on_batch: Callable[[dict[str, np.ndarray]], None], tmp_dir: Path) -> int:
    """Run the model with `tensors` exposed as outputs over the first samples; `on_batch` sees each result."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(model_path))
    outputs = {o.name for o in model.graph.output}
    infos = {v.name: v for v in model.graph.value_info}
    for t in tensors:
        if t not in outputs and t in infos:
            model.graph.output.append(infos[t])
    path = tmp_dir / "exposed.onnx"
    onnx.save(model, str(path))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    inputs = [i.name for i in session.get_inputs()]
    seen = 0
    for batch in _batches(calibration, _batch_size(calibration, opts.batch_size), opts.analysis_samples):
        feed = {n: batch[n] for n in inputs}
        on_batch({**feed, **dict(zip(names, session.run(None, feed), strict=True))})
        seen += len(next(iter(batch.values())))
    return seen


def _smooth(prepared: Path, calibration: CalibrationSet, opts: _Options) -> list[dict[str, Any]]:
    """SmoothQuant: divide outlier input channels of MatMul/Gemm by s and multiply the weights' rows by s.

    The float model computes the same function; the activation's channels become comparable, so one
    8-bit range fits them, and the weights (quantized per channel) absorb the difference.
    """
    import onnx
    from onnx import helper, numpy_helper

    graph = _Graph.load(prepared)
    groups: dict[str, list[tuple[Any, bool]]] = defaultdict(list)
    for node in graph.model.graph.node:
        if node.op_type not in ("MatMul", "Gemm") or node.input[0] not in graph.float_tensors:
            continue
        w = graph.inits.get(node.input[1])
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if w is None or len(w.dims) != 2 or attrs.get("transA", 0):
            continue
        groups[node.input[0]].append((node, bool(attrs.get("transB", 0))))
    if not groups:
        return []
    channel_max: dict[str, np.ndarray] = {}

    def collect(result: dict[str, np.ndarray]) -> None:
        for t in groups:
            a = np.abs(result[t].reshape(-1, result[t].shape[-1])).max(axis=0)
            channel_max[t] = a if t not in channel_max else np.maximum(channel_max[t], a)

    with tempfile.TemporaryDirectory(prefix="modelport-smooth-") as tmp:
        _run_collecting(prepared, list(groups), calibration, opts, collect, Path(tmp))
    alpha = float(opts.smooth or 0.5)
    done = []
    model = graph.model
    weight_uses = Counter(i for n in model.graph.node for i in n.input if i in graph.inits)
    for tensor, members in groups.items():
        amax = channel_max.get(tensor)
        if amax is None or not np.all(np.isfinite(amax)) or amax.max() <= 0:
            continue
        spread = float(amax.max() / max(np.median(amax), 1e-12))
        if spread < SMOOTH_SPREAD:
            continue
        weights = [numpy_helper.to_array(graph.inits[n.input[1]]) for n, _ in members]
        if any((w.T if tb else w).shape[0] != amax.shape[0] for w, (_, tb) in zip(weights, members, strict=True)):
            continue
        wmax = np.max([np.abs(w.T if tb else w).max(axis=1) for w, (_, tb) in zip(weights, members, strict=True)],
                      axis=0)
        s = np.where(amax > 0, amax ** alpha / np.maximum(wmax, 1e-8) ** (1 - alpha), 1.0)
        s = np.clip(s, 1e-5, 1e5).astype(np.float32)
        for (node, trans_b), w in zip(members, weights, strict=True):
            scaled = (w * s[None, :]) if trans_b else (w * s[:, None])
            name = node.input[1] if weight_uses[node.input[1]] == 1 else f"{node.input[1]}_smoothed_{node.name}"
            new = numpy_helper.from_array(scaled.astype(w.dtype), name)
            if name in graph.inits:
                graph.inits[name].CopyFrom(new)
            else:
                model.graph.initializer.append(new)
                node.input[1] = name
        folded = _fold_into_norm(graph, tensor, [n for n, _ in members], s)
        if not folded:
            inv = f"{tensor}_smooth_inv"
            model.graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), inv))
            out = f"{tensor}_smoothed"
            first = min(i for i, n in enumerate(model.graph.node) if tensor in n.input)
            model.graph.node.insert(first, helper.make_node("Mul", [tensor, inv], [out], name=f"{tensor}_smooth"))
            for node, _ in members:
                node.input[0] = out
            info = graph.value_infos.get(tensor)
            if info is not None:
                copy = model.graph.value_info.add()
                copy.CopyFrom(info)
                copy.name = out
        done.append({"tensor": tensor, "consumers": [n.name for n, _ in members], "spread": round(spread, 1),
                     "folded_into": folded})
    if done:
        onnx.save(model, str(prepared))
    return done


def _fold_into_norm(graph: _Graph, tensor: str, members: list, s: np.ndarray) -> str | None:
    """Fold 1/s into the LayerNormalization that produces `tensor` when only the smoothed nodes read it."""
    from onnx import numpy_helper

    producer = graph.producer.get(tensor)
    readers = {n.name for n in graph.consumers[tensor]}
    if (producer is None or producer.op_type != "LayerNormalization" or readers != {n.name for n in members}
            or len(producer.input) < 2 or any(i not in graph.inits for i in producer.input[1:])):
        return None
    for name in producer.input[1:]:
        if sum(name in n.input for n in graph.model.graph.node) != 1:
            return None
        value = numpy_helper.to_array(graph.inits[name])
        graph.inits[name].CopyFrom(numpy_helper.from_array((value / s).astype(value.dtype), name))
    return producer.name


def _quant_params(lo: float, hi: float, act: str, symmetric: bool) -> tuple[float, float, float, float]:
    """ORT's scale, zero point and integer limits for an activation range."""
    qmin, qmax = (-128.0, 127.0) if act == "int8" else (0.0, 255.0)
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if symmetric:
        a = max(abs(lo), abs(hi))
        lo, hi = -a, a
    scale = (hi - lo) / (qmax - qmin) if hi > lo else 1.0
    zero = 0.0 if symmetric and act == "int8" else round(qmin - lo / scale)
    if symmetric and act == "uint8":
        zero = 128.0
    return scale, zero, qmin, qmax


def _measure_sqnr(model_path: Path, calibration: CalibrationSet, opts: _Options, graph: _Graph, ranges
                  ) -> dict[str, float]:
    tensors = sorted({t for n in graph.nodes.values() if n.op_type in COMPUTE_OPS for t in n.input
                      if t in graph.float_tensors and t in ranges.data})
    params = {}
    for t in tensors:
        lo, hi = (float(np.asarray(v).ravel()[0]) for v in ranges.data[t].range_value)
        params[t] = _quant_params(lo, hi, opts.activation_type, opts.symmetric) if math.isfinite(hi - lo) else None
    signal: dict[str, float] = defaultdict(float)
    noise: dict[str, float] = defaultdict(float)

    def collect(result: dict[str, np.ndarray]) -> None:
        for t in tensors:
            if params[t] is None:
                continue
            scale, zero, qmin, qmax = params[t]
            x = result[t].astype(np.float64)
            xq = (np.clip(np.round(x / scale) + zero, qmin, qmax) - zero) * scale
            signal[t] += float(np.square(x).sum())
            noise[t] += float(np.square(x - xq).sum())

    with tempfile.TemporaryDirectory(prefix="modelport-sqnr-") as tmp:
        _run_collecting(model_path, tensors, calibration, opts, collect, Path(tmp))
    out = {}
    for t in tensors:
        if params[t] is None:
            out[t] = -math.inf
        elif noise[t] == 0:
            out[t] = math.inf
        else:
            out[t] = round(10 * math.log10(max(signal[t], 1e-300) / noise[t]), 2)
    return out


# ---------------------------------------------------------------- what stays in float


def _automatic_float(graph: _Graph, record: Mapping[str, Any], ranges, sqnr: Mapping[str, float],
                     candidates: set[str], opts: _Options, kept: Mapping[str, Why]) -> dict[str, Why]:
    """Nodes kept in float by design (smoothing scales, run-time x run-time products) and by measurement."""
    found: dict[str, Why] = {}
    for item in record["smoothed"]:
        if item["folded_into"] is None:  # an 8-bit copy of the per-channel scales would undo the smoothing
            found[f"{item['tensor']}_smooth"] = ("smoothing-scale",
                                                 "SmoothQuant channel scaling: it stays float by design")
    if opts.weights_only:
        for name in sorted(candidates):
            node = graph.nodes[name]
            if node.op_type in COMPUTE_OPS and not any(i in graph.inits for i in node.input):
                found[name] = ("runtime-operands", "both operands computed at run time (attention scores or "
                               "context): quantizing them adds two QuantizeLinear passes and error for a small product")
    if opts.auto_exclude:
        found.update({n: r for n, r in _range_wreckers(graph, ranges, candidates).items() if n not in found})
        rest = candidates - set(kept) - set(found)
        found.update(_low_sqnr(graph, sqnr, rest))
    return found


def _range_of(ranges, tensor: str) -> tuple[float, float] | None:
    data = ranges.data.get(tensor)
    if data is None:
        return None
    lo, hi = (float(np.asarray(v).ravel()[0]) for v in data.range_value)
    return lo, hi


def _range_wreckers(graph: _Graph, ranges, candidates: set[str]) -> dict[str, Why]:
    """Mask adds, softmax inputs, normalization and sentinel-sized ranges: kept in float, with the reason."""
    kept: dict[str, Why] = {}
    for name in sorted(candidates):
        node = graph.nodes[name]
        if node.op_type in NORMALIZATION_OPS:
            kept[name] = ("normalization", "its input is the residual stream, whose few outlier channels set "
                          "the range; no int8 kernel gains from it")
            continue
        if node.op_type == "Softmax":
            kept[name] = ("softmax", "its input holds the attention logits plus the mask")
            continue
        if node.op_type in MASK_OPS and any(c.op_type == "Softmax" for o in node.output for c in graph.consumers[o]):
            kept[name] = ("mask-add", f"{node.op_type} feeding a softmax (logits + mask): one 8-bit range cannot "
                                      "hold both")
            continue
        for t in graph.activations(node):
            r = _range_of(ranges, t)
            if r is not None and not (math.isfinite(r[0]) and math.isfinite(r[1])
                                      and max(abs(r[0]), abs(r[1])) < EXTREME_ABS):
                kept[name] = ("extreme-range", f"tensor {t} spans [{r[0]:.3g}, {r[1]:.3g}], a mask or sentinel "
                              "constant: its 8-bit step would erase every ordinary value beside it")
                break
    return kept


def _low_sqnr(graph: _Graph, sqnr: Mapping[str, float], candidates: set[str]) -> dict[str, Why]:
    """Compute ops whose input range is far wider than its typical values (measured, not guessed)."""
    measured = {n: min(sqnr[t] for t in graph.nodes[n].input if t in sqnr)
                for n in candidates if graph.nodes[n].op_type in COMPUTE_OPS
                and any(t in sqnr for t in graph.nodes[n].input)}
    finite = [v for v in measured.values() if math.isfinite(v)]
    if not finite:
        return {}
    median = float(np.median(finite))
    limit = max(SQNR_FLOOR_DB, median - SQNR_DROP_DB)
    return {n: ("low-sqnr", f"input range far wider than its typical values: {v:.1f} dB "
                            f"signal-to-quantization-noise, model median {median:.1f} dB")
            for n, v in sorted(measured.items()) if v < limit}


# ---------------------------------------------------------------- quantizing and checking


def _quantizer(entry: _Entry, opts: _Options, tmp: Path) -> Callable[[Mapping[str, Why]], Path]:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[opts.method]
    extra = {"ActivationSymmetric": opts.symmetric, "WeightSymmetric": True, **(opts.extra_options or {})}
    if opts.float_outputs:
        extra["OpTypesToExcludeOutputQuantization"] = list(opts.float_outputs)
    counter = iter(range(1_000_000))

    def quantize(kept: Mapping[str, Why]) -> Path:
        out = tmp / f"quantized-{next(counter)}.onnx"
        try:
            quantize_static(str(entry.model_path), str(out), None, quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=list(opts.op_types) if opts.op_types else None,
                            per_channel=opts.per_channel, reduce_range=opts.reduce_range,
                            activation_type=types[opts.activation_type], weight_type=types[opts.weight_type],
                            nodes_to_exclude=sorted(kept), calibrate_method=method, extra_options=dict(extra),
                            calibration_cache_path=str(entry.ranges_path))
        except Exception as exc:
            raise StepFailed(f"ONNX Runtime's quantizer failed: {type(exc).__name__}: {exc}",
                             hint="Keep the failing nodes in float with the exclude option.") from exc
        return out

    return quantize


def _cosines(ref: Sequence[Sequence[np.ndarray]], got: Sequence[Sequence[np.ndarray]]) -> float:
    """Mean over samples of the per-sample cosine similarity, worst over the float outputs."""
    per_output = []
    for k in range(len(ref[0])):
        if ref[0][k].dtype.kind != "f":
            continue
        values = []
        for r_batch, g_batch in zip(ref, got, strict=True):
            r = r_batch[k].reshape(len(r_batch[k]), -1).astype(np.float64)
            g = g_batch[k].reshape(len(g_batch[k]), -1).astype(np.float64)
            denom = np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1)
            values.extend(np.where(denom > 0, (r * g).sum(axis=1) / np.maximum(denom, 1e-300), 1.0))
        per_output.append(float(np.mean(values)))
    return min(per_output) if per_output else 1.0


def _guard_fidelity(float_path: Path, q_path: Path, calibration: CalibrationSet, opts: _Options, graph: _Graph,
                    sqnr: Mapping[str, float], candidates: set[str], kept: dict[str, Why],
                    quantize: Callable[[Mapping[str, Why]], Path]) -> tuple[Path, dict[str, Any]]:
    """Measure cosine to float on calibration samples; while under target, keep the noisiest compute ops in float.

    A round is kept only when it pays: the share of the remaining gap it closes must be at least
    BACKOFF_PAYBACK times the share of compute ops it moved to float. Where the loss is local (a few
    outlier-ridden layers) one round closes most of the gap; where it is spread over every layer, as in a
    deep CNN whose every conv adds a little noise, float ops buy fidelity only in proportion to the speed
    they cost, and the artifact would end up as slow as FP32 without reaching the target. Then every op
    stays int8 and the result says why."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    batches = list(_batches(calibration, _batch_size(calibration, opts.batch_size), opts.analysis_samples))

    def run(path: Path) -> list[list[np.ndarray]]:
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        return [session.run(None, {n: b[n] for n in names}) for b in batches]

    ref = run(float_path)
    target = float(opts.fidelity_target or 0.0)
    rounds: list[dict[str, Any]] = [{"kept_float": len(kept), "cosine": round(_cosines(ref, run(q_path)), 5)}]
    best = (rounds[0]["cosine"], q_path, dict(kept))
    order = sorted((n for n in candidates if graph.nodes[n].op_type in COMPUTE_OPS and n not in kept),
                   key=lambda n: min((sqnr.get(t, math.inf) for t in graph.nodes[n].input), default=math.inf))
    compute = max(1, len(order))
    while best[0] < target and order and len(rounds) <= BACKOFF_ROUNDS:
        take = max(1, math.ceil(len(order) / 4))
        for name in order[:take]:
            worst = min((sqnr.get(t, math.inf) for t in graph.nodes[name].input), default=math.inf)
            kept[name] = ("fidelity", f"kept in float to reach cosine {target} on calibration samples "
                                      f"(input {worst:.1f} dB signal-to-quantization-noise, among the noisiest)")
        order = order[take:]
        path = quantize(kept)
        cos = round(_cosines(ref, run(path)), 5)
        closed = min(1.0, (cos - best[0]) / (target - best[0]))
        cost = (len(kept) - len(best[2])) / compute
        paid = closed >= BACKOFF_PAYBACK * cost
        rounds.append({"kept_float": len(kept), "cosine": cos, "gap_closed": round(closed, 3),
                       "compute_share": round(cost, 3), "kept": paid})
        if paid:
            best = (cos, path, dict(kept))
    kept.clear()
    kept.update(best[2])
    samples = sum(len(next(iter(b.values()))) for b in batches)
    result = {"cosine": best[0], "target": target, "samples": samples, "rounds": rounds, "met": best[0] >= target}
    if best[0] < target:
        result["why_unmet"] = _why_unmet(rounds, best[1] == q_path)
    return best[1], result


def _why_unmet(rounds: list[dict[str, Any]], all_int8: bool) -> str:
    if len(rounds) == 1:
        return "no compute op was left to keep in float"
    if all_int8:
        return ("the loss is spread across the network: keeping its noisiest ops in float closed too little of the "
                f"gap for the speed it costs (a round must close {BACKOFF_PAYBACK:g}x its share of compute ops), so no "
                "more stays float than the range rules chose; for more fidelity try method=percentile or entropy, "
                "or fp16/fp32")
    return (f"the rounds that paid were kept ({sum(bool(r.get('kept')) for r in rounds)} of {len(rounds) - 1}) "
            "and the gap that is left is spread too thin to close without giving up the speed-up")


def _precision_counts(path: Path) -> tuple[dict[str, int], dict[str, int]]:
    """Op type -> count of nodes whose computed inputs all come from DequantizeLinear and whose weights are
    quantized too (the QDQ groups ORT runs in int8), and of nodes left in float."""
    import onnx
    from onnx import TensorProto

    model = onnx.load(str(path), load_external_data=False)
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name for i in model.graph.initializer}
    float_weights = {i.name for i in model.graph.initializer
                     if i.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)}
    quantized: Counter[str] = Counter()
    floats: Counter[str] = Counter()
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        sources = [producer[i].op_type if i in producer else "input" for i in node.input if i and i not in inits]
        if sources and all(s == "DequantizeLinear" for s in sources) and not float_weights & set(node.input):
            quantized[node.op_type] += 1
        else:
            floats[node.op_type] += 1
    return dict(quantized.most_common()), dict(floats.most_common())


# ---------------------------------------------------------------- small helpers


def _atomic_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.tmp-{os.getpid()}"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(data, indent=1, default=float))
    os.replace(tmp, path)


@contextlib.contextmanager
def quiet_ort_tools() -> Iterator[None]:
    """ORT's Python tools print progress and log warnings (root logger and their own); keep them to ourselves:
    the build's summary says what matters."""
    loggers = [logging.getLogger(), logging.getLogger("onnxruntime"), logging.getLogger("onnxruntime.transformers")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
