"""PyTorch -> ONNX, validated: checker, shape inference, then ONNX Runtime against PyTorch on several inputs.

The torch.export-based exporter is tried first; the TorchScript exporter only when it fails, and the
report says so and why. A TorchScript trace that turned a tensor into a Python value (an `if` on data)
holds that one path for every input, so it fails unless the caller accepts it. Nothing is written at
the destination until every check has passed.
"""

from __future__ import annotations

import contextlib
import io
import linecache
import re
import shutil
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modelport import progress
from modelport.errors import BadInput, StepFailed, os_error
from modelport.exporters.parity import output_error
from modelport.model import SourceModel, export_args, resize_along
from modelport.ort_session import ort_session
from modelport.quiet import loggers_at_error
from modelport.specs import TensorSpec
from modelport.staging import ensure_dir, make_sibling_dir, no_space_error, out_of_space

_TWO_GB = 2**31
DEFAULT_ATOL = 1e-4


@dataclass
class OutputParity:
    """Worst error of one output over all check cases; `max_rel` is max abs error over the output's scale."""

    name: str
    max_abs: float
    max_rel: float
    case: str


@dataclass
class ExportReport:
    path: Path
    exporter: str
    opset: int
    seconds: float
    size_bytes: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    parity: list[OutputParity] = field(default_factory=list)
    cases: list[str] = field(default_factory=list)
    checked: bool = True
    atol: float = DEFAULT_ATOL
    fallback_reason: str | None = None
    notes: list[str] = field(default_factory=list)  # what the user should know about a file that passed

    @property
    def max_rel(self) -> float:
        return max((p.max_rel for p in self.parity), default=0.0)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        data["inputs"] = [s.to_json() for s in self.inputs]
        data["outputs"] = [s.to_json() for s in self.outputs]
        return data


def _param_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def _dynamo_export(source: SourceModel, args: tuple, path: Path, opset: int | None, external: bool) -> None:
    dims: dict[str, torch.export.Dim] = {}
    shapes = []
    for spec in source.inputs:
        axes = {axis: dims.setdefault(name, torch.export.Dim(name)) for axis, name in spec.dynamic_axes.items()}
        shapes.append(axes or None)
    dynamic = tuple(shapes) if any(s for s in shapes) else None
    program = torch.onnx.export(source.module, args, dynamo=True, input_names=source.input_names,
                                output_names=source.output_names, opset_version=opset,
                                dynamic_shapes=dynamic, external_data=external)
    if program is None:
        raise StepFailed("The torch.export-based exporter returned no program.")
    program.save(str(path), external_data=external)


@contextlib.contextmanager
def _native_output_silenced() -> Iterator[None]:
    """Drop what C++ code writes to fds 1 and 2: torch 2.13's TorchScript exporter always enables its JIT
    log (it tests the truthiness of a function) and dumps the whole IR graph on any failure."""
    import os
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 1)
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            for fd, copy in zip((1, 2), saved, strict=True):
                os.dup2(copy, fd)
                os.close(copy)


def _torchscript_export(source: SourceModel, args: tuple, path: Path, opset: int | None) -> None:
    axes = {s.name: s.dynamic_axes for s in source.inputs + source.outputs if s.dynamic_axes}
    with _native_output_silenced():
        torch.onnx.export(source.module, args, str(path), dynamo=False, verbose=False,
                          input_names=source.input_names, output_names=source.output_names,
                          opset_version=opset or 17, dynamic_axes=axes or None)


