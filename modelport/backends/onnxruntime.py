"""The ONNX Runtime backend: FP32 with fusions, FP16, static INT8 (QDQ) and dynamic INT8, chosen for this CPU.

What users meet with ORT's tools by hand, and what this backend does instead:
- FP32: the graph optimizations are applied offline and saved, after the transformer fusions
  (`ort_fusion.py`: attention fused for the exporter's graphs, then `onnxruntime.transformers`' own) where the
  graph has attention/LayerNorm/GELU patterns (detected, not asked); INT8 quantizes the fused graph.
- FP16: converted with float32 inputs and outputs; ops that lose accuracy in float16 or have no float16
  kernel in the execution provider stay float32, found by asking the runtime, and listed.
- INT8 static: the shared QDQ pass (`modelport/quantize/`) with activation/weight signedness and
  reduce_range chosen from the CPU's instruction set, an op set that has fast int8 kernels for this
  kind of graph, range-wrecking tensors kept in float, and a latency check against FP32. Where the CPU's
  choice is 7-bit weights (x86 without VNNI), a fidelity guard also builds u8u8 with 8-bit weights (ORT's
  u8u8 kernels do not saturate) and keeps the closer on calibration samples.
- INT8 dynamic: MatMul/Gemm weights in int8 with activations quantized at run time, Conv only where it
  measured faster; a fidelity guard builds it as `quantize_dynamic`'s defaults would too and keeps the closer.
"""

from __future__ import annotations

import functools
import os
import platform
import re
import tempfile
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelport import progress
from modelport.backends.base import SLOWER_THAN_FP32, Backend, Recipe, Runner
from modelport.backends.ort_fusion import fused_for_build
from modelport.backends.probes import GUARD_MARGIN_DB, closest, probe_feeds
from modelport.backends.saturation import X86, int8_saturates
from modelport.errors import BadInput, StepFailed
from modelport.onnx_fp16 import convert_to_fp16
from modelport.options import Option, parse_bool, parse_list
from modelport.ort_session import ort_session, quiet_ort_tools
from modelport.quantize import QdqSettings, resolve_exclude, write_qdq_model
from modelport.specs import TensorSpec

if TYPE_CHECKING:
    import onnx

    from modelport.artifact import Artifact
    from modelport.bundle import ModelBundle
    from modelport.calibration import CalibrationSet

MAIN_FILE = "model.onnx"
LEVELS = ("basic", "extended", "all")
TRANSFORMER_MARKERS = frozenset({"LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization",
                                 "RMSNormalization", "Attention", "MultiHeadAttention"})
# Ops whose QDQ groups ORT's CPU provider fuses into int8 kernels (QLinearConv, QLinearAdd, QLinearMul,
# QGemm, int8 pooling, ...) or passes through in 8 bits: a CNN's activations stay int8 between layers.
CNN_INT8_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Mul", "Relu", "Clip", "LeakyRelu", "Sigmoid",
                "MaxPool", "AveragePool", "GlobalAveragePool", "Concat", "Resize", "Reshape", "Flatten", "Transpose",
                "Squeeze", "Unsqueeze", "Pad", "Split", "Slice")
TRANSFORMER_INT8_OPS = ("MatMul", "Gemm", "Conv")
QUANT_TYPES = {"u8s8": ("uint8", "int8"), "s8s8": ("int8", "int8"), "u8u8": ("uint8", "uint8")}  # act, weight
_NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
             "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
             "tensor(bool)": np.bool_}


def _tristate(value: Any) -> str:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    return "true" if parse_bool(value) else "false"


# ---------------------------------------------------------------- choices made from the CPU


@dataclass(frozen=True)
class CpuChoice:
    """Activation/weight signedness and weight range for ORT's int8 kernels on this CPU, with the reason."""

    activation_type: str
    weight_type: str
    reduce_range: bool
    reason: str

    @property
    def label(self) -> str:
        return ("u8" if self.activation_type == "uint8" else "s8") + ("s8" if self.weight_type == "int8" else "u8")


