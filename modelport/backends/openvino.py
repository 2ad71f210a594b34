"""OpenVINO: the validated ONNX file as IR (FP32, FP16 weights) and INT8 through NNCF with the shared calibration.

fp32 and fp16 are `openvino.convert_model` saved as IR, keeping the source's static or dynamic dims;
int8 is `nncf.quantize` over the CalibrationSet (or, with `source=qdq`, the QDQ model every ONNX-consuming
runtime shares), with NNCF's transformer scheme chosen when the graph has attention. By default (`source=auto`)
it also builds NNCF at its own defaults and, on graphs with attention, the QDQ model, and keeps the one closest
to FP32 on probe inputs. Weights get 7 bits where this CPU's 8-bit kernels saturate (x86 without VNNI: NNCF's
overflow fix, the QDQ pass's reduce_range). int8-dynamic is NNCF's weight-only INT8. Each build compiles its IR
once on this machine and records what the plugin will really run (inference precision, how many layers run INT8
kernels), since OpenVINO decides that at load. Where the plugin's INT8 FullyConnected kernel is its generic GEMM
and a 1x1 convolution's is not (x86 without VNNI), INT8 MatMuls are laid out as convolutions (`fc_as_conv`,
backends/openvino_fc_conv.py), decided from the kernels the plugin reports for both layouts.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import logging
import tempfile
import warnings
from collections import Counter
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelport import progress
from modelport.backends.base import SLOWER_THAN_FP32, Backend, Recipe, Runner, RuntimeOp
from modelport.backends.openvino_fc_conv import CONV_SUFFIX, rewrite_int8_matmuls
from modelport.backends.probes import GUARD_MARGIN_DB, closest, probe_feeds
from modelport.backends.saturation import int8_saturates
from modelport.errors import BadInput, StepFailed, Unavailable
from modelport.options import Option, parse_bool, parse_list
from modelport.quantize import QdqSettings, write_qdq_model
from modelport.similarity import finite_or_none
from modelport.specs import TensorSpec

if TYPE_CHECKING:
    from modelport.artifact import Artifact
    from modelport.bundle import ModelBundle
    from modelport.calibration import CalibrationSet

MAIN_FILE = "model.xml"
_COMPUTE = ("Convolution", "GroupConvolution", "ConvolutionBackpropData", "GroupConvolutionBackpropData", "MatMul")
_RUNTIME_COMPUTE = ("Convolution", "Deconvolution", "FullyConnected", "MatMul")
_INT_TYPES = ("i8", "u8", "i4", "u4")
# ONNX op types a user may name in `exclude`, and the OpenVINO op types they become.
_ONNX_TYPES = {"Conv": ("Convolution", "GroupConvolution"), "Gemm": ("MatMul",),
               "ConvTranspose": ("ConvolutionBackpropData", "GroupConvolutionBackpropData"),
               "Mul": ("Multiply",), "Sub": ("Subtract",), "Div": ("Divide",), "Resize": ("Interpolate",),
               "LayerNormalization": ("MVN",), "AveragePool": ("AvgPool",)}
_SHAPE_OPS = ("Convert", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "MaxPool")
_DEQUANT_OPS = ("Subtract", "Multiply")


QDQ_ONLY = ("method", "symmetric_activations", "ranges_file")  # the shared QDQ pass's settings source=qdq takes


def _qdq_only(setting: str) -> Option:
    """A setting of the shared QDQ pass as an option of source=qdq; None by default, so that giving it with NNCF
    is caught."""
    declared = QdqSettings.as_option(setting, name=setting)
    return replace(declared, default=None,
                   help=f"With source=qdq: {declared.help} (default {str(declared.default).lower()}).")


class OpenVinoBackend(Backend):
    name = "openvino"
    options = (
        Option(name="device", help="The OpenVINO device the runner compiles for (cpu, gpu or npu, as OpenVINO "
               "reports them); int8 also tunes NNCF's quantization scheme to it.", default="cpu", parse=str.lower,
               choices=("cpu", "gpu", "npu")),
        Option(name="source", help="nncf: quantize the IR with NNCF over the calibration set; qdq: convert the QDQ "
               "ONNX model of modelport's shared calibration pass (the one TensorRT reads); auto: modelport's NNCF "
               "settings, NNCF's defaults and (with attention) the QDQ model, keeping the closest to FP32 on probe "
               f"inputs (NNCF's defaults unless another is {GUARD_MARGIN_DB} dB closer; NNCF alone with exclude).",
               default="auto", parse=str.lower, choices=("auto", "nncf", "qdq"), precisions=("int8",)),
        Option(name="overflow_fix", help="7-bit weights for CPUs whose 8-bit kernels saturate (x86 without VNNI): "
               "enable gives every Conv/MatMul 7-bit weights, first_layer only the first layers (NNCF's default), "
               "disable none; auto: enable for device=cpu where this CPU saturates, else first_layer. With "
               "source=qdq, enable is the QDQ pass's reduce_range and first_layer counts as disable.", default="auto",
               parse=str.lower, choices=("auto", "enable", "first_layer", "disable"), precisions=("int8",)),
        Option(name="preset", help="NNCF preset: performance (symmetric activations) or mixed (asymmetric "
               "activations); auto takes NNCF's choice for the model type (mixed for transformers).", default="auto",
               parse=str.lower, choices=("auto", "performance", "mixed"), precisions=("int8",)),
        Option(name="model_type", help="transformer applies NNCF's transformer scheme (SmoothQuant, attention kept "
               "accurate); auto chooses it when the graph has MatMul -> Softmax -> MatMul attention.", default="auto",
               parse=str.lower, choices=("auto", "transformer", "generic"), precisions=("int8",)),
        Option(name="ranges", help="How NNCF sets activation ranges: histogram (the clipping that minimises "
               "quantization error over a histogram of the calibration activations) or mean_minmax (NNCF's default: "
               "the mean of per-sample min and max); auto takes histogram, and NNCF's default for transformers.",
               default="auto", parse=str.lower, choices=("auto", "histogram", "mean_minmax"), precisions=("int8",)),
        Option(name="exclude", help="Layers to keep in float, comma-separated: ONNX or OpenVINO node names, torch "
               "module paths (classifier.3), or op types (Conv, MatMul, Softmax); with source=qdq, ONNX node names or "
               "op types.", default=(), parse=parse_list, precisions=("int8", "int8-dynamic")),
        Option(name="measure", help="Time the int8 IR against its float IR at build time, and say so when INT8 does "
               "not pay.", default=True, parse=parse_bool, precisions=("int8",)),
        Option(name="fc_as_conv", help="Run INT8 MatMuls with constant weights as 1x1 convolutions: auto does where "
               "the CPU plugin's INT8 FullyConnected kernel is its generic GEMM and the convolution's is not (x86 "
               "without VNNI); on or off.", default="auto", parse=str.lower, choices=("auto", "on", "off"),
               precisions=("int8",)),
        Option(name="inference_precision", help="The precision the plugin computes float layers in: f32 (the "
               "default: OpenVINO's CPU plugin would otherwise run an FP32 or INT8 IR's float layers in BF16 on CPUs "
               "with AVX512_BF16 or AMX, 4e-2 off PyTorch on the digits CNN) or bf16 (faster there, measured by the "
               "fidelity report; where the CPU lacks it, OpenVINO computes in f32 and the manifest says so).",
               default="f32", parse=str.lower, choices=("f32", "bf16")),
        *(_qdq_only(name) for name in QDQ_ONLY),
    )

    def reads_ranges_file(self, recipe: Recipe) -> bool:
        """Only the QDQ source reads given ranges; NNCF calibrates its own."""
        return super().reads_ranges_file(recipe) and recipe.options.get("source") == "qdq"

    def build(self, bundle: ModelBundle, recipe: Recipe, calibration: CalibrationSet | None,
              out_dir: Path) -> dict[str, Any]:
        import openvino as ov

        opts, precision = recipe.options, recipe.precision
        _check_source_options(opts)
        details: dict[str, Any] = {"main_file": MAIN_FILE, "device": opts["device"].upper()}
        feeds = bundle.source.example_feeds()
        with _quiet(), tempfile.TemporaryDirectory(prefix=".scratch-", dir=out_dir) as tmp:
            if precision == "int8" and opts["source"] == "qdq":
                assert calibration is not None  # build_artifact demands it for int8
                model, info = _from_qdq(bundle.onnx_path, recipe, calibration, _overflow_fix(opts))
                model, info["fc_as_conv"], _ = _fc_layout(model, opts, feeds)
            else:
                onnx_path, details["attention"] = _sdpa_ready(bundle.onnx_path, feeds, Path(tmp))
                with progress.stage("convert"):
                    model = _convert(onnx_path)
                details["attention"]["sdpa_in_ir"] = _count(model, "ScaledDotProductAttention")
                if precision == "int8":
                    assert calibration is not None  # build_artifact demands it for int8
                    float_model = model.clone()
                    model, info = _int8(model, onnx_path, recipe, calibration, feeds)
                    with progress.stage("int8 layout"):
                        model, info["fc_as_conv"], kernels = _fc_layout(model, opts, feeds)
                    if opts["measure"]:
                        with progress.stage("latency check"):
                            info["latency"] = _int8_vs_float(float_model, model, feeds, opts, kernels)
                elif precision == "int8-dynamic":
                    with progress.stage("compress weights"):
                        model, info = _compress_weights(model, opts["exclude"])
                else:
                    info = {"weights": precision}
            details.update(info)
            details["shapes"] = {p.get_any_name(): str(p.get_partial_shape()) for p in model.inputs}
            ov.save_model(model, str(out_dir / MAIN_FILE), compress_to_fp16=precision == "fp16")
        with progress.stage("runtime check"):
            details["runtime"] = _runtime_check(out_dir / MAIN_FILE, opts, precision)
        return details

    def load(self, artifact: Artifact, threads: int | None = None) -> OpenVinoRunner:
        options = artifact.manifest["recipe"]["options"]
        return OpenVinoRunner(artifact.main_file, artifact.inputs, artifact.outputs,
                              device=options.get("device", "cpu"), threads=threads,
                              inference=options.get("inference_precision", "f32"))


def _check_source_options(opts: Mapping[str, Any]) -> None:
    """NNCF's options and the QDQ pass's options each apply to one int8 source; given to the other, they are errors."""
    if "source" not in opts:
        return
    if opts["source"] == "qdq":
        nncf_only = [k for k in ("preset", "model_type", "ranges") if opts[k] != "auto"]
        if nncf_only:
            raise BadInput(f"Option(s) {', '.join(nncf_only)} tune NNCF's quantization, which source=qdq does not run.",
                           hint="Drop them, or use source=nncf or auto (the default).")
    elif any(opts[k] is not None for k in QDQ_ONLY):
        raise BadInput(f"Options {', '.join(QDQ_ONLY)} apply only to the shared QDQ pass.",
                       hint="Add --option source=qdq, or drop them (NNCF's calibration has its own).")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """NNCF logs every step at INFO; a build reports its own details, so keep warnings and errors only."""
    logger = logging.getLogger("nncf")
    level, handler_levels = logger.level, [h.level for h in logger.handlers]
    logger.setLevel(logging.WARNING)
    for h in logger.handlers:
        h.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            yield
    finally:
        logger.setLevel(level)
        for h, lv in zip(logger.handlers, handler_levels, strict=False):
            h.setLevel(lv)


def _convert(onnx_path: Path) -> Any:
    import openvino as ov

    try:
        return ov.convert_model(str(onnx_path))
    except Exception as exc:
        raise StepFailed(f"OpenVINO cannot convert {onnx_path}: {_first_line(exc)}",
                         hint="An op OpenVINO's ONNX frontend lacks is named above; try another --opset, or "
                              "replace the op in the model.") from exc


def _sdpa_ready(onnx_path: Path, feeds: Mapping[str, np.ndarray], tmp: Path) -> tuple[Path, dict[str, Any]]:
    """The exported graph with its attention in the form OpenVINO fuses to ScaledDotProductAttention (sdpa_graph),
    kept only where OpenVINO computes the same outputs from it; and the record of what was done."""
    import onnx

    from modelport.backends.sdpa_graph import normalize_attention
    from modelport.exporters.parity import output_error

    model = onnx.load(str(onnx_path))
    counts = normalize_attention(model)
    if not any(counts.values()):
        return onnx_path, {"normalized": False, "reason": "no exporter-style attention (K^T reshape chain, NaN guard "
                                                          "after Softmax) in the graph", **counts}
    path = tmp / "sdpa.onnx"
    onnx.save(model, str(path))
    worst = max(output_error(a, b).max_rel for a, b in zip(_run_once(onnx_path, feeds), _run_once(path, feeds),
                                                           strict=True))
    record = {"normalized": worst <= 1e-4, **counts, "max_rel_error_vs_export": float(f"{worst:.3g}")}
    if not record["normalized"]:
        record["reason"] = f"the rewritten graph differs by {worst:.3g} of the output's scale: the export is used"
        return onnx_path, record
    return path, record


def _run_once(path: Path, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    import openvino as ov

    compiled = _compile(ov.Core(), path, "CPU", "LATENCY", None, _convert(path))
    result = compiled.create_infer_request().infer({k: np.asarray(v) for k, v in feeds.items()})
    return [np.asarray(result[port]) for port in compiled.outputs]


def _activation_matmuls(model: Any) -> list[str]:
    """MatMuls of two computed tensors (attention scores and context), by name."""
    return [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() == "MatMul"
            and not any(_is_constant_path(_producer(op, i)) for i in range(2))]


def _count(model: Any, kind: str) -> int:
    return sum(op.get_type_name() == kind for op in model.get_ordered_ops())


def _int8_vs_float(float_model: Any, int8_model: Any, feeds: Mapping[str, np.ndarray], opts: Mapping[str, Any],
                   int8_kernels: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Both IRs compiled here and timed in interleaved rounds: whether INT8 pays on this machine. `int8_kernels`:
    the INT8 IR's kernels where the layout choice already profiled it."""
    import openvino as ov

    from modelport.timing import interleaved_rounds

    core = ov.Core()
    name, inference = _device_name(core, opts["device"]), opts["inference_precision"]
    bound = {k: np.asarray(v) for k, v in feeds.items()}
    requests = {k: _compile(core, "", name, "LATENCY", 2, m, inference).create_infer_request()
                for k, m in (("fp32", float_model), ("int8", int8_model))}
    ms = {k: min(v) for k, v in interleaved_rounds({k: r.infer for k, r in requests.items()}, bound, 5, 3.0).items()}
    speedup = ms["fp32"] / ms["int8"]
    kernels = {"fp32": compute_kernels(_profile(core, name, float_model, bound, inference)),
               "int8": int8_kernels or compute_kernels(_profile(core, name, int8_model, bound, inference))}
    out = {"fp32_ms": round(ms["fp32"], 4), "int8_ms": round(ms["int8"], 4), "speedup": round(speedup, 3),
           "threads": 2, "how": "best of 5 interleaved rounds of median run time, at build time", "kernels": kernels,
           "warning": None}
    if speedup < SLOWER_THAN_FP32:
        out["warning"] = (f"INT8 does not pay here: {ms['int8']:.3f} ms against {ms['fp32']:.3f} ms for the float IR "
                          f"(2 threads, the example inputs){_generic_int8_gemm(kernels)}; build fp32 for this model on "
                          "this machine.")
    return out


