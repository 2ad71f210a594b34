"""TFLite (LiteRT): .tflite files built from the torch model by litert-torch, quantized by ai-edge-quantizer.

No TensorFlow anywhere: litert-torch converts the module (see exporters/litert.py), ai-edge-quantizer
writes the FP16, INT8 and dynamic-range INT8 variants, and the LiteRT interpreter runs them with
XNNPACK. INT8 is full-integer on CNNs (asked for, ops=mixed runs the FULLY_CONNECTED layers dynamically quantized
with float outputs) but for single-channel depthwise convs where keeping them FP32 measures faster; on
transformer-like graphs only the weight matmuls go int8 (`_int8_plan` says why), as the ONNX Runtime backend does.
Activation ranges are the min and max over every calibration sample (`ranges`, RANGES_WHY). Dynamic INT8 leaves
convs FP32: XNNPACK has no dynamically-quantized conv. With `measure` (the default) the build times the result
against the FP32 .tflite and warns in the manifest where INT8 does not pay. The runner takes what the user feeds
PyTorch (NCHW, float, any batch the model allows) and does the layout transposes, int8 quantization of inputs and
dequantization of outputs itself.
"""

from __future__ import annotations

import collections
import functools
import os
import platform
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelport import progress
from modelport.backends.base import SLOWER_THAN_FP32, Backend, Recipe, Runner
from modelport.backends.tflite_exclude import find_float_ops, fused_activations, tensor_producers
from modelport.errors import BadInput, StepFailed, Unavailable
from modelport.exporters.litert_choices import DYNAMIC_MODES, LAYOUTS
from modelport.options import Option, parse_bool, parse_list
from modelport.quiet import quiet_native
from modelport.specs import TensorSpec

if TYPE_CHECKING:
    from modelport.artifact import Artifact
    from modelport.bundle import ModelBundle
    from modelport.calibration import CalibrationSet
    from modelport.exporters.litert import LiteRTExport

MAIN_FILE = "model.tflite"


def _lower(value: Any) -> str:
    return str(value).strip().lower()


class _SignatureFeed:
    """The calibration set as ai-edge-quantizer reads it: dicts keyed by signature input name.

    Re-iterable (the quantizer walks it once to size its progress bar, then calibrates); `passes` holds
    the sample count of every walk, so the build can prove every sample reached the calibrator.
    """

    def __init__(self, calibration: CalibrationSet, export: LiteRTExport) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.calibration = calibration
        self.export = export
        self.passes: list[int] = []
        runner = Interpreter(model_path=str(export.path)).get_signature_runner(export.signature_key)
        details = runner.get_input_details()
        self.dtypes = {name: np.dtype(details[sig]["dtype"]) for name, sig in export.inputs.items()}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        from modelport.exporters.litert import to_model_layout

        count = 0
        for batch in self.calibration.batches():
            count += len(next(iter(batch.values())))
            progress.count(count, len(self.calibration))
            yield {self.export.inputs[name]: to_model_layout(array, self.export.layouts.get(name))
                   .astype(self.dtypes[name], copy=False) for name, array in batch.items()}
        self.passes.append(count)


def _fp16(content: bytes) -> bytes:
    from ai_edge_quantizer import algorithm_manager, qtyping, quantizer

    q = quantizer.Quantizer(bytearray(content))
    q.add_weight_only_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, num_bits=16,
                             algorithm_key=algorithm_manager.AlgorithmName.FLOAT_CASTING)
    return bytes(q.quantize(enable_progress_report=False).quantized_model)


# XNNPACK runs FULLY_CONNECTED and BATCH_MATMUL with int8 weights and float inputs as dynamically quantized
# kernels, but not such convs: they leave the delegate for TFLite's hybrid kernels and split it in two (CREPE tiny
# int8-dynamic, 1 thread: 10.4 ms against 1.9 ms for FP32; the digits CNN at 2 threads: 2.2 ms against 0.02 ms).
# Their weights stay FP32, so the convs stay in XNNPACK's FP32 kernels.
MATMUL_OPS = ("FULLY_CONNECTED", "BATCH_MATMUL")
FLOAT_CONVS = ("CONV_2D", "DEPTHWISE_CONV_2D")


def _int8_dynamic(content: bytes) -> bytes:
    """ai-edge-quantizer's dynamic recipe (int8 weights, activations quantized at run time), convs kept FP32."""
    from ai_edge_quantizer import algorithm_manager, quantizer, recipe

    q = quantizer.Quantizer(bytearray(content), recipe.dynamic_wi8_afp32())
    for op in FLOAT_CONVS:
        q.update_quantization_recipe(".*", op, algorithm_key=algorithm_manager.AlgorithmName.NO_QUANTIZE)
    return bytes(q.quantize(enable_progress_report=False).quantized_model)


