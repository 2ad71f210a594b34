"""PyTorch -> float .tflite with litert-torch, checked against PyTorch, without TensorFlow.

LiteRT has its own converter from the torch module (not from the ONNX file): ONNX -> TFLite converters
need TensorFlow, and onnx2tf 2.x needs Python 3.12. The converted signature names inputs by position
(`args_0`...) and outputs by the model's output names; the export records the mapping.

Dynamic axes are tried first. litert-torch 0.10 fails on many models with a symbolic batch (flatten,
linear, layer norm: litert-torch issues #685, #711, #870), so when it does, the model is converted with
static shapes (batch 1) and the reason is recorded; the runner then runs larger batches one sample at
a time. Conversions are cached under MODELPORT_CACHE by model content, options and converter version,
so building four precisions converts once.

Eval-mode BatchNorms are converted as the per-channel scale and shift they compute (`ScaleShift`, exact up to
float rounding): litert-torch lowers a BatchNorm to SUB, MUL, MUL, ADD, which the TFLite converter folds into a
conv right before it, but not where something else comes between (CREPE's ReLU). There the INT8 model rounds to
a per-tensor int8 grid after each of the four; one MUL and one ADD (folded into a conv before them just as well)
round twice. Measured on CREPE tiny's six such BatchNorms against PyTorch FP32: full INT8 25.1 -> 28.0 dB output
SQNR on benchmarks/budget.py's 64 tones (as much as keeping the four ops of every BatchNorm in float: 28.0 dB),
25.1 -> 26.4 dB on benchmarks/tflite_int8.py's, with every op still INT8 and no slower (0.98x the old INT8's time
side by side; tflite_int8: 1.07x of FP32, was 0.94x).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modelport.errors import BadInput, StepFailed
from modelport.exporters.litert_choices import DYNAMIC_MODES, LAYOUTS
from modelport.exporters.parity import output_error
from modelport.machine import cache_dir
from modelport.model import SourceModel, export_args, flatten_outputs, random_inputs, resize_along
from modelport.quiet import NativeLog, quiet_native
from modelport.specs import TensorSpec

PARITY_RTOL = 1e-3  # max abs error over the output's scale, FP32 against PyTorch
REWRITES = "scaleshift"  # in the cache key: conversions made before the BatchNorm rewrite are not reused
SCALE_SHIFT_WHY = ("eval-mode BatchNorms converted as one per-channel MUL and ADD (exact in float) rather than "
                   "litert-torch's SUB, MUL, MUL, ADD: where no conv comes right before to fold them into, INT8 "
                   "rounds after each of those ops (CREPE tiny full INT8: 25.1 -> 28.0 dB output SQNR against "
                   "PyTorch)")
_EXPORT_JSON = "export.json"


@dataclass
class LiteRTExport:
    """A float .tflite converted from a SourceModel, and how its signature maps to the model's names."""

    path: Path
    signature_key: str
    inputs: dict[str, str]  # model input name -> signature input name
    outputs: dict[str, str]  # model output name -> signature output name
    layouts: dict[str, str]  # 4-D float input -> "NCHW" | "NHWC" (its layout inside the .tflite)
    shapes: dict[str, list[int]]  # input shapes in the .tflite (model layout), -1 where dynamic
    dynamic: dict[str, Any]  # requested dims, whether kept, why not
    converter: str
    seconds: float
    parity: list[dict[str, Any]] = field(default_factory=list)
    rewrites: dict[str, Any] = field(default_factory=dict)  # what was converted other than as written, and why
    from_cache: bool = False

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        del data["from_cache"]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any], from_cache: bool = False) -> LiteRTExport:
        return cls(**{**data, "path": Path(data["path"])}, from_cache=from_cache)