def _profile(core: Any, device: str, model: Any, feeds: Mapping[str, np.ndarray], inference: str) -> list[Any]:
    """The plugin's profiling info of the layers one inference of `feeds` executed."""
    request = _compile(core, "", device, "LATENCY", 1, model, inference, profile=True).create_infer_request()
    request.infer(dict(feeds))
    return [p for p in request.get_profiling_info() if p.status.name == "EXECUTED"]


def compute_kernels(profile: Sequence[Any], layers: Collection[str] | None = None) -> dict[str, dict[str, Any]]:
    """The kernel the plugin ran for each compute layer type in a `_profile`: which implementation (brgemm, MLAS,
    oneDNN's generic jit_gemm) and its share of the run, per `type/implementation` (of the runtime layers named in
    `layers`, where given).
    The IR says a layer is INT8; only the plugin's profile says whether the INT8 kernel it picked is a fast one."""
    total = sum(p.real_time.total_seconds() for p in profile) or 1.0
    found: dict[str, dict[str, Any]] = {}
    for p in profile:
        if (p.node_type in _RUNTIME_COMPUTE or p.node_type.startswith("FullyConnected")) and (
                layers is None or p.node_name in layers):
            entry = found.setdefault(f"{p.node_type}/{p.exec_type}", {"layers": 0, "share": 0.0})
            entry["layers"] += 1
            entry["share"] += p.real_time.total_seconds() / total
    return {k: {"layers": v["layers"], "share": round(v["share"], 3)} for k, v in sorted(found.items())}