INT8_OP_SETS = ("auto", "mixed", "all", "matmul")
# Measured on ViT-B/16 (2 threads, 16 held-out crops vs PyTorch FP32): ops=all gave ~9 dB output SQNR and ran
# slower than FP32; static int8 activations on the matmuls alone ~26 dB; run-time (per-row) ones ~30 dB, fastest.
# ops=mixed, measured against ops=all (128 held-out samples vs PyTorch FP32, 2 threads, ranges=minmax): CREPE tiny
# 35.9 dB against 34.2 (its classifier's 8-bit logits are the loss: one range spanning far below zero, where its
# sigmoid is flat), the digits CNN 44.2 against 41.0, both at full-integer's speed or faster (0.99x, 0.85x); but
# tests/outlier.py's planted outlier 1000x fell from 27.7 to 16.3 dB (100x: 37.3 to 36.9): the run-time quantization
# of a FC input far from zero is coarser than its calibrated range. So it is asked for, not chosen by auto.
_REASONS = {
    "transformer": "transformer-like graph ({markers}): only the matmuls with constant weights ({ops}) run in int8, "
                   "their float inputs quantized per row at run time; softmax, normalization, GELU, the attention "
                   "matmuls and the element-wise ops stay FP32. With 8-bit activations on those ops (ops=all) "
                   "XNNPACK leaves them to slow reference kernels, and one per-tensor 8-bit range cannot hold "
                   "attention logits or normalization outputs: the model gets both slower and far less accurate",
    "cnn": "no attention or layer norm: every op runs in int8 (full-integer) but those under kept_float, activations "
           "8-bit between layers with ranges from the calibration set",
    "io": "integer I/O (io=int8) needs a full-integer model",
    "asked": "ops={ops} was asked for",
}


def _constant(model: Any, subgraph: Any, index: int) -> bool:
    buffer = model.buffers[subgraph.tensors[index].buffer]
    return (buffer.data is not None and len(buffer.data) > 0) or (getattr(buffer, "offset", 0) or 0) > 1


def transformer_markers(path: Path) -> dict[str, int]:
    """What makes a .tflite transformer-like: attention (a BATCH_MATMUL of two computed tensors) and layer norms
    (litert-torch decomposes them into MEAN, SQUARED_DIFFERENCE, RSQRT); empty for a CNN."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(path))
    counts: collections.Counter[str] = collections.Counter()
    for sg in model.subgraphs:
        for op in sg.operators:
            name = flatbuffer_utils.opcode_to_name(model, op.opcodeIndex)
            if name == "BATCH_MATMUL" and not any(_constant(model, sg, i) for i in op.inputs[:2]):
                counts["attention_matmuls"] += 1
            elif name in ("SQUARED_DIFFERENCE", "RSQRT"):
                counts[name] += 1
    markers = {"attention_matmuls": counts["attention_matmuls"],
               "layer_norms": min(counts["SQUARED_DIFFERENCE"], counts["RSQRT"])}
    return {key: count for key, count in markers.items() if count}


def _int8_plan(path: Path, requested: str, io: str) -> dict[str, Any]:
    """Which ops go int8 (all: full-integer; matmul: weight matmuls only) and why; recorded in the manifest."""
    markers = transformer_markers(path)
    if requested in ("matmul", "mixed") and io == "int8":
        what = "most of the model" if requested == "matmul" else "the FULLY_CONNECTED outputs"
        raise BadInput(f"ops={requested} keeps {what} in float, so it cannot have integer I/O (io=int8).",
                       hint=f"Use io=float32 with ops={requested}, or ops=all for a full-integer model.")
    if requested != "auto":
        chosen, why = requested, _REASONS["asked"].format(ops=requested)
    elif io == "int8":
        chosen, why = "all", _REASONS["io"]
    elif markers:
        chosen = "matmul"
        found = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in markers.items())
        why = _REASONS["transformer"].format(markers=found, ops=", ".join(MATMUL_OPS))
    else:
        chosen, why = "all", _REASONS["cnn"]
    return {"requested": requested, "chosen": chosen, "transformer_markers": markers, "reason": why,
            "activations": _ACTIVATIONS[chosen]}


_ACTIVATIONS = {"all": "8-bit with ranges from the calibration set",
                "mixed": "8-bit with ranges from the calibration set, but the FULLY_CONNECTED inputs (quantized per "
                         "row at run time) and outputs (float)",
                "matmul": "FP32 in the file, quantized per row at run time (the calibration set is not used)"}


def float_after_fc(path: Path) -> list[dict[str, str]]:
    """The ops writing a model output from a FULLY_CONNECTED's output (a final sigmoid, softmax, reshape): where
    the FC runs dynamically quantized its output is float, and re-quantizing it for this op would only round what
    the user reads. By op type and scope."""
    from ai_edge_litert.tools import flatbuffer_utils
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils

    model = flatbuffer_utils.read_model(str(path))
    producers = tensor_producers(model)
    found = []
    for s, sg in enumerate(model.subgraphs):
        outputs = {t.tensorIndex for sig in model.signatureDefs or [] if sig.subgraphIndex == s for t in sig.outputs}
        for op in sg.operators:
            kind = flatbuffer_utils.opcode_to_name(model, op.opcodeIndex)
            if (kind not in MATMUL_OPS and set(op.outputs) & outputs and op.inputs
                    and producers.get((s, op.inputs[0]), ("",))[0] == "FULLY_CONNECTED"):
                found.append({"op": kind, "tensor": tfl_flatbuffer_utils.get_op_scope(op, sg.tensors),
                              "why": "writes a model output from a dynamically-quantized FULLY_CONNECTED's float "
                                     "output: kept float rather than rounded to 8 bits again"})
    return found


# Measured on CREPE tiny's first layer (one input channel, 512 taps, 128 outputs; 1 thread): XNNPACK's int8 kernel
# 5.3 ms against 0.95 ms in FP32, the whole full-integer model 11.5 ms against 1.6 ms; with that layer in FP32 and
# every other op int8, 1.55 ms and a closer cosine to PyTorch (0.99881 against 0.99835). Not a rule: with measure
# on, the build times both and keeps the faster.
_SINGLE_CHANNEL_WHY = ("a DEPTHWISE_CONV_2D fed one channel (a conv from a single input channel): XNNPACK's int8 "
                       "kernel can run it several times slower than FP32; kept FP32 (between QUANTIZE ops) as that "
                       "measured faster at build time")
FULL, KEPT = "every conv int8", "single-channel convs in FP32"


def single_channel_depthwise(path: Path) -> list[dict[str, str]]:
    """The DEPTHWISE_CONV_2D ops whose input has one channel, by output tensor (the quantizer's scope name)."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(path))
    found = []
    for sg in model.subgraphs:
        for op in sg.operators:
            shape = sg.tensors[op.inputs[0]].shape
            if flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) == "DEPTHWISE_CONV_2D" and shape[-1] == 1:
                found.append({"op": "DEPTHWISE_CONV_2D", "tensor": sg.tensors[op.outputs[0]].name.decode(),
                              "why": _SINGLE_CHANNEL_WHY})
    return found