def cpu_choice(flags: frozenset[str] | None = None, machine: str | None = None) -> CpuChoice:
    """U8S8 or S8S8 and reduce_range for the CPU's instruction set (ORT's own guidance, per feature)."""
    machine = (machine or platform.machine()).lower()
    saturates, why = int8_saturates(flags, machine)
    if machine not in X86:
        return CpuChoice("int8", "int8", False, f"{why}: ORT's ARM int8 kernels take signed activations (s8s8) "
                         "natively, so weights keep all 8 bits")
    if not saturates:
        return CpuChoice("uint8", "int8", False, f"{why}, so weights keep all 8 bits; s8s8 QDQ has fewer fast x86 "
                         "kernels")
    return CpuChoice("uint8", "int8", True, f"{why}; 7-bit weights (reduce_range) keep them exact. s8s8 QDQ has "
                     "fewer fast x86 kernels (MatMuls stay float around extra Q/DQ), so activations are uint8")


# ---------------------------------------------------------------- the runner


def _providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    gpu = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available]
    return [*gpu, "CPUExecutionProvider"]


class OnnxRuntimeRunner(Runner):
    """An InferenceSession on the best available providers (TensorRT, CUDA, then CPU)."""

    name = "onnxruntime"

    def __init__(self, path: Path, inputs: list[TensorSpec], outputs: list[TensorSpec], threads: int | None) -> None:
        try:
            self.session = ort_session(path, threads=threads, providers=_providers())
        except Exception as exc:
            raise StepFailed(f"ONNX Runtime cannot load {path}: {exc}",
                             hint="Rebuild the artifact with the onnxruntime version installed here.") from exc
        self.inputs = inputs
        self.outputs = outputs
        self.threads = threads
        self.providers = self.session.get_providers()
        session_inputs = {i.name: np.dtype(_NP_TYPES.get(i.type, np.float32)) for i in self.session.get_inputs()}
        manifest = {s.name: np.dtype(s.dtype) for s in inputs}
        if session_inputs != manifest:
            raise StepFailed(f"{path} takes inputs {_listing(session_inputs)}, but its manifest says "
                             f"{_listing(manifest)}.", hint="Rebuild the artifact with --force.")
        self._output_names = [o.name for o in self.session.get_outputs()]
        self._path = path
        self._exposing: dict[frozenset[str], Any] = {}  # a session per set of exposed tensors, made once

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._output_names, self.session.run(self._output_names, feeds), strict=True))

    def tensor_names(self) -> list[str]:
        return list(self._tensors)

    def intermediates(self, feeds: Mapping[str, Any], names: Sequence[str]) -> dict[str, np.ndarray]:
        """Read as extra graph outputs of a copy of the artifact (its own QDQ graph, this runner's providers).

        Exposing a tensor keeps ORT from fusing past it, so a quantized tensor is read as the dequantized
        value its consumers take (DequantizeLinear's output), computed in float from the same int8 values.
        """
        checked = self.checked(feeds)
        unknown = [n for n in names if n not in self._tensors]
        if unknown:
            raise BadInput(f"The {self.name} artifact {self._path} has no tensor(s) {', '.join(unknown[:5])}.",
                           hint="Ask for names that tensor_names() lists.")
        wanted = frozenset(self._tensors[n] for n in names)
        if wanted not in self._exposing:
            import onnx

            model = onnx.load(str(self._path))
            present = {o.name for o in model.graph.output}
            model.graph.output.extend(onnx.ValueInfoProto(name=t) for t in sorted(wanted - present))
            self._exposing[wanted] = ort_session(model.SerializeToString(), threads=self.threads,
                                                 providers=self.providers)
        session = self._exposing[wanted]
        order = sorted(wanted)
        values = dict(zip(order, session.run(order, checked), strict=True))
        return {n: _as_float(values[self._tensors[n]]) for n in names}

    @functools.cached_property
    def _tensors(self) -> dict[str, str]:
        """Each activation the artifact computes, by its ONNX name, and the tensor holding the value its consumers
        read: the DequantizeLinear output where it is quantized (T -> Q -> DQ), else T itself."""
        import onnx

        graph = onnx.load(str(self._path), load_external_data=False).graph
        users: dict[str, list[Any]] = defaultdict(list)
        for node in graph.node:
            for name in node.input:
                users[name].append(node)
        outputs = {o.name for o in graph.output}

        def read(tensor: str) -> str:
            q = users.get(tensor, [])
            dq = users.get(q[0].output[0], []) if len(q) == 1 and q[0].op_type == "QuantizeLinear" else []
            return dq[0].output[0] if len(dq) == 1 and dq[0].op_type == "DequantizeLinear" else tensor

        constants = {i.name for i in graph.initializer}
        found = {i.name: read(i.name) for i in graph.input if i.name not in constants}
        for node in graph.node:
            if node.op_type not in ("QuantizeLinear", "DequantizeLinear", "Constant"):
                for tensor in filter(None, node.output):
                    value = read(tensor)  # a quantized graph output keeps its name on the DequantizeLinear
                    found[value if value in outputs else tensor] = value
        return found

    def _release(self) -> None:
        self.session = None
        self._exposing.clear()