def _fc_layout(model: Any, opts: Mapping[str, Any], feeds: Mapping[str, np.ndarray]
               ) -> tuple[Any, dict[str, Any], dict[str, dict[str, Any]] | None]:
    """The INT8 IR with its MatMuls as 1x1 convolutions where that gets a faster INT8 kernel, why, and the chosen
    IR's kernels where they were profiled: decided from the kernels the plugin really picks for both layouts (one
    profiled inference each), not from the CPU's name, so a CPU whose FullyConnected has a fast INT8 kernel keeps
    it."""
    import openvino as ov

    if opts["fc_as_conv"] == "off":
        return model, {"chosen": "fully_connected", "reason": "fc_as_conv=off"}, None
    if opts["device"] != "cpu" and opts["fc_as_conv"] == "auto":
        return model, {"chosen": "fully_connected", "reason": f"auto: the kernels compared are the CPU plugin's, "
                                                             f"not device={opts['device']}'s"}, None
    convs = model.clone()
    rewritten = rewrite_int8_matmuls(convs)
    if not rewritten:
        return model, {"chosen": "fully_connected", "reason": "no INT8 MatMul with constant int8 weights"}, None
    if opts["fc_as_conv"] == "on":
        return convs, {"chosen": "convolution", "layers": len(rewritten), "reason": "fc_as_conv=on"}, None
    core = ov.Core()
    bound = {k: np.asarray(v) for k, v in feeds.items()}
    profiles = {"fully_connected": _profile(core, "CPU", model, bound, opts["inference_precision"]),
                "convolution": _profile(core, "CPU", convs, bound, opts["inference_precision"])}
    kernels = {"fully_connected": compute_kernels(profiles["fully_connected"]),
               "convolution": compute_kernels(profiles["convolution"], {n + CONV_SUFFIX for n in rewritten})}
    slow_fc = [k for k in kernels["fully_connected"] if k.startswith("FullyConnected") and _generic(k)]
    fast_conv = [k for k in kernels["convolution"] if k.lower().endswith(("_i8", "_u8")) and not _generic(k)]
    out = {"layers": len(rewritten), "kernels": kernels}
    if slow_fc and fast_conv:
        reason = (f"auto: INT8 FullyConnected runs on the generic GEMM here ({', '.join(slow_fc)}), 1x1 convolutions "
                  f"on {', '.join(fast_conv)}")
        return convs, {"chosen": "convolution", **out, "reason": reason}, compute_kernels(profiles["convolution"])
    reason = "auto: " + ("the convolutions would not get a dedicated INT8 kernel either" if slow_fc
                         else "INT8 FullyConnected has a dedicated kernel here")
    return model, {"chosen": "fully_connected", **out, "reason": reason}, kernels["fully_connected"]