def _int8_matmul(content: bytes, keep_float: str | None = None) -> bytes:
    """Int8 weights on the weight matmuls, activations quantized at run time; every other op stays FP32."""
    from ai_edge_quantizer import qtyping, quantizer

    q = quantizer.Quantizer(bytearray(content))
    for op in MATMUL_OPS:  # BATCH_MATMULs of two computed tensors have no weight: the quantizer leaves them float
        q.add_dynamic_config(".*", qtyping.TFLOperationName(op), num_bits=8)
    _keep_float(q, keep_float)
    return bytes(q.quantize(enable_progress_report=False).quantized_model)


def _static_quantizer(content: bytes, io: str, kept_float: Sequence[Mapping[str, str]], exclude: str | None,
                      dynamic_fc: Sequence[Mapping[str, str]] | None = None) -> Any:
    """ai-edge-quantizer's static INT8 recipe but for the ops in `kept_float` and those `exclude` matches; with
    io=float32 the model's I/O stays float (QUANTIZE/DEQUANTIZE inside). With `dynamic_fc` (ops=mixed: the ops
    `float_after_fc` found), the FULLY_CONNECTED ops are dynamically quantized and those ops stay float."""
    from ai_edge_quantizer import algorithm_manager, qtyping, quantizer, recipe

    q = quantizer.Quantizer(bytearray(content), recipe.static_wi8_ai8())
    if io == "float32":
        for virtual_op in ("INPUT", "OUTPUT"):
            q.update_quantization_recipe(".*", virtual_op, algorithm_key=algorithm_manager.AlgorithmName.NO_QUANTIZE)
    if dynamic_fc is not None:
        q.add_dynamic_config(".*", qtyping.TFLOperationName.FULLY_CONNECTED, num_bits=8)
        kept_float = [*dynamic_fc, *kept_float]
    for op in kept_float:
        q.update_quantization_recipe(re.escape(op["tensor"]), op["op"],
                                     algorithm_key=algorithm_manager.AlgorithmName.NO_QUANTIZE)
    _keep_float(q, exclude)
    return q


RANGES = ("minmax", "moving-average")
# Measured (held-out samples vs PyTorch FP32, full-integer): ai-edge-quantizer's calibrator keeps a moving average
# (0.95) of each sample's min and max, so a range ends near a typical sample's and clips the rest; the min and max
# over every sample took CREPE tiny from 28.4 to 34.2 dB and the digits CNN from 19.2 to 41.0 dB (128 samples each).
# tests/outlier.py's planted 1000x outlier is the exception (31.9 to 27.7 dB on 24 samples, 100x: 36.4 to 37.3): a
# clipped outlier channel leaves the others more levels. The ranges only set scales: the kernels, so the speed, stay.
RANGES_WHY = {"minmax": "each activation's range is its min and max over every calibration sample, as the shared QDQ "
                        "pass's minmax; ai-edge-quantizer's default moving average of per-sample ranges clipped what "
                        "fell outside a typical sample's (CREPE tiny 28.4 dB against 34.2, the digits CNN 19.2 "
                        "against 41.0)",
              "moving-average": "ranges=moving-average was asked for: ai-edge-quantizer's moving average (0.95) of "
                                "per-sample min and max"}


def _calibrate(q: Any, content: bytes, feed: _SignatureFeed, ranges: str) -> Any:
    """Activation ranges for `q`'s recipe on the float model `content`, merged over samples as `ranges` says."""
    from ai_edge_quantizer import calibrator, recipe_manager
    from ai_edge_quantizer.utils import qsv_utils

    if ranges == "moving-average":
        return q.calibrate({feed.export.signature_key: feed}, num_threads=os.cpu_count() or 1)
    manager = recipe_manager.RecipeManager()
    manager.load_quantization_recipe(q.get_quantization_recipe())
    calibration = calibrator.Calibrator(content, num_threads=os.cpu_count() or 1,
                                        qsv_update_func=qsv_utils.min_max_update)
    calibration.calibrate({feed.export.signature_key: feed}, manager)
    return calibration.get_model_qsvs()