def _as_float(value: np.ndarray) -> np.ndarray:
    return value.astype(np.float32, copy=False) if value.dtype.kind == "f" else value


def _listing(dtypes: Mapping[str, np.dtype]) -> str:
    return ", ".join(f"{name}:{dtype}" for name, dtype in dtypes.items())


# ---------------------------------------------------------------- the backend


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    options = (
        Option(name="optimization", help="Graph optimization level applied offline and saved: basic, extended or all "
               "('all' adds layout changes tied to this CPU).", default="extended", choices=LEVELS,
               precisions=("fp32",)),
        Option(name="fusions", help="Transformer fusions (attention, LayerNorm, GELU, SkipLayerNorm): auto applies "
               "them where the graph has them (before quantizing, for int8), off skips them.", default="auto",
               choices=("auto", "off"), precisions=("fp32", "int8", "int8-dynamic")),
        Option(name="gelu", help="GELU in the fused graph: exact (erf, the fusions stay within 1e-4 of the exported "
               "graph) or approximate (ORT's FastGelu, the tanh form Optimum's O3 uses: faster, not the same "
               "function; its deviation is measured and recorded in the manifest).", default="exact",
               choices=("exact", "approximate"), precisions=("fp32",)),
        Option(name="keep_fp32", help="Op types kept in float32 besides those chosen automatically "
               "(comma-separated).", default=(), parse=parse_list, precisions=("fp16",)),
        *QdqSettings.as_options(),  # the shared QDQ pass's knobs, declared in modelport/quantize/settings.py
        Option(name="per_channel", help="Quantize weights per output channel (measured slower with run-time "
               "activation quantization, hence off).", default=False, parse=parse_bool, precisions=("int8-dynamic",)),
        Option(name="quant_type", help="Activation/weight signedness: auto (from the CPU, and where it takes 7-bit "
               "weights the closer of it and u8u8 with 8-bit weights), u8s8, s8s8 or u8u8.", default="auto",
               choices=("auto", *QUANT_TYPES), precisions=("int8",)),
        Option(name="reduce_range", help="7-bit weights: auto (from the CPU), true or false.", default="auto",
               parse=_tristate, choices=("auto", "true", "false"), precisions=("int8", "int8-dynamic")),
        Option(name="conv", help="Dynamic INT8 of Conv too: auto (only where it measures faster), true or false.",
               default="auto", parse=_tristate, choices=("auto", "true", "false"), precisions=("int8-dynamic",)),
        Option(name="measure", help="Time the artifact against ORT FP32 at build time and warn when it is slower.",
               default=True, parse=parse_bool, precisions=("fp16", "int8", "int8-dynamic")),
    )

    def build(self, bundle: ModelBundle, recipe: Recipe, calibration: CalibrationSet | None,
              out_dir: Path) -> dict[str, Any]:
        src = bundle.onnx_path
        out = Path(out_dir) / MAIN_FILE
        o = recipe.options
        # Scratch files live in the artifact's staging directory: on the destination's filesystem, so the
        # chosen one is renamed into place (never across devices) and a full disk shows where it matters.
        with tempfile.TemporaryDirectory(prefix=".scratch-", dir=out_dir) as tmp_name, quiet_ort_tools():
            tmp = Path(tmp_name)
            start, fusions = src, {"applied": False, "reason": "fusions=off"}
            if recipe.precision != "fp16" and o["fusions"] == "auto":
                # static int8 keeps Q/K/V projections as MatMuls (MultiHeadAttention), so the QDQ pass quantizes them;
                # dynamic int8 too where attention keeps an additive bias, which QAttention has no input for
                start, fusions = fused_for_build(src, tmp / "fused.onnx", bundle.source.example_feeds(),
                                                 pack=recipe.precision != "int8",
                                                 gelu=o["gelu"] if recipe.precision == "fp32" else "exact",
                                                 pack_biased=recipe.precision != "int8-dynamic")
            if recipe.precision == "fp32":
                with progress.stage("optimize"):
                    details = _build_fp32(src, start, out, o)
            elif recipe.precision == "fp16":
                with progress.stage("convert to float16"):
                    details = _build_fp16(src, out, o, tmp)
            elif recipe.precision == "int8":
                if calibration is None:
                    raise BadInput("Static int8 needs calibration data.",
                                   hint="Pass --calib SRC (file.npz, a directory, images:DIR, file.py:fn), or "
                                        "--calib synthetic for a latency-only build whose accuracy means nothing.")
                details = _build_int8(start, out, o, calibration, tmp)
            else:
                with progress.stage("quantize"):
                    details = _build_int8_dynamic(start, out, o, tmp, bundle.source.example_feeds())
            if recipe.precision != "fp16":
                details["fusions"] = fusions
            if recipe.precision != "fp32" and o.get("measure"):
                with progress.stage("latency check"):
                    details["latency"] = _latency_vs_fp32(start, out, bundle.source.example_feeds(),
                                                          recipe.precision)
        details["ops"] = _op_counts(out)
        details["main_file"] = MAIN_FILE
        return details

    def load(self, artifact: Artifact, threads: int | None = None) -> Runner:
        return OnnxRuntimeRunner(artifact.main_file, artifact.inputs, artifact.outputs, threads)