def _generic(kernel: str) -> bool:
    """Whether a `type/implementation` key is oneDNN's generic INT8 GEMM."""
    return "jit_gemm" in kernel.split("/")[1].lower() and kernel.lower().endswith(("_i8", "_u8"))


def _generic_int8_gemm(kernels: Mapping[str, Mapping[str, Any]]) -> str:
    """Why INT8 is slow, where the profile shows it: INT8 layers on oneDNN's generic GEMM (seen on AVX2 without
    VNNI, where FP32 layers get brgemm or MLAS kernels and run about as fast)."""
    generic = {k: v for k, v in kernels["int8"].items() if _generic(k)}
    if not generic:
        return ""
    layers = sum(v["layers"] for v in generic.values())
    share = sum(v["share"] for v in generic.values())
    fp32 = ", ".join(sorted({k.split("/")[1] for k in kernels["fp32"]}))
    return (f": OpenVINO runs {layers} INT8 layers ({share:.0%} of the run) on its generic INT8 GEMM "
            f"({', '.join(sorted({k.split('/')[1] for k in generic}))}) on this CPU, no faster than the float IR's "
            f"{fp32} kernels")


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0][:400] if lines else type(exc).__name__


# ----- graph reading: attention, quantized layers, names for `exclude` -----

def _producer(node: Any, index: int = 0) -> Any:
    return node.input(index).get_source_output().get_node()


def _consumers(node: Any) -> list[Any]:
    return [t.get_node() for out in node.outputs() for t in out.get_target_inputs()]


def _is_constant_path(node: Any, depth: int = 8) -> bool:
    """Whether a node's value is fixed at load: Constants seen through converts, reshapes and dequantization."""
    if node.get_type_name() == "Constant":
        return True
    if depth == 0 or node.get_type_name() not in _SHAPE_OPS + _DEQUANT_OPS:
        return False
    return all(_is_constant_path(_producer(node, i), depth - 1) for i in range(node.get_input_size()))


def attention_blocks(model: Any) -> list[str]:
    """Softmax nodes between two activation MatMuls (scores and context): the signature of attention."""
    found = []
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind == "ScaledDotProductAttention" or (
                kind == "Softmax" and _reaches_matmul(op, upward=True) and _reaches_matmul(op, upward=False)):
            found.append(op.get_friendly_name())
    return found


def _reaches_matmul(start: Any, upward: bool, depth: int = 4) -> bool:
    frontier = [start]
    for _ in range(depth):
        nxt = []
        for node in frontier:
            for n in ([_producer(node, i) for i in range(node.get_input_size())] if upward else _consumers(node)):
                if n.get_type_name() == "MatMul" and not any(
                        _is_constant_path(_producer(n, i)) for i in range(2)):
                    return True
                if not _is_constant_path(n):
                    nxt.append(n)
        frontier = nxt
    return False


def _int8_origin(node: Any, depth: int = 8) -> bool:
    """Whether a compute op's input is quantized: a FakeQuantize upstream through layout-only ops, or an
    integer weight constant under its dequantization (Convert, Subtract, Multiply)."""
    arithmetic = False
    for _ in range(depth):
        kind = node.get_type_name()
        if kind == "FakeQuantize":
            return not arithmetic
        if kind == "Constant":
            return node.get_output_element_type(0).get_type_name() in _INT_TYPES
        if kind in _DEQUANT_OPS:
            arithmetic = True
            # the dequantized tensor, not the scale or zero point beside it
            ins = [_producer(node, i) for i in range(node.get_input_size())]
            node = next((n for n in ins if n.get_type_name() != "Constant"), ins[0])
            continue
        if kind not in _SHAPE_OPS:
            return False
        node = _producer(node)
    return False


@dataclass(frozen=True)
class LayerCensus:
    """The IR's compute ops (convolutions, MatMuls) by what quantization reached them."""

    int8: list[str]  # int8 weights and quantized activations: an INT8 kernel
    weights_only: list[str]  # int8 weights, float activations (weight compression)
    floating: list[str]

    @classmethod
    def of(cls, model: Any) -> LayerCensus:
        census = cls([], [], [])
        for op in model.get_ordered_ops():
            if op.get_type_name() not in _COMPUTE:
                continue
            ins = [_producer(op, i) for i in range(op.get_input_size())]
            weights = [n for n in ins if _is_constant_path(n)]
            acts = [n for n in ins if not _is_constant_path(n)]
            int8_weights = bool(weights) and all(_int8_origin(n) for n in weights)
            int8_acts = all(_int8_origin(n) for n in acts)
            if int8_acts and (int8_weights or not weights):
                census.int8.append(op.get_friendly_name())
            elif int8_weights:
                census.weights_only.append(op.get_friendly_name())
            else:
                census.floating.append(op.get_friendly_name())
        return census

    def to_json(self, model: Any) -> dict[str, Any]:
        fq = sum(op.get_type_name() == "FakeQuantize" for op in model.get_ordered_ops())
        return {"layers": len(self.int8) + len(self.weights_only) + len(self.floating),
                "quantized_layers": len(self.int8), "int8_weight_only_layers": len(self.weights_only),
                "float_layers": self.floating[:50], "fake_quantize_nodes": fq}