def _int8_static(content: bytes, feed: _SignatureFeed, io: str, kept_float: Sequence[Mapping[str, str]],
                 exclude: str | None = None, dynamic_fc: Sequence[Mapping[str, str]] | None = None,
                 ranges: str = "minmax") -> dict[str, bytes]:
    """The static INT8 model and, where `kept_float` names ops, the one with those in FP32: one calibration (the
    first recipe's ranges cover every tensor the other quantizes)."""
    full = _static_quantizer(content, io, (), exclude, dynamic_fc)
    result = _calibrate(full, content, feed, ranges)
    models = {FULL: full.quantize(result, enable_progress_report=False).quantized_model}
    if kept_float:
        kept = _static_quantizer(content, io, kept_float, exclude, dynamic_fc)
        models[KEPT] = kept.quantize(result, enable_progress_report=False).quantized_model
    return {key: bytes(model) for key, model in models.items()}


def _keep_float(q: Any, regex: str | None) -> None:
    """`exclude`: the ops whose scope `regex` matches stay float (the recipe's last matching entry wins)."""
    from ai_edge_quantizer import algorithm_manager, qtyping

    if regex is not None:
        q.update_quantization_recipe(regex, qtyping.TFLOperationName.ALL_SUPPORTED,
                                     algorithm_key=algorithm_manager.AlgorithmName.NO_QUANTIZE)


def _fp16_compute(metadata: list[str]) -> str:
    """How XNNPACK runs FP16-weight models (TFLite XNNPACK README, 'Floating-Point (IEEE FP16) Operators')."""
    arm = platform.machine().lower() in ("arm64", "aarch64")
    if "reduced_precision_support" in metadata and arm:
        return ("weights stored in FP16; XNNPACK computes in FP16 where this ARM CPU has ARMv8.2 FP16 "
                "arithmetic, else in FP32")
    why = ("the model carries no reduced_precision_support metadata" if "reduced_precision_support" not in metadata
           else f"this CPU ({platform.machine()}) has no native FP16 arithmetic")
    return ("weights stored in FP16 behind DEQUANTIZE ops; XNNPACK unpacks them to FP32 once at load and computes "
            f"in FP32 ({why}; automatic FP16 inference needs that metadata and an ARMv8.2-FP16 CPU)")


def _compute(precision: str, details: Mapping[str, Any], description: Mapping[str, Any]) -> str:
    if precision == "fp16":
        return _fp16_compute(description["metadata"])
    chosen = details.get("int8_op_set", {}).get("chosen")
    if chosen == "matmul":
        return _COMPUTE["int8-matmul"]
    kept = details.get("int8_op_set", {}).get("kept_float")
    return _COMPUTE["int8-mixed" if chosen == "mixed" else precision] + (
        f"; {len(kept)} op(s) kept FP32 (see int8_op_set.kept_float)" if kept else "")


_COMPUTE = {
    "fp32": "FP32 (XNNPACK)",
    "int8": "INT8 weights and activations, per-channel symmetric weights, per-tensor asymmetric activations "
            "(XNNPACK QS8 kernels where it takes the op, TFLite integer kernels otherwise)",
    "int8-mixed": "INT8 weights and activations on the convolutions, pools and element-wise ops (per-channel "
                  "symmetric weights, per-tensor asymmetric activations, XNNPACK QS8 kernels); the FULLY_CONNECTED "
                  "layers with INT8 weights and their inputs quantized per row at run time (XNNPACK "
                  "dynamically-quantized kernels), float outputs",
    "int8-matmul": "INT8 weights on the weight matmuls, whose FP32 inputs are quantized per row at run time "
                   "(XNNPACK dynamically-quantized kernels); every other op in FP32 (XNNPACK)",
    "int8-dynamic": "INT8 weights on the matmuls and fully-connected layers, their FP32 inputs quantized per op at "
                    "run time (XNNPACK dynamically-quantized kernels); convolutions stay FP32 (XNNPACK has no "
                    "dynamically-quantized conv: TFLite's hybrid kernels would run them outside the delegate)",
}