# ---------------------------------------------------------------- fp32


def _build_fp32(src: Path, start: Path, out: Path, o: Mapping[str, Any]) -> dict[str, Any]:
    """ORT's graph optimizations applied offline to `start` (the fused graph, or `src` where nothing fused)."""
    _optimize_offline(start, out, o["optimization"])
    return {"optimization": o["optimization"], "optimized_for": "CPUExecutionProvider",
            "portable": o["optimization"] != "all",
            "nodes": {"exported": _node_count(src), "artifact": _node_count(out)}}


def _optimize_offline(src: Path, dst: Path, level: str) -> None:
    ort_session(src, level=level, optimized_path=dst)


# ---------------------------------------------------------------- fp16


def _build_fp16(src: Path, out: Path, o: Mapping[str, Any], tmp: Path) -> dict[str, Any]:
    """Float16 everywhere the provider has a float16 kernel and accuracy allows; float32 I/O."""
    provider = _providers()[0]
    no_kernel: dict[str, str] = {}
    candidate = tmp / "fp16.onnx"
    for _ in range(_node_count(src) + 1):
        result = convert_to_fp16(src, candidate, exclude=o["keep_fp32"], blocked=no_kernel)
        missing = _missing_kernel(candidate, provider)
        if missing is None:
            break
        if missing in result.kept_float or missing in no_kernel:
            raise StepFailed(f"ONNX Runtime has no float16 kernel for {missing} on {provider}, and keeping it in "
                             "float32 did not help.", hint="Build fp32 instead, or keep_fp32 the ops around it.")
        no_kernel[missing] = f"no float16 kernel in {provider}"
    else:
        raise StepFailed("Could not find a float16 graph that ONNX Runtime can run.")
    try:
        ort_session(candidate, providers=[provider])
    except Exception as exc:
        raise StepFailed(f"The float16 model loads but fails once ONNX Runtime fuses it: {exc}",
                         hint="Keep the ops named in the message in float32 with --option keep_fp32=OP,...") from exc
    os.replace(candidate, out)
    ops16 = _fp16_ops(out)
    return {"kept_fp32": result.kept_float,
            "fp16_ops": ops16, "checked_on": provider, "io": "float32 inputs and outputs",
            "note": None if ops16 else f"No op computes in float16 on {provider}: the artifact runs in float32."}


def _missing_kernel(path: Path, provider: str) -> str | None:
    """The op type ORT reports it has no kernel for, or None when the session loads."""
    try:
        ort_session(path, level="basic", providers=[provider])
    except Exception as exc:
        found = re.search(r"implementation for (\w+)\(", str(exc))
        if found is None:
            raise StepFailed(f"ONNX Runtime cannot load the float16 model: {exc}") from exc
        return found.group(1)
    return None


def _fp16_ops(path: Path) -> dict[str, int]:
    """Op types computing in float16: a node with a float16 input or output other than Cast."""
    import onnx
    from onnx import TensorProto

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    halves = {v.name for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]
              if v.type.tensor_type.elem_type == TensorProto.FLOAT16}
    halves |= {i.name for i in model.graph.initializer if i.data_type == TensorProto.FLOAT16}
    counts = Counter(n.op_type for n in model.graph.node
                     if n.op_type != "Cast" and any(t in halves for t in [*n.input, *n.output]))
    return dict(counts.most_common())