def _resolve_exclude(model: Any, items: Sequence[str]) -> tuple[Any, dict[str, list[str]]]:
    """An nncf.IgnoredScope for `exclude` items, and what each item matched (for the manifest).

    An item is an op type (OpenVINO's or ONNX's), a node name (the ONNX node a layer came from, or the IR
    name), or a torch module path whose `.weight` feeds the layer. Unmatched items are errors.
    """
    import nncf

    ops = [op for op in model.get_ordered_ops() if op.get_type_name() not in ("Constant", "Parameter", "Result")]
    kinds = {op.get_type_name() for op in ops}
    names = [op.get_friendly_name() for op in ops]
    modules: dict[str, list[str]] = {}  # torch module path -> the layers its weight feeds
    for const in model.get_ordered_ops():
        if const.get_type_name() == "Constant" and const.get_friendly_name().endswith(".weight"):
            layers = [n.get_friendly_name() for n in _layers_fed_by(const)]
            if layers:
                modules[const.get_friendly_name().removesuffix(".weight")] = layers
    ignored_names: set[str] = set()
    ignored_types: set[str] = set()
    matched: dict[str, list[str]] = {}
    for item in items:
        types = [item] if item in kinds else [t for t in _ONNX_TYPES.get(item, ()) if t in kinds]
        if types:
            ignored_types.update(types)
            matched[item] = [f"type {t}" for t in types]
            continue
        hits = [n for n in names if n == item or n.startswith(item + "/")] or modules.get(item, [])
        if not hits:
            known = sorted(set(names) | kinds | set(modules) | {n.split("/")[0] for n in names})
            close = difflib.get_close_matches(item, known, n=5)
            layers = [f"{layer.split('/')[0]} ({module})" for module, found in modules.items() for layer in found]
            raise BadInput(f"exclude={item!r} matches no node, torch module or op type of the model.",
                           hint=(f"Close names: {', '.join(close)}. " if close else "") +
                           f"Layers with weights here, as ONNX node (torch module): {', '.join(layers[:12])}"
                           f"{', ...' if len(layers) > 12 else ''}; or give op types such as Conv or MatMul.")
        ignored_names.update(hits)
        matched[item] = hits
    scope = nncf.IgnoredScope(names=sorted(ignored_names), types=sorted(ignored_types))
    return scope, matched


def _layers_fed_by(constant: Any, depth: int = 6) -> list[Any]:
    frontier, layers = [constant], []
    for _ in range(depth):
        nxt = []
        for node in frontier:
            for n in _consumers(node):
                (layers if n.get_type_name() in _COMPUTE else nxt).append(n)
        frontier = [n for n in nxt if n.get_type_name() in _SHAPE_OPS + _DEQUANT_OPS + ("FakeQuantize",)]
    return layers


# ----- the precisions -----

class _CalibrationFeeds:
    """The CalibrationSet's batches as a re-iterable source for nncf.Dataset (NNCF reads it more than once)."""

    def __init__(self, calibration: CalibrationSet) -> None:
        self.calibration = calibration
        static = {s.static_batch for s in calibration.specs if s.static_batch is not None}
        self.batch = static.pop() if len(static) == 1 else 1

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self.calibration.batches(self.batch)

    def __len__(self) -> int:
        return len(self.calibration) // self.batch


_NNCF_OVERFLOW = {"enable": "enable", "first_layer": "first_layer_only", "disable": "disable"}
# Options that fix NNCF's settings: given one, the user has chosen, and NNCF's defaults are not built beside.
_NNCF_SETTINGS = ("preset", "ranges", "overflow_fix")


def _overflow_fix(opts: Mapping[str, Any]) -> tuple[str, str]:
    """The overflow fix modelport's settings use, and why: 7-bit weights everywhere where this CPU's int8 kernels
    saturate (on AVX2 the digits encoder kept 0.983 cosine with NNCF's first-layer default, 0.996 with it)."""
    if opts["overflow_fix"] != "auto":
        return opts["overflow_fix"], "set by the overflow_fix option"
    if opts["device"] != "cpu":
        return "first_layer", f"NNCF's default: the build machine's CPU says nothing of device={opts['device']}"
    saturates, why = int8_saturates()
    return ("enable", f"auto: {why}") if saturates else ("first_layer", f"auto (NNCF's default): {why}")


def _int8(model: Any, onnx_path: Path, recipe: Recipe, calibration: CalibrationSet,
          feeds: Mapping[str, np.ndarray]) -> tuple[Any, dict[str, Any]]:
    """NNCF's INT8 of the IR; with source=auto, the closest to FP32 of it, NNCF at its own defaults and, on a graph
    with attention, the QDQ model: each keeps other things wide (histogram ranges and 7-bit weights; NNCF's
    defaults; LayerNorm and Softmax inputs in float), and which costs least fidelity depends on the model."""
    opts = recipe.options
    overflow = _overflow_fix(opts)
    with progress.stage("quantize (NNCF)"):
        quantized, info = _quantize(model.clone(), recipe, calibration, overflow)
    if opts["source"] == "nncf":
        return quantized, {**info, "route": {"chosen": "nncf", "reason": "source=nncf"}}
    if opts["exclude"]:
        return quantized, {**info, "route": {"chosen": "nncf", "reason": "auto: exclude given, which steers NNCF's "
                                                                         "ignored scope"}}
    built = {"nncf": (quantized, info)}
    if all(opts[k] == "auto" for k in _NNCF_SETTINGS):
        with progress.stage("quantize (NNCF defaults)"):
            built["nncf_defaults"] = _quantize(model.clone(), recipe, calibration, overflow, defaults=True)
    if info["model_type"] == "transformer":
        with progress.stage("quantize (shared QDQ pass)"):
            built["qdq"] = _from_qdq(onnx_path, recipe, calibration, overflow, attention_in_float=True)
    if len(built) == 1:
        return quantized, {**info, "route": {"chosen": "nncf", "reason": "auto: NNCF's settings given and no "
                                                                         "attention for the QDQ model"}}
    preferred = "nncf_defaults" if "nncf_defaults" in built else "nncf"
    guard = _route_guard(model, {k: m for k, (m, _) in built.items()}, feeds, opts, preferred)
    chosen, chosen_info = built[guard["chosen"]]
    return chosen, {**chosen_info, "route": guard}