def describe_tflite(path: Path) -> dict[str, Any]:
    """Ops by type (all, and split by whether an input is INT8), tensors by dtype, and each signature
    input/output's dtype and quantization."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(path))
    ops = collections.Counter(flatbuffer_utils.opcode_to_name(model, op.opcodeIndex)
                              for sg in model.subgraphs for op in sg.operators)
    tensors = collections.Counter(flatbuffer_utils.type_to_name(t.type) for sg in model.subgraphs for t in sg.tensors)
    by_input: dict[str, collections.Counter[str]] = {"int8_ops": collections.Counter(),
                                                     "float_ops": collections.Counter()}
    for sg in model.subgraphs:
        for op in sg.operators:
            int8 = any(i >= 0 and flatbuffer_utils.type_to_name(sg.tensors[i].type) == "INT8" for i in op.inputs)
            by_input["int8_ops" if int8 else "float_ops"][flatbuffer_utils.opcode_to_name(model, op.opcodeIndex)] += 1
    runner = Interpreter(model_path=str(path)).get_signature_runner()

    def io(details: Mapping[str, Any]) -> dict[str, Any]:
        out = {}
        for name, d in details.items():
            scale, zero = d["quantization"]
            out[name] = {"dtype": np.dtype(d["dtype"]).name, "shape": [int(x) for x in d["shape_signature"]],
                         **({"scale": float(scale), "zero_point": int(zero)} if scale else {})}
        return out

    metadata = [m.name.decode(errors="replace") if isinstance(m.name, bytes) else str(m.name)
                for m in (model.metadata or [])]
    return {"ops": dict(sorted(ops.items())), **{k: dict(sorted(v.items())) for k, v in by_input.items()},
            "tensors_by_dtype": dict(sorted(tensors.items())), "metadata": metadata,
            "signature_inputs": io(runner.get_input_details()), "signature_outputs": io(runner.get_output_details())}


class TFLiteBackend(Backend):
    name = "tflite"
    options = (
        Option(name="layout", help="Layout of 4-D float inputs inside the .tflite: nchw as in PyTorch, or nhwc as "
               "mobile pipelines feed (the runner transposes what you feed in NCHW).", default="nchw", parse=_lower,
               choices=LAYOUTS),
        Option(name="dynamic", help="auto: keep the model's dynamic axes where litert-torch can, else convert with "
               "static shapes (batch 1, batches run per sample); off: convert static shapes directly.",
               default="auto", parse=_lower, choices=DYNAMIC_MODES),
        Option(name="io", help="Input/output type of the INT8 model: float32 (quantize/dequantize inside the model) "
               "or int8 (integer I/O; the runner quantizes inputs and dequantizes outputs with each tensor's scale "
               "and zero point).", default="float32", parse=_lower, choices=("float32", "int8"), precisions=("int8",)),
        Option(name="ops", help="Which ops run in INT8: all (full-integer, activation ranges from the calibration "
               "set), mixed (as all, but the FULLY_CONNECTED layers dynamically quantized with float outputs, and an "
               "op writing a model output from one in float), matmul (only FULLY_CONNECTED/BATCH_MATMUL with "
               "constant weights, inputs quantized at run time; softmax, normalization, GELU stay FP32), or auto: "
               "matmul on transformer-like graphs (attention, layer norms), all otherwise. mixed: CREPE tiny 35.9 dB "
               "against all's 34.2, but a FC input far from zero loses (a planted outlier: 16.3 against 27.7).",
               default="auto", parse=_lower, choices=INT8_OP_SETS, precisions=("int8",)),
        Option(name="ranges", help="How activation ranges merge over calibration samples: minmax (the min and max "
               "over every sample) or moving-average (ai-edge-quantizer's default, a moving average of per-sample "
               "ranges, which clips what a typical sample does not reach).", default="minmax", parse=_lower,
               choices=RANGES, precisions=("int8",)),
        Option(name="exclude", help="ONNX node names (as modelport debug lists them) whose TFLite ops stay in float, "
               "comma-separated: the ops litert-torch made from each node's torch module (and the op writing a "
               "model output the node makes).", default=(), parse=parse_list, precisions=("int8",)),
        Option(name="measure", help="Time the quantized .tflite against the FP32 one at build time (XNNPACK, the "
               "example inputs) and warn in the manifest when it does not pay.", default=True, parse=parse_bool,
               precisions=("int8", "int8-dynamic")),
    )

    def build(self, bundle: ModelBundle, recipe: Recipe, calibration: CalibrationSet | None,
              out_dir: Path) -> dict[str, Any]:
        from modelport.exporters.litert import convert_to_tflite

        source = bundle.source
        with progress.stage("convert (litert-torch)"):
            export = convert_to_tflite(source, layout=recipe.options["layout"], dynamic=recipe.options["dynamic"])
        content = export.path.read_bytes()
        details: dict[str, Any] = {}
        candidates: dict[str, bytes] = {}
        kept: list[dict[str, str]] = []
        start = time.perf_counter()
        quantizing = progress.stage(f"quantize ({recipe.precision})") if recipe.precision != "fp32" else nullcontext()
        with quiet_native() as log, quantizing:
            try:
                if recipe.precision == "fp16":
                    content = _fp16(content)
                elif recipe.precision == "int8-dynamic":
                    content = _int8_dynamic(content)
                elif recipe.precision == "int8":
                    assert calibration is not None  # the builder requires it for int8
                    plan = _int8_plan(export.path, recipe.options["ops"], recipe.options["io"])
                    details["int8_op_set"] = plan
                    keep = None
                    if recipe.options["exclude"]:
                        excluded = find_float_ops(export.path, bundle.onnx_path, recipe.options["exclude"],
                                                  export.outputs)
                        details["kept_in_float"], keep = excluded.to_json(), excluded.regex
                    if plan["chosen"] == "matmul":
                        content = _int8_matmul(content, keep)
                        details["samples_calibrated"] = 0
                    else:
                        feed = _SignatureFeed(calibration, export)
                        kept = single_channel_depthwise(export.path) if recipe.options["measure"] else []
                        dynamic_fc = float_after_fc(export.path) if plan["chosen"] == "mixed" else None
                        if dynamic_fc is not None:
                            plan["float_outputs"] = dynamic_fc
                        candidates = _int8_static(content, feed, recipe.options["io"], kept, keep, dynamic_fc,
                                                  recipe.options["ranges"])
                        content = candidates[FULL]
                        details["samples_calibrated"] = feed.passes[-1] if feed.passes else 0
                        details["ranges"] = {"chosen": recipe.options["ranges"],
                                             "reason": RANGES_WHY[recipe.options["ranges"]]}
            except (BadInput, StepFailed):
                raise
            except Exception as exc:
                tail = "\n".join(log.text.strip().splitlines()[-5:])
                raise StepFailed(f"ai-edge-quantizer failed to make the {recipe.precision} model: "
                                 f"{type(exc).__name__}: {exc}" + (f"\n{tail}" if tail else ""),
                                 hint="Try int8-dynamic or fp16, or run with --debug for the traceback.") from exc
        quantize_seconds = time.perf_counter() - start
        if recipe.precision in ("int8", "int8-dynamic") and recipe.options["measure"]:
            with progress.stage("latency check"):
                details["latency"] = _latency_vs_fp32(export, candidates or {recipe.precision: content}, source,
                                                      recipe.precision, out_dir)
            content = candidates.get(details["latency"]["chosen"], content)
        if "int8_op_set" in details:
            details["int8_op_set"]["kept_float"] = kept if candidates and content is candidates.get(KEPT) else []
        (out_dir / MAIN_FILE).write_bytes(content)
        with quiet_native():
            description = describe_tflite(out_dir / MAIN_FILE)
        if export.dynamic["kept"]:
            batching = "dynamic: inputs are resized to the fed shape"
        elif any(0 in s.dynamic_axes for s in source.inputs):
            batching = "static batch 1: larger batches run one sample at a time"
        else:
            batching = "static, as the model's inputs"
        return {
            "main_file": MAIN_FILE,
            "signature": {"key": export.signature_key, "inputs": export.inputs, "outputs": export.outputs},
            "layouts": export.layouts,
            "input_shapes": export.shapes,
            "dynamic": export.dynamic,
            "batching": batching,
            "io": recipe.options.get("io") or "float32",
            "compute": _compute(recipe.precision, details, description),
            "conversion": {"converter": f"litert-torch {export.converter}", "seconds": export.seconds,
                           "reused_from_cache": export.from_cache, "parity_vs_torch": export.parity,
                           **({"rewrites": export.rewrites} if export.rewrites else {})},
            "quantize_seconds": round(quantize_seconds, 3),
            **details,
            **description,
        }

    def load(self, artifact: Artifact, threads: int | None = None) -> Runner:
        return TFLiteRunner(artifact.main_file, artifact.details, artifact.inputs, artifact.outputs, threads)


def _latency_vs_fp32(export: LiteRTExport, candidates: Mapping[str, bytes], source: Any, precision: str,
                     out_dir: Path) -> dict[str, Any]:
    """The converted FP32 .tflite and each quantized candidate, loaded as the runner loads them and timed in
    interleaved rounds on the example inputs: the fastest candidate, and whether it pays on this machine
    (XNNPACK's int8 kernels need not be faster than its FP32 ones)."""
    import tempfile

    from modelport.timing import interleaved_rounds

    threads = min(2, os.cpu_count() or 1)
    details = {"signature": {"key": export.signature_key, "inputs": export.inputs, "outputs": export.outputs},
               "layouts": export.layouts}
    feeds = {k: np.asarray(v) for k, v in source.example_feeds().items()}
    with tempfile.TemporaryDirectory(prefix=".timing-", dir=out_dir) as tmp:
        files = {"fp32": export.path}
        for i, (key, content) in enumerate(candidates.items()):
            files[key] = Path(tmp) / f"candidate-{i}.tflite"
            files[key].write_bytes(content)
        runners = {key: TFLiteRunner(file, details, source.inputs, source.outputs, threads)
                   for key, file in files.items()}
        rounds = interleaved_rounds({k: r.run for k, r in runners.items()}, feeds, 5, 3.0)
        del runners
    ms = {key: min(values) for key, values in rounds.items()}
    chosen = min(candidates, key=ms.__getitem__)
    speedup = ms["fp32"] / ms[chosen]
    shape = {k: list(v.shape) for k, v in feeds.items()}
    warning = None
    if speedup < SLOWER_THAN_FP32:
        warning = (f"The {precision} .tflite does not pay here: {ms[chosen]:.3f} ms against {ms['fp32']:.3f} ms "
                   f"for FP32 ({threads} threads, inputs {shape}); build fp32 for this model on this machine.")
    return {"fp32_ms": round(ms["fp32"], 4), "artifact_ms": round(ms[chosen], 4), "speedup": round(speedup, 3),
            "chosen": chosen, **({"candidates_ms": {k: round(ms[k], 4) for k in candidates}}
                                 if len(candidates) > 1 else {}),
            "threads": threads, "inputs": shape, "warning": warning,
            "how": "best of 5 interleaved rounds of median run time, at build time"}


def _interpreter_class() -> type:
    """LiteRT's interpreter, or tflite_runtime's where only that is installed."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            raise Unavailable("Neither ai-edge-litert nor tflite-runtime is importable.",
                              hint="pip install 'modelport[tflite]'") from None
    return Interpreter


def _quantize(array: np.ndarray, dtype: np.dtype, scale: float, zero: int) -> np.ndarray:
    info = np.iinfo(dtype)
    return np.clip(np.round(array / scale) + zero, info.min, info.max).astype(dtype)


class _Interpreter:
    """One LiteRT interpreter and the input shapes it is allocated for: a resize re-plans XNNPACK, so it happens
    only when the fed shape changes. `preserve_all` keeps every intermediate tensor readable after invoke."""

    def __init__(self, path: Path, threads: int, preserve_all: bool = False) -> None:
        extra = {"experimental_preserve_all_tensors": True} if preserve_all else {}
        with quiet_native():  # XNNPACK announces itself on stderr when the delegate is applied
            self.interpreter = _interpreter_class()(model_path=str(path), num_threads=threads, **extra)
            self.interpreter.allocate_tensors()
        self.shapes: dict[int, tuple[int, ...]] = {}
        self.allocated = True

    def invoke(self, arrays: Mapping[int, np.ndarray], details: Mapping[int, Mapping[str, Any]]) -> None:
        """Set the inputs (by tensor index) and invoke; a shape the .tflite cannot take is a BadInput."""
        interpreter = self.interpreter
        for index, array in arrays.items():
            if tuple(array.shape) != self.shapes.setdefault(index, tuple(int(x) for x in details[index]["shape"])):
                try:
                    interpreter.resize_tensor_input(index, list(array.shape), strict=True)
                except (ValueError, RuntimeError) as exc:
                    raise BadInput(f"Input {details[index]['name']!r} of shape {array.shape} does not fit the .tflite "
                                   f"input {details[index]['shape_signature'].tolist()} (model layout): {exc}",
                                   hint="Feed the shape the artifact was built for (see its manifest's "
                                        "input_shapes), or rebuild with dynamic=auto.") from None
                self.shapes[index] = tuple(array.shape)
                self.allocated = False
        if not self.allocated:
            interpreter.allocate_tensors()
            self.allocated = True
        for index, array in arrays.items():
            interpreter.set_tensor(index, array)
        interpreter.invoke()


def _dequantized(value: np.ndarray, detail: Mapping[str, Any]) -> np.ndarray:
    """An integer tensor as float32 through its scale(s) and zero point(s) (per tensor or per channel)."""
    params = detail.get("quantization_parameters") or {}
    scales = np.asarray(params.get("scales", ()), dtype=np.float32)
    if value.dtype.kind not in "iu" or not scales.size:
        return value.astype(np.float32, copy=False) if value.dtype.kind == "f" else value
    zeros = np.asarray(params.get("zero_points", ()), dtype=np.float32)
    shape = [1] * value.ndim
    if scales.size > 1:
        shape[int(params.get("quantized_dimension", 0))] = scales.size
    return (value.astype(np.float32) - zeros.reshape(shape)) * scales.reshape(shape)


class TFLiteRunner(Runner):
    """Runs a .tflite with the LiteRT interpreter and XNNPACK on `threads` threads (default: every core).

    Feeds are what PyTorch takes. Dynamic axes are resized only when the fed shape changes (a resize
    re-plans XNNPACK). A model converted at static batch 1 from a dynamic-batch source runs larger
    batches one sample at a time and concatenates the outputs; other shape mismatches are errors.
    """

    name = "tflite"

    def __init__(self, path: Path, details: Mapping[str, Any], inputs: list[TensorSpec], outputs: list[TensorSpec],
                 threads: int | None = None) -> None:
        self.inputs, self.outputs = inputs, outputs
        self.threads = threads or os.cpu_count() or 1
        self.layouts: dict[str, str] = dict(details.get("layouts", {}))
        signature = details["signature"]
        self._path = path
        self._main = _Interpreter(path, self.threads)
        runner = self._main.interpreter.get_signature_runner(signature["key"])
        in_details, out_details = runner.get_input_details(), runner.get_output_details()
        self._in = {name: in_details[sig] for name, sig in signature["inputs"].items()}
        self._out = {name: out_details[sig] for name, sig in signature["outputs"].items()}
        self._by_index = {d["index"]: d for d in self._in.values()}
        self._loop_batches = self._per_sample_batches(details)

    def _per_sample_batches(self, details: Mapping[str, Any]) -> bool:
        """Whether a static batch-1 model stands in for a dynamic-batch source (then batches loop)."""
        dims = {s.shape[0] for s in self.inputs + self.outputs if s.shape}
        static_one = all(int(d["shape_signature"][0]) == 1 for d in self._in.values())
        return static_one and len(dims) == 1 and isinstance(next(iter(dims)), str)

    def _model_array(self, spec: TensorSpec, array: np.ndarray) -> np.ndarray:
        d = self._in[spec.name]
        if self.layouts.get(spec.name) == "NHWC":
            array = array.transpose(0, 2, 3, 1)
        dtype = np.dtype(d["dtype"])
        scale, zero = d["quantization"]
        if scale and array.dtype.kind == "f" and dtype.kind in "iu":
            return _quantize(array, dtype, scale, zero)
        if array.dtype != dtype:
            cast = array.astype(dtype)
            if array.dtype.kind in "iu" and not np.array_equal(cast, array):
                raise BadInput(f"Input {spec.name!r} has values that the model's {dtype.name} input cannot hold.")
            array = cast
        return np.ascontiguousarray(array)

    def _invoke(self, on: _Interpreter, feeds: Mapping[str, np.ndarray]) -> None:
        on.invoke({self._in[s.name]["index"]: self._model_array(s, feeds[s.name]) for s in self.inputs}, self._by_index)

    def _outputs(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._invoke(self._main, feeds)
        out = {}
        for spec in self.outputs:
            d = self._out[spec.name]
            value = self._main.interpreter.get_tensor(d["index"])
            scale, zero = d["quantization"]
            if scale and value.dtype.kind in "iu" and spec.dtype.startswith("float"):
                value = (value.astype(np.float32) - zero) * np.float32(scale)
            out[spec.name] = value.astype(spec.dtype, copy=False)
        return out

    def _batched(self, feeds: dict[str, np.ndarray],
                 fn: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """`fn` on the feeds, or per sample with the results concatenated where batches loop."""
        batch = {a.shape[0] for a in feeds.values() if a.ndim}  # one size where batches loop: `checked` saw to it
        if self._loop_batches and batch and batch != {1}:
            if 0 in batch:
                raise BadInput("The inputs have batch size 0; feed a batch of at least 1.")
            parts = [fn({n: a[i:i + 1] for n, a in feeds.items()}) for i in range(batch.pop())]
            return {n: np.concatenate([p[n] for p in parts]) for n in parts[0]}
        return fn(feeds)

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._batched(feeds, self._outputs)

    def tensor_names(self) -> list[str]:
        return list(self._tensors)

    def fused_activations(self) -> dict[str, str]:
        try:
            from ai_edge_litert.tools import flatbuffer_utils
        except ImportError:  # tflite_runtime alone cannot read the flatbuffer: no fused activation is known
            return {}
        activations = fused_activations(flatbuffer_utils.read_model(str(self._path)))
        return {name: activations[(0, index)] for name, index in self._tensors.items() if (0, index) in activations}

    def tensor_producers(self) -> dict[str, tuple[str, str | None]]:
        try:
            from ai_edge_litert.tools import flatbuffer_utils
        except ImportError:  # as fused_activations: without the flatbuffer reader no producer is known
            return {}
        names = {index: name for name, index in self._tensors.items()}
        producers = tensor_producers(flatbuffer_utils.read_model(str(self._path)))
        return {names[i]: (kind, names.get(first[1]) if first else None)
                for (s, i), (kind, first) in producers.items() if s == 0 and i in names}

    def intermediates(self, feeds: Mapping[str, Any], names: Sequence[str]) -> dict[str, np.ndarray]:
        """Read from a second interpreter with `experimental_preserve_all_tensors` (XNNPACK then delegates op by
        op, so every op's output is kept), dequantized, in the .tflite's layout (NHWC where it converted so).

        litert-torch names tensors by the torch modules they come from (`..._Conv2d_stem;2`), not by ONNX names.
        """
        checked = self.checked(feeds)
        unknown = [n for n in names if n not in self._tensors]
        if unknown:
            raise BadInput(f"The .tflite {self._path} has no tensor(s) {', '.join(unknown[:5])}.",
                           hint="Ask for names that tensor_names() lists.")
        debug = self._debugging
        details = {d["index"]: d for d in debug.interpreter.get_tensor_details()}

        def read(part: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            self._invoke(debug, part)
            return {n: _dequantized(debug.interpreter.get_tensor(self._tensors[n]), details[self._tensors[n]])
                    for n in names}

        return self._batched(checked, read)

    @functools.cached_property
    def _debugging(self) -> _Interpreter:
        return _Interpreter(self._path, self.threads, preserve_all=True)

    @functools.cached_property
    def _tensors(self) -> dict[str, int]:
        """The model's inputs and outputs under their own names (an input as its QUANTIZE op's output where the
        model quantizes it: the value its consumers read), then every other op output by its .tflite name, in
        execution order."""
        interpreter = self._debugging.interpreter
        names = {d["index"]: d["name"] for d in interpreter.get_tensor_details()}
        ops = [op for op in interpreter._get_ops_details() if op["op_name"] != "DELEGATE"]  # LiteRT's only op list
        quantized = {int(op["inputs"][0]): int(op["outputs"][0]) for op in ops if op["op_name"] == "QUANTIZE"}
        found = {name: quantized.get(d["index"], d["index"]) for name, d in self._in.items()}
        outputs = {int(d["index"]): name for name, d in self._out.items()}
        for op in ops:
            for index in (int(i) for i in op["outputs"] if i >= 0):
                if index not in found.values():
                    found[outputs.get(index, names[index])] = index
        return found

    def _release(self) -> None:
        self._main = None  # type: ignore[assignment]
        self.__dict__.pop("_debugging", None)