# ---------------------------------------------------------------- int8 static


@dataclass(frozen=True)
class OpSet:
    kind: str
    op_types: tuple[str, ...]
    float_outputs: tuple[str, ...]
    weights_only: bool
    reason: str


def _op_set(model: onnx.ModelProto, chosen: tuple[str, ...]) -> OpSet:
    """Which ops to quantize for this kind of graph, so that int8 is fast on ORT's CPU kernels."""
    if chosen:
        return OpSet("user", chosen, (), False, "op types given by the user")
    if _looks_like_transformer(model):
        return OpSet("transformer", TRANSFORMER_INT8_OPS, ("MatMul", "Gemm"), True,
                     "MatMul/Gemm with weights run in int8 with float outputs (MatMulIntegerToFloat); the adds, "
                     "normalization, GELU and softmax between them have no int8 CPU kernels, so re-quantizing "
                     "their inputs would only add conversions and error")
    return OpSet("cnn", CNN_INT8_OPS, (), False,
                 "convolutions chained in int8 (QLinearConv, QLinearAdd for residuals, int8 pooling and reshapes): "
                 "activations stay 8-bit between layers")


def _looks_like_transformer(model: onnx.ModelProto) -> bool:
    """Layer norms, fused attention, or a MatMul of two computed tensors (attention scores): not a CNN."""
    if {n.op_type for n in model.graph.node} & TRANSFORMER_MARKERS:
        return True
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return any(n.op_type == "MatMul" and not constants & set(n.input) for n in model.graph.node)


def _build_int8(src: Path, out: Path, o: Mapping[str, Any], calibration: CalibrationSet,
                tmp: Path) -> dict[str, Any]:
    import onnx

    op_set = _op_set(onnx.load(str(src), load_external_data=False), o["op_types"])
    candidates = {"cpu_choice": _cpu_choice_with(o)}
    full = _full_range_choice(candidates["cpu_choice"], o)
    if full is not None:
        candidates["full_range"] = full
    results = {}
    for label, candidate in candidates.items():
        settings = QdqSettings.from_options(
            o, activation_type=candidate.activation_type, weight_type=candidate.weight_type,
            reduce_range=candidate.reduce_range, op_types=op_set.op_types, float_outputs=op_set.float_outputs,
            weights_only=op_set.weights_only)
        results[label] = write_qdq_model(src, calibration, tmp / f"int8-{label}.onnx", settings)
    guard = None
    if len(results) > 1:
        with progress.stage("fidelity guard"):
            guard = _static_guard(src, {k: r.path for k, r in results.items()}, calibration, settings)
    label = guard["chosen"] if guard else "cpu_choice"
    choice, result = candidates[label], results[label]
    os.replace(result.path, out)
    details = {
        "format": "QDQ",
        "cpu_choice": {"quant_type": choice.label, "reduce_range": choice.reduce_range, "reason": choice.reason},
        "op_set": {"kind": op_set.kind, "quantized_types": list(op_set.op_types),
                   "float_outputs": list(op_set.float_outputs), "weights_only": op_set.weights_only,
                   "reason": op_set.reason},
        "calibration": {"method": result.method, "samples_seen": result.samples_seen,
                        "samples_available": result.samples_available, "seconds": result.calibration_seconds,
                        "ranges_from_cache": result.from_cache, "cache_key": result.cache_key,
                        "given_ranges": result.given_ranges},
        "preprocess": result.preprocess,
        "int8_ops": result.quantized,
        "float_ops": result.float_ops,
        "kept_float_summary": result.kept_summary,
        "kept_float": result.kept_float,
        "smoothed": result.smoothed,
        "algorithms": result.algorithms,
        "fidelity_on_calibration": result.fidelity,
        "qdq_seconds": result.seconds,
    }
    if result.fidelity and not result.fidelity["met"]:
        details["fidelity_warning"] = (f"Cosine to FP32 on calibration samples is {result.fidelity['cosine']}, under "
                                       f"the target {result.fidelity['target']}: "
                                       f"{result.fidelity['why_unmet']}.")
    if guard:
        details["fidelity_guard"] = guard
    if result.notes:
        details["notes"] = result.notes
    return details