def _route_guard(float_model: Any, candidates: Mapping[str, Any], feeds: Mapping[str, np.ndarray],
                 opts: Mapping[str, Any], preferred: str) -> dict[str, Any]:
    """Which INT8 model to keep: output SQNR against the float IR on probe inputs, compiled for the target device."""
    import openvino as ov

    core, device = ov.Core(), opts["device"]
    try:
        name = _device_name(core, device)
    except Unavailable as exc:
        return {"chosen": preferred, "reason": f"auto: no {device.upper()} here to compare on ({exc.message})"}
    probes = probe_feeds(feeds)

    def outputs(model: Any) -> np.ndarray:
        request = _compile(core, "", name, "LATENCY", 1, model, opts["inference_precision"]).create_infer_request()
        return np.concatenate([np.asarray(v, np.float64).ravel() for p in probes
                               for v in request.infer(p).values() if np.asarray(v).dtype.kind == "f"])

    chosen, scores = closest(outputs(float_model), {k: outputs(m) for k, m in candidates.items()}, preferred)
    return {"chosen": chosen, "sqnr_db": {k: finite_or_none(v) for k, v in scores.items()}, "probes": len(probes),
            "reason": f"auto: output SQNR against the float IR on {name}, on the example input and {len(probes) - 1} "
                      f"copies with 10% noise; another replaces {preferred} only when {GUARD_MARGIN_DB} dB closer"}


def _quantize(model: Any, recipe: Recipe, calibration: CalibrationSet, overflow: tuple[str, str], *,
              defaults: bool = False) -> tuple[Any, dict[str, Any]]:
    """`nncf.quantize` with modelport's settings, or with `defaults` as a user calls it: NNCF's own preset, ranges
    and overflow fix for the model type, attention quantized; the same samples, device and exclude either way."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    opts = recipe.options
    attention = attention_blocks(model)
    if opts["model_type"] == "auto":
        transformer = bool(attention)
        why = (f"auto: {len(attention)} attention block(s) (MatMul -> Softmax -> MatMul), e.g. {attention[0]}"
               if attention else "auto: no attention (MatMul -> Softmax -> MatMul) in the graph")
    else:
        transformer = opts["model_type"] == "transformer"
        why = "set by the model_type option"
    preset = opts["preset"] if opts["preset"] != "auto" else ("mixed" if transformer else "performance")
    ranges = opts["ranges"] if opts["ranges"] != "auto" else ("mean_minmax" if transformer else "histogram")
    if defaults:
        ranges, overflow = "mean_minmax", ("first_layer", "NNCF's default")
    estimator = {"activations_range_estimator_params": RangeEstimatorParametersSet.HISTOGRAM} if ranges == "histogram" \
        else {}
    advanced = AdvancedQuantizationParameters(overflow_fix=OverflowFix(_NNCF_OVERFLOW[overflow[0]]), **estimator)
    scope, excluded = _resolve_exclude(model, opts["exclude"])
    sdpa_note = None
    sdpa = _count(model, "ScaledDotProductAttention")
    scores = _activation_matmuls(model)  # attention left as MatMul/Softmax/MatMul (with a dynamic sequence axis)
    if transformer and (sdpa or scores) and not defaults:
        # FakeQuantize on Q/K/V splits the CPU plugin's fused attention kernel back into MatMul/Softmax/MatMul
        scope = nncf.IgnoredScope(names=[*scope.names, *scores], validate=False,
                                  types=[*scope.types, *(["ScaledDotProductAttention"] if sdpa else [])])
        sdpa_note = (f"attention kept in float ({sdpa} ScaledDotProductAttention, {len(scores)} activation MatMuls): "
                     "the CPU plugin runs it as one fused kernel, which FakeQuantize on its inputs would split into "
                     "separate MatMul/Softmax/MatMul")
    feeds = _CalibrationFeeds(calibration)
    try:
        quantized = nncf.quantize(
            model, nncf.Dataset(feeds), preset=nncf.QuantizationPreset(preset),
            target_device=nncf.TargetDevice(opts["device"].upper()), subset_size=len(feeds),
            fast_bias_correction=True, model_type=nncf.ModelType.TRANSFORMER if transformer else None,
            ignored_scope=scope, advanced_parameters=advanced)
    except Exception as exc:
        raise StepFailed(f"NNCF could not quantize the model: {_first_line(exc)}",
                         hint="Keep the failing layers in float with --option exclude=NAME,..., or try "
                              "--option source=qdq.") from exc
    return quantized, {
        "quantizer": f"nncf.quantize {nncf.__version__}" + (" at NNCF's defaults" if defaults else ""),
        "model_type": "transformer" if transformer else "generic", "model_type_reason": why,
        "preset": preset, "activation_ranges": ranges, "fast_bias_correction": True, "calibration_batches": len(feeds),
        "overflow_fix": {"value": overflow[0], "reason": overflow[1]},
        "excluded": excluded, "attention_in_float": sdpa_note, **LayerCensus.of(quantized).to_json(quantized),
    }


def _from_qdq(onnx_path: Path, recipe: Recipe, calibration: CalibrationSet, overflow: tuple[str, str], *,
             attention_in_float: bool = False) -> tuple[Any, dict[str, Any]]:
    """Convert the shared QDQ model (its Q/DQ pairs become FakeQuantize): one calibration for every runtime. With
    `attention_in_float`, MatMuls of two activations stay float, as NNCF's route keeps them for the fused kernel."""
    import onnx

    opts = recipe.options
    given = {k: opts[k] for k in QDQ_ONLY if opts.get(k) is not None}
    scores = []
    if attention_in_float:
        graph = onnx.load(str(onnx_path), load_external_data=False).graph
        weights = {i.name for i in graph.initializer}
        scores = [n.name for n in graph.node if n.op_type == "MatMul" and not weights & set(n.input)]
    settings = QdqSettings(per_channel=True, exclude=(*opts["exclude"], *scores),
                           reduce_range=overflow[0] == "enable", **given)
    with tempfile.TemporaryDirectory(prefix="modelport-qdq-") as tmp:
        result = write_qdq_model(onnx_path, calibration, Path(tmp) / "model.qdq.onnx", settings)
        model = _convert(result.path)
    qdq = {k: v for k, v in result.to_json().items() if k != "path"}
    return model, {"quantizer": "shared QDQ model (modelport.quantize), converted by OpenVINO", "qdq": qdq,
                   "overflow_fix": {"value": overflow[0], "reason": overflow[1],
                                    "as": f"reduce_range={str(settings.reduce_range).lower()}"},
                   "attention_in_float": f"attention kept in float ({len(scores)} activation MatMuls), as on NNCF's "
                                         "route" if attention_in_float else None,
                   **LayerCensus.of(model).to_json(model)}