class ScaleShift(torch.nn.Module):
    """An eval-mode BatchNorm as what it computes: x * scale + shift per channel (dim 1). Its class name has no
    underscore, as litert-torch's location names (`pkg.Class_attr`) are read back by the text after the first."""

    def __init__(self, norm: torch.nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        scale = (norm.weight if norm.affine else 1.0) / torch.sqrt(norm.running_var + norm.eps)
        shift = (norm.bias if norm.affine else 0.0) - norm.running_mean * scale
        self.register_buffer("scale", scale.detach().clone())
        self.register_buffer("shift", shift.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.scale.view(shape) + self.shift.view(shape)


def as_scale_shift(module: torch.nn.Module) -> tuple[torch.nn.Module, list[str]]:
    """`module`, or a copy of it with every eval-mode BatchNorm with running statistics replaced by its
    `ScaleShift`, and the paths of those replaced; the user's module is never changed."""
    found = [name for name, m in module.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
             and not m.training and m.running_mean is not None and m.running_var is not None]
    if not found:
        return module, []
    import copy

    folded = copy.deepcopy(module)
    for path in found:
        parent, _, attr = path.rpartition(".")
        owner = folded.get_submodule(parent) if parent else folded
        setattr(owner, attr, ScaleShift(getattr(owner, attr)))
    return folded, found


class _NamedOutputs(torch.nn.Module):
    """Returns the model's flattened outputs as a dict, so the .tflite signature carries their names."""

    def __init__(self, module: torch.nn.Module, names: list[str]) -> None:
        super().__init__()
        self.module = module
        self.names = names

    def forward(self, *args: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, flatten_outputs(self.module(*args)), strict=True))


def converter_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("litert-torch")


def layouts_for(inputs: list[TensorSpec], layout: str) -> dict[str, str]:
    """The layout each 4-D float input has inside the .tflite; other inputs keep their PyTorch shape."""
    return {s.name: layout.upper() for s in inputs if len(s.shape) == 4 and s.dtype.startswith("float")}


def to_model_layout(array: np.ndarray, layout: str | None) -> np.ndarray:
    return np.ascontiguousarray(array.transpose(0, 2, 3, 1)) if layout == "NHWC" else array


def _nhwc_args(source: SourceModel, args: tuple[torch.Tensor, ...], layouts: dict[str, str]) -> tuple:
    return tuple(a.permute(0, 2, 3, 1).contiguous() if layouts.get(s.name) == "NHWC" else a
                 for s, a in zip(source.inputs, args, strict=True))


def _convert_once(source: SourceModel, converted: torch.nn.Module, layout: str, dynamic: bool) -> bytes:
    """`converted` (the source's module, or its rewrite) to .tflite bytes, with the source's names and shapes."""
    import litert_torch

    layouts = layouts_for(source.inputs, layout)
    module: torch.nn.Module = _NamedOutputs(converted, source.output_names).eval()
    args = export_args(source, dynamic)
    if layout == "nhwc" and layouts:
        positions = [i for i, s in enumerate(source.inputs) if s.name in layouts]
        module = litert_torch.to_channel_last_io(module, args=positions).eval()
        args = _nhwc_args(source, args, layouts)
    shapes = None
    if dynamic:
        dims: dict[str, torch.export.Dim] = {}
        # Both wrappers take *args, so the per-input specs nest inside one tuple for that parameter.
        shapes = (tuple({axis: dims.setdefault(name, torch.export.Dim(name, min=1))
                         for axis, name in spec.dynamic_axes.items()} or None for spec in source.inputs),)
    return litert_torch.convert(module, args, dynamic_shapes=shapes).model_content()


def _user_frame(text: str) -> str:
    """' (at file.py:12 in forward)' for the innermost frame of the user's code in a converter traceback."""
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\w+)', text.split("Original traceback:", 1)[-1])
    frames = [f for f in frames if Path(f[0]).resolve() != Path(__file__).resolve()]
    own = [f for f in frames if "site-packages" not in f[0]] or frames
    if not own or "Original traceback:" not in text:
        return ""
    path, line, fn = own[-1]
    return f" (at {Path(path).name}:{line} in {fn})"


def conversion_error(exc: BaseException, log: NativeLog | None = None) -> StepFailed:
    """A StepFailed that names the op the converter stopped at and where the model uses it."""
    text = str(exc)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    missing = re.search(r"Lowering not found: (\S+)", text)
    node = re.search(r"target=torch\.ops\.([\w.]+)", text)
    where = _user_frame(text)
    hint = ("Replace that op with ones LiteRT supports, or build this model for onnxruntime or openvino. "
            "Run with --debug for the converter's traceback.")
    if missing:
        return StepFailed(f"litert-torch cannot convert op {missing.group(1)}{where}: it has no LiteRT lowering.",
                          hint=hint)
    if node:
        return StepFailed(f"litert-torch failed on op {node.group(1)}{where}: {type(exc).__name__}: {first}",
                          hint=hint)
    tail = "\n".join(ln for ln in (log.text if log else "").splitlines()[-5:] if ln.strip())
    return StepFailed(f"litert-torch could not convert the model: {type(exc).__name__}: {first}"
                      + (f"\nConverter log:\n{tail}" if tail else ""), hint=hint)