def _full_range_choice(choice: CpuChoice, o: Mapping[str, Any]) -> CpuChoice | None:
    """Where this CPU's choice takes 7-bit weights against saturation and the user chose neither the weight range
    nor the types: the alternative that keeps all 8 bits without saturating (uint8 weights, for ORT's u8u8 kernels,
    which widen both operands to 16 bits instead of multiplying u8 by s8 with VPMADDUBSW), at some speed. None
    where there is nothing to weigh, and with a ranges file: QAT trained the weights on this CPU's grid."""
    if (not choice.reduce_range or o.get("reduce_range", "auto") != "auto" or o.get("quant_type", "auto") != "auto"
            or o.get("ranges_file") is not None):
        return None
    return CpuChoice("uint8", "uint8", False, "u8u8 with 8-bit weights: ORT's u8u8 kernels widen both operands to "
                     "16 bits, so all 8 bits of the weights stay exact; measured more faithful than this CPU's u8s8 "
                     f"choice on calibration samples (the CPU's choice: {choice.reason})")


def _static_guard(src: Path, built: Mapping[str, Path], calibration: CalibrationSet,
                  settings: QdqSettings) -> dict[str, Any]:
    """Choose between the CPU's 7-bit-weight u8s8 model and the 8-bit-weight u8u8 one by output SQNR against FP32 on
    calibration samples: 7 bits double the weights' rounding step, u8u8 kernels are slower, and which costs more
    fidelity depends on the model, so it is measured. Both share the activation ranges, so scoring on the samples
    that made them favours neither."""
    from modelport.quantize.ranges import analysis_batches

    batches = list(analysis_batches(calibration, settings))
    chosen, scores = _closest_on(src, built, batches, preferred="cpu_choice")
    samples = sum(len(next(iter(b.values()))) for b in batches)
    return {"sqnr_db": scores, "chosen": chosen, "samples": samples,
            "how": f"output SQNR against ORT FP32 on {samples} calibration samples (analysis_samples); full_range "
                   f"(u8u8, 8-bit weights) replaces the CPU's choice when {GUARD_MARGIN_DB} dB closer"}


def _cpu_choice_with(o: Mapping[str, Any]) -> CpuChoice:
    choice = cpu_choice()
    act, weight, reduce_range, reason = choice.activation_type, choice.weight_type, choice.reduce_range, choice.reason
    if o.get("quant_type", "auto") != "auto":
        act, weight = QUANT_TYPES[o["quant_type"]]
        reason = f"{o['quant_type']} chosen by the user (this CPU would take {choice.label}: {choice.reason})"
        if weight == "uint8":  # ORT's u8u8 kernels widen both operands to 16 bits: 8-bit weights do not saturate
            reduce_range = False
    if o.get("reduce_range", "auto") != "auto":
        reduce_range = o["reduce_range"] == "true"
        reason += f"; reduce_range={reduce_range} chosen by the user"
    return CpuChoice(act, weight, reduce_range, reason)


# ---------------------------------------------------------------- int8 dynamic