def _compress_weights(model: Any, exclude: Sequence[str]) -> tuple[Any, dict[str, Any]]:
    import nncf

    scope, excluded = _resolve_exclude(model, exclude)
    try:
        compressed = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM, ignored_scope=scope)
    except Exception as exc:
        raise StepFailed(f"NNCF could not compress the weights: {_first_line(exc)}") from exc
    return compressed, {"quantizer": f"nncf.compress_weights {nncf.__version__} (int8_asym, per channel)",
                        "weights": "int8 (activations stay float)", "excluded": excluded,
                        **LayerCensus.of(compressed).to_json(compressed)}


# ----- running -----

def runtime_ops(compiled: Any) -> list[RuntimeOp]:
    """The compiled model's ops with the plugin's runtime info (layer type, precision, fused IR nodes)."""
    ops = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        get = {k: info[k].astype(str) for k in ("layerType", "runtimePrecision", "originalLayersNames") if k in info}
        original = tuple(n for n in get.get("originalLayersNames", "").split(",") if n)
        ops.append(RuntimeOp(op.get_friendly_name(), get.get("layerType", ""), get.get("runtimePrecision", ""),
                             original))
    return ops


def _device_name(core: Any, device: str) -> str:
    found = [d for d in core.available_devices if d.split(".")[0] == device.upper()]
    if not found:
        raise Unavailable(f"OpenVINO reports no {device.upper()} device here (it sees: "
                          f"{', '.join(core.available_devices) or 'none'}).",
                          hint=f"Build with --option device=cpu, or run on a machine with an Intel {device.upper()} "
                               "and its driver installed.")
    return device.upper()


@functools.cache
def native_bf16(device: str = "cpu") -> bool:
    """Whether OpenVINO computes in BF16 natively on this machine's `device` (AVX512_BF16 or AMX on x86 CPUs): only
    there does inference_precision=bf16 buy speed; elsewhere the plugin computes f32 whatever it is asked."""
    import openvino as ov

    core = ov.Core()
    try:
        return "BF16" in core.get_property(_device_name(core, device), "OPTIMIZATION_CAPABILITIES")
    except Unavailable:
        return False


def _compile(core: Any, path: Path | str, device: str, hint: str, threads: int | None, model: Any = None,
             inference: str = "f32", *, profile: bool = False) -> Any:
    """Compile the IR at `path` (or `model`, an edited copy of it) for `device`, its float layers computed in
    `inference` precision: never the plugin's own choice, which is BF16 on CPUs that have it (and F16 on GPUs), so
    that an FP32 artifact computes what its fidelity figures say wherever it runs."""
    config: dict[str, Any] = {"PERFORMANCE_HINT": hint}
    if device in ("CPU", "GPU"):
        config["INFERENCE_PRECISION_HINT"] = inference
    if threads and device == "CPU":
        config["INFERENCE_NUM_THREADS"] = int(threads)
    if profile:
        config["PERF_COUNT"] = True
    try:
        return core.compile_model(str(path) if model is None else model, device, config)
    except Exception as exc:
        raise StepFailed(f"OpenVINO could not compile {path} for {device}: {_first_line(exc)}") from exc


def _property(compiled: Any, key: str) -> str:
    """A compiled model's property as text ('f32', not "<Type: 'float32'>")."""
    try:
        value = compiled.get_property(key)
    except Exception:
        return "n/a"
    return value.get_type_name() if hasattr(value, "get_type_name") else str(value)


def _runtime_check(xml: Path, opts: Mapping[str, Any], precision: str) -> dict[str, Any]:
    """Compile the IR once here: proves it loads, and records the precision the plugin will really run."""
    import openvino as ov

    core = ov.Core()
    try:
        name = _device_name(core, opts["device"])
    except Unavailable as exc:
        return {"checked": False, "reason": exc.message}
    compiled = _compile(core, xml, name, "LATENCY", None, inference=opts["inference_precision"])
    ops = runtime_ops(compiled)
    compute = [op for op in ops if op.type in _RUNTIME_COMPUTE]
    int8 = [op for op in compute if op.precision in _INT_TYPES]
    inference = _property(compiled, "INFERENCE_PRECISION_HINT")
    out = {"checked": True, "device": core.get_property(name, "FULL_DEVICE_NAME"), "inference_precision": inference,
           "int8_kernels": len(int8), "compute_kernels": len(compute),
           "int8_by_type": dict(Counter(op.type for op in int8)),
           "fused_attention_kernels": sum(op.type == "ScaledAttn" or (op.type == "Subgraph" and any(
               "softmax" in n.lower() or "scaled_dot_product" in n.lower() for n in op.original)) for op in ops),
           "unfused_softmax": sum(op.type == "Softmax" for op in ops)}
    if precision == "fp16" and inference != "f16":
        out["note"] = (f"weights are FP16 in the IR; this {name} has no native FP16 compute, so OpenVINO "
                       f"decompresses them at load and computes in {inference.upper()}")
    if precision == "int8-dynamic":
        out["dynamic_quantization_group_size"] = _property(compiled, "DYNAMIC_QUANTIZATION_GROUP_SIZE")
        out["note"] = (f"{len(int8)} of {len(compute)} layers keep int8 weights in the compiled model; the "
                       f"others' weights are decompressed to {inference.upper()} at load (a smaller file; those "
                       "layers compute as in FP32)")
    return out