@contextlib.contextmanager
def _quiet() -> Iterator[list[warnings.WarningMessage]]:
    """The exporters print progress and warnings of their own; keep them out of the user's terminal, but
    hand the warnings to the caller: the tracer's say where a trace froze the model's control flow."""
    with (loggers_at_error("torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "onnxscript"),
          warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(io.StringIO()),
          contextlib.redirect_stderr(io.StringIO())):
        warnings.simplefilter("always")
        yield caught


_FROZE = " might cause the trace to be incorrect"


def _frozen_lines(caught: list[warnings.WarningMessage]) -> list[str]:
    """Each line of code where the TorchScript tracer turned a tensor into a Python value (a branch taken,
    a number, a loop count) that the trace keeps for every input, with what it did there."""
    lines: dict[tuple[str, int], str] = {}
    for w in caught:
        text = str(w.message)
        if issubclass(w.category, torch.jit.TracerWarning) and _FROZE in text:
            what = text.split(_FROZE, 1)[0]
            code = linecache.getline(w.filename, w.lineno).strip()
            lines.setdefault((w.filename, w.lineno), f"{w.filename}:{w.lineno}" + (f" `{code}`" if code else "")
                             + f" ({what[:1].lower()}{what[1:]})")
    return list(lines.values())


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _first_line(exc: BaseException) -> str:
    """The most telling line of an exporter error (its exception summary where it has one)."""
    text = _ANSI.sub("", str(exc)).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    summary = [ln for ln in lines if ln.startswith("<class '")]
    if summary:
        cls, _, msg = summary[0].partition(">: ")
        return f"{cls.rsplit('.', 1)[-1].rstrip(chr(39))}: {msg[:400]}"
    return f"{type(exc).__name__}: {lines[0][:400]}" if lines else type(exc).__name__


_OP_PATTERNS = (
    re.compile(r"Exporting the operator '([\w:.]+)'"),
    re.compile(r"torch\.ops\.([\w]+\.[\w]+)(?:\.\w+)?"),
    re.compile(r"target=([\w]+\.[\w]+)(?:\.\w+)?"),
    re.compile(r"\b([a-z_]\w*::\w+)\b"),
)


def _unsupported_op(*messages: str) -> str | None:
    for msg in messages:
        for pattern in _OP_PATTERNS:
            for m in pattern.finditer(msg):
                op = m.group(1).replace(".", "::", 1) if "::" not in m.group(1) else m.group(1)
                if not op.startswith(("aten::_assert", "onnx::")) and not op.startswith("prims::"):
                    return op
    return None


def _module_of_op(source: SourceModel, args: tuple, op: str) -> str | None:
    """The submodule (path and class) whose forward calls `op`, read from torch.export's module stack."""
    ns, _, name = op.partition("::")
    try:
        program = torch.export.export(source.module, args)
    except Exception:
        return None
    for node in program.graph.nodes:
        target = str(getattr(node, "target", ""))
        if node.op == "call_function" and target.startswith(f"{ns}.{name}"):
            stack = node.meta.get("nn_module_stack") or {}
            if stack:
                path, cls = list(stack.values())[-1]
                cls_name = cls if isinstance(cls, str) else getattr(cls, "__name__", str(cls))
                return f"{path or '<root>'} ({cls_name.rsplit('.', 1)[-1]})"
            return "<root module>"
    return None


def _case_inputs(source: SourceModel) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """The example inputs, three random draws like them, the example negated and scaled by 10 (a graph that
    froze a data-dependent branch or threshold rarely survives those), and where dims are symbolic the example
    at other sizes and at batch 1."""
    ex = source.example_inputs
    yield "example", source.example_feeds()
    g = torch.Generator().manual_seed(1234)
    for i in range(3):
        feeds = {}
        for name, t in ex.items():
            if t.dtype.is_floating_point:
                std = float(t.float().std()) if t.numel() > 1 else 1.0
                noise = torch.randn(t.shape, generator=g) * (std or 1.0) + float(t.float().mean())
                feeds[name] = noise.to(t.dtype).numpy()
            else:
                flat = t.flatten()
                feeds[name] = flat[torch.randperm(flat.numel(), generator=g)].reshape(t.shape).numpy()
        yield f"random-{i}", feeds
    if any(t.dtype.is_floating_point for t in ex.values()):
        for case, factor in (("negated", -1.0), ("scaled-10", 10.0)):
            yield case, {name: (t * factor if t.dtype.is_floating_point else t).numpy() for name, t in ex.items()}
    dims: dict[str, int] = {}
    batch_dims: set[str] = set()
    for spec in source.inputs:
        for axis, dim in spec.dynamic_axes.items():
            size = ex[spec.name].shape[axis]
            dims.setdefault(dim, (3 if size != 3 else 5) if axis == 0 else max(1, size - 1))
            if axis == 0 and size != 1:
                batch_dims.add(dim)
    # torch.export traces at sizes >= 2 and may assume them (a branch on the batch size), so batch 1 is a case.
    for sizes in (dims, dict.fromkeys(sorted(batch_dims), 1)):
        if sizes:
            feeds = {}
            for spec in source.inputs:
                t = ex[spec.name]
                for axis, dim in spec.dynamic_axes.items():
                    t = resize_along(t, axis, sizes.get(dim, t.shape[axis]))
                feeds[spec.name] = t.numpy()
            yield ",".join(f"{k}={v}" for k, v in sizes.items()), feeds


def _fast_path_notes(source: SourceModel, case: str, feeds: dict[str, np.ndarray],
                     ref: dict[str, np.ndarray]) -> list[str]:
    """Where eager PyTorch with its attention fast path on (its default) differs from the reference the check
    uses (fast path off, the exported math): someone comparing with plain eager output would see it."""
    if not any(isinstance(m, torch.nn.MultiheadAttention) for m in source.module.modules()):
        return []
    notes = []
    for name, fast in source.run(feeds, fast_path=True).items():
        r = ref[name].astype(np.float64)
        err = output_error(r, fast) if fast.shape == r.shape else None
        if err is None or err.max_rel <= DEFAULT_ATOL:
            continue
        differs = np.abs(fast - r) > DEFAULT_ATOL * float(np.abs(r).max(initial=0.0))
        if np.all(fast[differs] == 0):
            notes.append(f"Eager PyTorch's attention fast path zero-fills the padded positions of output {name!r} "
                         f"({int(differs.sum())} values on the {case!r} inputs); the ONNX model computes them, as "
                         "PyTorch does with the fast path off, which is what the check compares with. Ignore "
                         "padded positions when comparing with eager PyTorch.")
        else:
            notes.append(f"Eager PyTorch's attention fast path differs from its standard path on output {name!r} "
                         f"(relative {err.max_rel:.3g} on the {case!r} inputs); the ONNX model computes the standard "
                         "path, which is what the check compares with.")
    return notes


def check_parity(source: SourceModel, onnx_path: Path) -> tuple[list[OutputParity], list[str], list[str]]:
    """Run the ONNX model in ONNX Runtime and PyTorch on the same inputs: the worst error per output, the
    cases, and notes (values where PyTorch itself is not finite, eager's attention fast path)."""
    session = ort_session(onnx_path)
    worst: dict[str, OutputParity] = {}
    nonfinite: dict[str, list[str]] = {}
    compared: set[str] = set()
    cases: list[str] = []
    notes: list[str] = []
    for case, feeds in _case_inputs(source):
        cases.append(case)
        ref = source.run(feeds)
        if case == "example":
            notes += _fast_path_notes(source, case, feeds, ref)
        try:
            got = dict(zip(source.output_names, session.run(source.output_names, feeds), strict=True))
        except Exception as exc:
            raise StepFailed(f"The exported ONNX model fails in ONNX Runtime on the {case!r} inputs: "
                             f"{_first_line(exc)}",
                             hint="Mark only axes that vary as --dynamic, or report the model to modelport.") from exc
        for name, r in ref.items():
            o = got[name]
            if o.shape != r.shape:
                raise StepFailed(f"Output {name!r} has shape {o.shape} in ONNX Runtime but {r.shape} in PyTorch "
                                 f"on the {case!r} inputs.")
            err = output_error(r, o)
            if err.torch_nonfinite:
                nonfinite.setdefault(name, []).append(f"{err.torch_nonfinite} of {err.size} values on {case!r}")
            if err.torch_nonfinite < err.size or not err.size:
                compared.add(name)
            if name not in worst or err.max_rel > worst[name].max_rel:
                worst[name] = OutputParity(name, err.max_abs, err.max_rel, case)
    for name, where in nonfinite.items():
        notes.append(f"PyTorch's own output {name!r} is NaN or inf on the check inputs ({', '.join(where)}); "
                     "those values are not compared.")
    if unchecked := [n for n in source.output_names if n not in compared]:
        raise StepFailed(f"Cannot check output {unchecked[0]!r}: PyTorch's own output is NaN or inf at every value "
                         f"on every check input ({', '.join(cases)}).",
                         hint="Give example inputs the model is defined on, or pass --no-check.")
    return [worst[n] for n in source.output_names], cases, notes


def onnx_specs(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The inputs and outputs an ONNX file declares, as TensorSpecs (for `modelport inspect` and the export report)."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path), load_external_data=False)

    def spec(v: Any) -> TensorSpec:
        t = v.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim)
        return TensorSpec(v.name, dims, str(helper.tensor_dtype_to_np_dtype(t.elem_type)))

    inits = {i.name for i in model.graph.initializer}
    return ([spec(v) for v in model.graph.input if v.name not in inits], [spec(v) for v in model.graph.output])


def onnx_opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _is_file_error(exc: BaseException) -> bool:
    """A failed file operation (it has an errno), not an OSError raised for a model (inspect's "could not get
    source code" has none)."""
    return isinstance(exc, OSError) and exc.errno is not None


def export_onnx(source: SourceModel, out: str | Path, *, opset: int | None = None, atol: float = DEFAULT_ATOL,
                check: bool = True, allow_frozen_trace: bool = False) -> ExportReport:
    """Export, check and validate `source`; the file lands at `out` only when everything passed.
    `allow_frozen_trace` accepts a TorchScript fallback whose trace froze Python control flow (noted in the report)."""
    import onnx

    out = Path(out)
    if out.suffix != ".onnx":
        raise BadInput(f"The output {str(out)!r} must end in .onnx.")
    low, high = torch.onnx._constants.ONNX_MIN_OPSET, onnx.defs.onnx_opset_version()
    if opset is not None and not low <= opset <= high:
        raise BadInput(f"--opset {opset} is outside the opsets this install can write, {low} to {high}.",
                       hint="Omit --opset for the exporter's default, or pick one in that range.")
    ensure_dir(out.parent, out)
    start = time.perf_counter()
    args = export_args(source)
    external = _param_bytes(source.module) >= _TWO_GB - 2**26
    tmp = make_sibling_dir(out, "exporting")
    try:
        path = tmp / out.name
        exporter, fallback_reason, notes = "dynamo", None, []
        try:
            with _quiet(), progress.stage("export"):
                _dynamo_export(source, args, path, opset, external)
        except Exception as dynamo_exc:
            if _is_file_error(dynamo_exc):  # the disk, not the model: no fallback would help
                raise
            fallback_reason = _first_line(dynamo_exc)
            exporter = "torchscript"
            for f in tmp.iterdir():
                f.unlink()
            try:
                with _quiet() as caught, progress.stage("export (TorchScript)"):
                    _torchscript_export(source, args, path, opset)
            except Exception as ts_exc:
                if _is_file_error(ts_exc):
                    raise
                op = _unsupported_op(str(dynamo_exc), str(ts_exc))
                where = _module_of_op(source, args, op) if op else None
                what = f"the operator {op!r}" + (f" in module {where}" if where else "") if op else "the model"
                raise StepFailed(
                    f"Neither ONNX exporter could convert {what}.\n"
                    f"  torch.export-based exporter: {fallback_reason}\n"
                    f"  TorchScript exporter: {_first_line(ts_exc)}",
                    hint="Replace the operator with standard torch ops, register an ONNX translation for it "
                         "(custom_translation_table), or pick a newer --opset.") from ts_exc
            if frozen := _frozen_lines(caught):
                where = "\n  ".join(frozen)
                if not allow_frozen_trace:
                    raise StepFailed(
                        f"The torch.export-based exporter failed ({fallback_reason}), and the TorchScript "
                        "exporter's trace froze the model's Python control flow, so the ONNX file would take the "
                        f"example input's path for every input:\n  {where}",
                        hint="Write data-dependent branches as tensor ops (torch.where, or torch.cond for whole "
                             "branches) so that both paths are in the graph; or, if the frozen values never vary, "
                             "export with --allow-frozen-trace (the check still runs).") from dynamo_exc
                notes.append(f"The TorchScript trace froze Python control flow (--allow-frozen-trace); the file "
                             f"computes the example input's path for every input:\n  {where}")
        try:
            onnx.checker.check_model(str(path), full_check=False)
            onnx.shape_inference.infer_shapes_path(str(path), str(path))
        except Exception as exc:
            raise StepFailed(f"The exported ONNX model is invalid: {_first_line(exc)}") from exc
        with progress.stage("check"):
            parity, cases, checked_notes = check_parity(source, path) if check else ([], [], [])
        notes += checked_notes
        bad = [p for p in parity if not p.max_rel <= atol]
        if bad:
            detail = "; ".join(
                f"{p.name}: NaN or inf where PyTorch is finite on {p.case!r} inputs" if p.max_abs == np.inf else
                f"{p.name}: max abs {p.max_abs:.3g}, relative {p.max_rel:.3g} on {p.case!r} inputs" for p in bad)
            raise StepFailed(f"The ONNX model does not match PyTorch above tolerance {atol:g}: {detail}."
                             + "".join(f"\n{n}" for n in notes),
                             hint="Look for ops that differ between runtimes (random, in-place, data-dependent "
                                  "shapes) and for a Python `if` on an input's values or size, which export fixes "
                                  "(write it with torch.where or torch.cond); raise --atol if the error is "
                                  "acceptable, or pass --no-check.")
        inputs, outputs = onnx_specs(path)
        opset_used = onnx_opset(path)
        if opset is not None and opset_used != opset:
            raise BadInput(f"The exporter wrote opset {opset_used}, not the {opset} asked for: onnx's version "
                           "converter cannot convert this model to it.",
                           hint=f"Pick a newer --opset (it writes {opset_used} and up natively), or omit --opset.")
        size = sum(f.stat().st_size for f in tmp.iterdir())
        for f in tmp.iterdir():
            f.replace(out.parent / f.name)
    except OSError as exc:
        raise os_error(exc, out) from exc
    except StepFailed as exc:
        if out_of_space(tmp):  # the checker and shape inference report a failed write as an invalid model
            raise no_space_error(out) from exc
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ExportReport(path=out, exporter=exporter, opset=opset_used, seconds=time.perf_counter() - start,
                        size_bytes=size, inputs=inputs, outputs=outputs, parity=parity, cases=cases,
                        checked=check, atol=atol, fallback_reason=fallback_reason, notes=notes)