def _build_int8_dynamic(src: Path, out: Path, o: Mapping[str, Any], tmp: Path,
                        feeds: Mapping[str, np.ndarray]) -> dict[str, Any]:
    import onnx

    choice = _cpu_choice_with(o)
    prepared = tmp / "prepared.onnx"
    if o["preprocess"]:
        from modelport.quantize.prepare import pre_process

        # ORT's symbolic shape inference cannot complete on its own fused Attention op: skip it there
        fused = any(n.op_type == "Attention" and n.domain == "com.microsoft"
                    for n in onnx.load(str(src), load_external_data=False).graph.node)
        try:
            pre_process(src, prepared, skip_symbolic_shape=fused)
        except Exception:
            pre_process(src, prepared, skip_symbolic_shape=True)
    else:
        onnx.save(onnx.load(str(src)), str(prepared))
    model = onnx.load(str(prepared))
    notes: list[str] = []
    kept = resolve_exclude(o["exclude"], model, src, notes)
    excluded_types = {t for t in o["exclude"] if t in {n.op_type for n in model.graph.node}}
    plain = tmp / "plain.onnx"  # what ORT's quantize_dynamic sees at its defaults: Gemm left as it is
    onnx.save(model, str(plain))
    rewritten = 0 if "Gemm" in excluded_types else _gemm_to_matmul(model, skip=set(kept))
    onnx.save(model, str(prepared))
    present = {n.op_type for n in model.graph.node}
    base = [t for t in ("MatMul", "Attention", "LSTM") if t in present and t not in excluded_types]
    candidates = {"modelport": (prepared, choice)}
    defaults = _defaults_choice(choice, o)
    if rewritten or defaults.reduce_range != choice.reduce_range:
        candidates["ort_defaults"] = (plain, defaults)
    built = {label: tmp / f"dynamic-{label}.onnx" for label in candidates}
    for label, (model_path, label_choice) in candidates.items():
        _quantize_dynamic(model_path, built[label], base, sorted(kept), o["per_channel"], label_choice)
    guard = _fidelity_guard(src, built, feeds)
    prepared, choice = candidates[guard["chosen"]]
    rewritten = rewritten if guard["chosen"] == "modelport" else 0
    has_conv = "Conv" in present and "Conv" not in excluded_types
    conv_choice: dict[str, Any] = {"present": has_conv}
    variants = {"without_conv": base}
    paths = {"without_conv": built[guard["chosen"]]}
    if has_conv and o["conv"] != "false":
        variants["with_conv"] = [*base, "Conv"]
        paths["with_conv"] = tmp / "dynamic-with_conv.onnx"
        _quantize_dynamic(prepared, paths["with_conv"], variants["with_conv"], sorted(kept), o["per_channel"], choice)
    chosen = "with_conv" if has_conv and o["conv"] == "true" else "without_conv"
    if has_conv and o["conv"] == "auto":
        threads = min(2, os.cpu_count() or 1)
        times = _compare({k: ort_session(p, threads=threads) for k, p in paths.items()}, feeds)
        conv_choice["ms"] = {k: round(v, 4) for k, v in times.items()}
        conv_choice["threads"] = threads
        chosen = min(times, key=times.__getitem__)
        conv_choice["reason"] = "measured faster " + ("with" if chosen == "with_conv" else "without") + " ConvInteger"
    elif has_conv:
        conv_choice["reason"] = f"conv={o['conv']} chosen by the user"
    conv_choice["quantized"] = chosen == "with_conv"
    os.replace(paths[chosen], out)
    details = {"cpu_choice": {"quant_type": "u8s8 (activations quantized at run time)",
                              "reduce_range": choice.reduce_range, "reason": choice.reason},
               "quantized_types": variants[chosen], "gemm_rewritten_as_matmul": rewritten, "conv": conv_choice,
               "fidelity_guard": guard, "kept_float": [{"node": n, "reason": r} for n, r in kept.items()]}
    if notes:
        details["notes"] = notes
    return details


def _defaults_choice(choice: CpuChoice, o: Mapping[str, Any]) -> CpuChoice:
    """The weight range of `quantize_dynamic` at its defaults (8 bits), unless the user chose reduce_range."""
    if o.get("reduce_range", "auto") != "auto":
        return choice
    return CpuChoice(choice.activation_type, choice.weight_type, False,
                     "quantize_dynamic's defaults (8-bit weights, Gemm kept float) measured more faithful than "
                     f"this CPU's choice on the probe inputs (the CPU's choice: {choice.reason})")


def _fidelity_guard(src: Path, built: Mapping[str, Path], feeds: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Choose between modelport's dynamic INT8 and one quantized as `quantize_dynamic`'s defaults would, by output
    SQNR against FP32 on probe inputs: either can win (7-bit weights avoid AVX2's int16 saturation but double the
    rounding step; a Gemm left float is exact), so neither is assumed and the artifact is never the less faithful.
    """
    probes = probe_feeds(feeds)
    chosen, scores = _closest_on(src, built, probes, preferred="modelport")
    return {"sqnr_db": scores, "chosen": chosen, "probes": len(probes),
            "how": f"output SQNR against ORT FP32 on the example input and {len(probes) - 1} copies with 10% noise; "
                   f"ort_defaults replaces modelport's choice when {GUARD_MARGIN_DB} dB closer"}


def _closest_on(src: Path, built: Mapping[str, Path], inputs: list[dict[str, np.ndarray]],
                preferred: str) -> tuple[str, dict[str, float]]:
    """`probes.closest` of the `built` variants' outputs on `inputs` against the FP32 model at `src`."""
    reference = _float_outputs(ort_session(src, threads=1), inputs)
    return closest(reference, {label: _float_outputs(ort_session(path, threads=1), inputs)
                               for label, path in built.items()}, preferred)


def _float_outputs(session: Any, probes: list[dict[str, np.ndarray]]) -> np.ndarray:
    """Every float output of every probe, flattened into one float64 vector."""
    names = {i.name for i in session.get_inputs()}
    values = [np.asarray(v, np.float64).ravel() for p in probes
              for v in session.run(None, {k: x for k, x in p.items() if k in names}) if np.asarray(v).dtype.kind == "f"]
    return np.concatenate(values)


def _quantize_dynamic(src: Path, dst: Path, op_types: list[str], exclude: list[str], per_channel: bool,
                      choice: CpuChoice) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=op_types, per_channel=per_channel,
                         reduce_range=choice.reduce_range, weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                         extra_options={"MatMulConstBOnly": True})
    except Exception as exc:
        raise StepFailed(f"ONNX Runtime's dynamic quantizer failed: {type(exc).__name__}: {exc}",
                         hint="Keep the failing nodes in float with the exclude option.") from exc