def run_signature(path: Path, feeds: Mapping[str, np.ndarray], export: LiteRTExport) -> dict[str, np.ndarray]:
    """Run the float .tflite once on model-named feeds (in PyTorch layout); outputs by model name."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path), num_threads=1).get_signature_runner(export.signature_key)
    details = runner.get_input_details()
    args = {}
    for name, sig in export.inputs.items():
        a = to_model_layout(np.asarray(feeds[name]), export.layouts.get(name))
        args[sig] = a.astype(details[sig]["dtype"], copy=False)
    out = runner(**args)
    return {name: out[sig] for name, sig in export.outputs.items()}


def _parity(source: SourceModel, path: Path, export: LiteRTExport, batches: tuple[int, ...]) -> list[dict]:
    """Worst error of each output against PyTorch on the example inputs and a random draw, per batch size."""
    worst: dict[str, dict[str, Any]] = {}
    base = dict(zip(source.input_names, export_args(source, dynamic=False), strict=True))
    drawn = random_inputs([TensorSpec(s.name, tuple(base[s.name].shape), s.dtype) for s in source.inputs], seed=1)
    for batch in batches:
        for case, feeds in (("example", base), ("random", drawn)):
            feeds = {k: resize_along(v, 0, batch) if 0 in spec.dynamic_axes else v
                     for (k, v), spec in zip(feeds.items(), source.inputs, strict=True)}
            expected = source.run(feeds)
            got = run_signature(path, {k: v.numpy() for k, v in feeds.items()}, export)
            for name, ref in expected.items():
                err = output_error(ref, got[name].astype(ref.dtype, copy=False).reshape(ref.shape))
                if name not in worst or err.max_rel > worst[name]["max_rel"]:
                    worst[name] = {"name": name, "max_abs": err.max_abs, "max_rel": err.max_rel,
                                   "case": f"{case}, batch {batch}"}
    return list(worst.values())


def _signature(path: Path, source: SourceModel) -> tuple[str, dict[str, str], dict[str, str], dict[str, list[int]]]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    (key, sig), = interpreter.get_signature_list().items()
    if len(sig["inputs"]) != len(source.inputs) or set(sig["outputs"]) != set(source.output_names):
        raise StepFailed(f"The converted signature {sig} does not match the model's inputs {source.input_names} "
                         f"and outputs {source.output_names}.")
    inputs = {spec.name: f"args_{i}" for i, spec in enumerate(source.inputs)}
    if set(inputs.values()) != set(sig["inputs"]):
        raise StepFailed(f"The converted signature names its inputs {sig['inputs']}, not args_0..args_N.")
    details = interpreter.get_signature_runner(key).get_input_details()
    shapes = {name: [int(d) for d in details[sig_name]["shape_signature"]] for name, sig_name in inputs.items()}
    return key, inputs, {n: n for n in source.output_names}, shapes


def _attempt(source: SourceModel, layout: str, dynamic: bool, folder: Path) -> LiteRTExport:
    start = time.perf_counter()
    converted, folded = as_scale_shift(source.module)
    with quiet_native() as log:  # the interpreters below announce XNNPACK on stderr too
        try:
            content = _convert_once(source, converted, layout, dynamic)
        except Exception as exc:
            raise conversion_error(exc, log) from exc
        path = folder / "model.tflite"
        path.write_bytes(content)
        seconds = time.perf_counter() - start
        key, inputs, outputs, shapes = _signature(path, source)
        dims = sorted({d for s in source.inputs for d in s.dynamic_axes.values()})
        export = LiteRTExport(path, key, inputs, outputs, layouts_for(source.inputs, layout), shapes,
                              {"requested": dims, "kept": dynamic, "reason": None}, converter_version(),
                              round(seconds, 3))
        export.parity = _parity(source, path, export, (1, 3) if dynamic else (1,))
        export.rewrites = {"batchnorm_as_scale_shift": folded, "why": SCALE_SHIFT_WHY} if folded else {}
    return export


def _check_parity(export: LiteRTExport) -> str | None:
    bad = [p for p in export.parity if p["max_rel"] > PARITY_RTOL]
    return None if not bad else "; ".join(
        f"output {p['name']!r} max rel error {p['max_rel']:.2e} ({p['case']})" for p in bad)


def _convert(source: SourceModel, layout: str, dynamic: str, folder: Path) -> LiteRTExport:
    wants_dynamic = dynamic == "auto" and any(s.dynamic_axes for s in source.inputs)
    reason = "dynamic=off" if dynamic == "off" and any(s.dynamic_axes for s in source.inputs) else None
    if wants_dynamic:
        try:
            export = _attempt(source, layout, True, folder)
            reason = _check_parity(export)
            if reason is None:
                return export
            reason = f"the dynamic-shape model disagrees with PyTorch: {reason}"
        except StepFailed as exc:
            reason = f"litert-torch cannot keep the dynamic axes: {exc.message.splitlines()[0]}"
    export = _attempt(source, layout, False, folder)
    export.dynamic["reason"] = reason
    if (bad := _check_parity(export)) is not None:
        raise StepFailed(f"The LiteRT conversion disagrees with PyTorch: {bad}.",
                         hint=f"Tolerance is {PARITY_RTOL:g} of the output's scale; report the model to litert-torch, "
                              "or build for another backend.")
    return export


def convert_to_tflite(source: SourceModel, *, layout: str = "nchw", dynamic: str = "auto") -> LiteRTExport:
    """The float .tflite for `source` (cached): converted, its signature mapped, checked against PyTorch."""
    if layout not in LAYOUTS or dynamic not in DYNAMIC_MODES:
        raise BadInput(f"layout must be one of {LAYOUTS} and dynamic one of {DYNAMIC_MODES}.")
    folder = cache_dir() / "litert" / (f"{source.name}-{source.content_hash}-{layout}-{dynamic}-{converter_version()}"
                                       f"-{REWRITES}")
    info = folder / _EXPORT_JSON
    if info.is_file() and (folder / "model.tflite").is_file():
        return LiteRTExport.from_json({**json.loads(info.read_text()), "path": str(folder / "model.tflite")},
                                      from_cache=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        export = _convert(source, layout, dynamic, tmp)
        (tmp / _EXPORT_JSON).write_text(json.dumps(export.to_json(), indent=2))
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    export.path = folder / "model.tflite"
    return export