class OpenVinoRunner(Runner):
    """A compiled IR: single-stream latency by default; `run_many` uses throughput streams."""

    name = "openvino"

    def __init__(self, xml: Path, inputs: list[TensorSpec], outputs: list[TensorSpec], *, device: str = "cpu",
                 threads: int | None = None, inference: str = "f32") -> None:
        import openvino as ov

        self.inputs, self.outputs = inputs, outputs
        self.threads, self.inference = threads, inference
        self._xml = xml
        self._core = ov.Core()
        self.device = _device_name(self._core, device)
        self.compiled = _compile(self._core, xml, self.device, "LATENCY", threads, inference=inference)
        self._request = self.compiled.create_infer_request()
        self._ports = self._output_ports(self.compiled)
        self._throughput: Any = None
        self._exposing: dict[frozenset[str], tuple[Any, dict[str, int]]] = {}  # compiled once per set of tensors

    def _output_ports(self, compiled: Any) -> dict[str, int]:
        index = {name: i for i, port in enumerate(compiled.outputs) for name in port.get_names()}
        missing = [s.name for s in self.outputs if s.name not in index]
        if missing:
            raise StepFailed(f"The IR {self._xml} has no output(s) {missing}; it has {sorted(index)}.",
                             hint="Rebuild the artifact with --force.")
        return {s.name: index[s.name] for s in self.outputs}

    @property
    def details(self) -> dict[str, Any]:
        """What the plugin chose: the inference precision, streams and threads it runs with."""
        props = ("INFERENCE_PRECISION_HINT", "NUM_STREAMS", "INFERENCE_NUM_THREADS", "PERFORMANCE_HINT")
        return {"device": self.device, **{p.lower(): _property(self.compiled, p) for p in props}}

    def runtime_ops(self) -> list[RuntimeOp]:
        return runtime_ops(self.compiled)

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # infer() copies the outputs out of the request (share_outputs=False), so they stay valid after the next run
        result = self._request.infer(feeds, share_inputs=True)
        return {name: result[i] for name, i in self._ports.items()}

    def run_many(self, feeds: Sequence[Mapping[str, Any]]) -> list[dict[str, np.ndarray]]:
        """Run many independent inputs concurrently, results in order: the throughput mode.

        The first call compiles the IR again with the THROUGHPUT hint (several streams on the same thread
        count) and makes the plugin's optimal number of infer requests; jobs go round them in order, each
        request collected just before it is reused. No Python callbacks run on OpenVINO's threads (an
        AsyncInferQueue's do, and can deadlock against the GIL when the queue is freed).
        """
        if self._throughput is None:
            compiled = _compile(self._core, self._xml, self.device, "THROUGHPUT", self.threads,
                                inference=self.inference)
            count = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
            self._throughput = (compiled, [compiled.create_infer_request() for _ in range(count)],
                                self._output_ports(compiled))
        _, requests, ports = self._throughput
        results: list[dict[str, np.ndarray]] = [{} for _ in feeds]
        pending: dict[int, int] = {}  # request slot -> the job it runs

        def collect(slot: int) -> None:
            requests[slot].wait()
            results[pending.pop(slot)] = {n: requests[slot].get_output_tensor(i).data.copy() for n, i in ports.items()}

        for job, f in enumerate(feeds):
            slot = job % len(requests)
            if slot in pending:
                collect(slot)
            requests[slot].start_async(self.checked(f))
            pending[slot] = job
        for slot in list(pending):
            collect(slot)
        return results

    @property
    def throughput_requests(self) -> int | None:
        """The number of parallel requests `run_many` uses (None before its first call)."""
        return len(self._throughput[1]) if self._throughput is not None else None

    def tensor_names(self) -> list[str]:
        return list(self._tensors)

    def intermediates(self, feeds: Mapping[str, Any], names: Sequence[str]) -> dict[str, np.ndarray]:
        """Read as extra results (`Model.add_outputs`) of the quantized IR, compiled once per set of names.

        A tensor NNCF quantized is read after its FakeQuantize: the value its consumers take. Extra results
        keep the plugin from fusing past those tensors, so the rest of the graph compiles as it ships.
        """
        checked = self.checked(feeds)
        unknown = [n for n in names if n not in self._tensors]
        if unknown:
            raise BadInput(f"The IR {self._xml} has no tensor(s) {', '.join(unknown[:5])}.",
                           hint="Ask for names that tensor_names() lists.")
        wanted = frozenset(names)
        if wanted not in self._exposing:
            model = self._core.read_model(str(self._xml))
            ops = {op.get_friendly_name(): op for op in model.get_ordered_ops()}
            targets = sorted({self._tensors[n] for n in wanted})
            added = model.add_outputs([ops[op].output(index) for op, index in targets])
            compiled = _compile(self._core, self._xml, self.device, "LATENCY", self.threads, model, self.inference)
            index = {name: i for i, port in enumerate(compiled.outputs) for name in port.get_names()}
            where = dict(zip(targets, (index[port.get_any_name()] for port in added), strict=True))
            self._exposing[wanted] = compiled.create_infer_request(), {n: where[self._tensors[n]] for n in wanted}
        request, ports = self._exposing[wanted]
        result = request.infer(checked, share_inputs=True)
        return {n: np.asarray(result[ports[n]], dtype=np.float32) if result[ports[n]].dtype.kind == "f"
                else result[ports[n]] for n in names}

    @functools.cached_property
    def _tensors(self) -> dict[str, tuple[str, int]]:
        """Each named activation of the IR (the ONNX tensor names its ports keep) and the op output holding the
        value its consumers read: the FakeQuantize after it where NNCF quantized it, else the op's own."""
        found: dict[str, tuple[str, int]] = {}
        for op in self._core.read_model(str(self._xml)).get_ordered_ops():
            if op.get_type_name() in ("Constant", "Result", "FakeQuantize") or _is_constant_path(op):
                continue
            for port in op.outputs():
                users = [t.get_node() for t in port.get_target_inputs()]
                quantized = len(users) == 1 and users[0].get_type_name() == "FakeQuantize"
                read = (users[0].get_friendly_name(), 0) if quantized else (op.get_friendly_name(), port.get_index())
                for name in sorted(port.get_names()):
                    found.setdefault(name, read)
        return found

    def _release(self) -> None:
        self._request = self.compiled = self._throughput = None
        self._exposing.clear()