def _gemm_to_matmul(model: onnx.ModelProto, skip: set[str]) -> int:
    """Rewrite Gemm with constant weights as MatMul + Add: ORT quantizes MatMul dynamically, never Gemm."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    uses = Counter(i for n in model.graph.node for i in n.input)
    nodes, rewritten, stale = [], 0, set()
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0)
        if node.op_type != "Gemm" or not plain or node.input[1] not in inits or node.name in skip:
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            weight = weight.T
            name = node.input[1] if uses[node.input[1]] == 1 else f"{node.input[1]}_T_{node.name}"
            new = numpy_helper.from_array(np.ascontiguousarray(weight), name)
            if name in inits:
                inits[name].CopyFrom(new)
                stale.add(name)  # a shape recorded for the untransposed weight would contradict the new one
            else:
                model.graph.initializer.append(new)
        else:
            name = node.input[1]
        has_bias = len(node.input) > 2 and node.input[2]
        mm_out = f"{node.output[0]}_matmul" if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], name], [mm_out], name=f"{node.name}_MatMul"))
        if has_bias:
            nodes.append(helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]], name=f"{node.name}_Add"))
        rewritten += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    for entries in (model.graph.value_info, model.graph.input):
        kept = [v for v in entries if v.name not in stale]
        del entries[:]
        entries.extend(kept)
    return rewritten


# ---------------------------------------------------------------- measuring


def _compare(sessions: Mapping[str, Any], feeds: Mapping[str, np.ndarray], budget_s: float = 3.0) -> dict[str, float]:
    """Milliseconds per run: the best round median over interleaved rounds (robust to a shared CPU)."""
    from modelport.timing import interleaved_rounds

    feeds = {k: np.asarray(v) for k, v in feeds.items()}
    runs = {key: _bound(session, {i.name: feeds[i.name] for i in session.get_inputs()})
            for key, session in sessions.items()}
    return {key: min(ms) for key, ms in interleaved_rounds(runs, feeds, 5, budget_s).items()}


def _bound(session: Any, feeds: Mapping[str, np.ndarray]):
    """A run function with this session's own feeds bound, so the timed call builds nothing."""
    return lambda _: session.run(None, feeds)


def _latency_vs_fp32(src: Path, artifact: Path, feeds: Mapping[str, np.ndarray], precision: str) -> dict[str, Any]:
    threads = min(2, os.cpu_count() or 1)
    times = _compare({"fp32": ort_session(src, threads=threads), precision: ort_session(artifact, threads=threads)},
                     feeds)
    speedup = times["fp32"] / times[precision]
    shape = {k: list(np.shape(v)) for k, v in feeds.items()}
    warning = None
    if speedup < SLOWER_THAN_FP32:
        warning = (f"The {precision} artifact measured slower than ORT FP32 on this machine: {times[precision]:.3f} ms "
                   f"vs {times['fp32']:.3f} ms per run ({threads} threads, inputs {shape}).")
    return {"fp32_ms": round(times["fp32"], 4), "artifact_ms": round(times[precision], 4),
            "speedup": round(speedup, 3), "threads": threads, "inputs": shape, "warning": warning,
            "how": "best of 5 interleaved rounds of median run time, at build time"}


def _node_count(path: Path) -> int:
    import onnx

    return len(onnx.load(str(path), load_external_data=False).graph.node)


def _op_counts(path: Path) -> dict[str, int]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return dict(Counter(n.op_type for n in model.graph.node).most_common())
