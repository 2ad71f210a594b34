"""Load a user's PyTorch model into a SourceModel: module, named tensor specs, example inputs, weight hash.

MODEL is `path/to/file.py:factory`, `package.module:factory` or a `.pt2` file saved with
`torch.export.save`. A factory returns an `nn.Module` (its inputs then come from `--input` specs) or
`(module, example_inputs)` with the inputs as a tuple or a dict of tensors.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import logging.handlers
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modelport.errors import BadInput, StepFailed
from modelport.specs import DTYPES, Dim, TensorSpec, dtype_name, parse_dynamic_spec, parse_input_spec
from modelport.usercode import import_user_callable

_TORCH_DTYPES = {name: getattr(torch, name) for name in DTYPES}


@dataclass
class SourceModel:
    """A PyTorch model ready to export: eval-mode module, named specs, example inputs and a weight hash."""

    name: str
    origin: str
    module: torch.nn.Module
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    example_inputs: dict[str, torch.Tensor]
    weights_hash: str
    code_hash: str = ""
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    @property
    def content_hash(self) -> str:
        """Weights, code and the I/O contract: what every artifact built from this model depends on."""
        h = hashlib.sha256(f"{self.weights_hash}:{self.code_hash}".encode())
        for spec in self.inputs + self.outputs:
            h.update(str(spec).encode())
        return h.hexdigest()[:16]

    def example_feeds(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy() for k, v in self.example_inputs.items()}

    def run(self, feeds: Mapping[str, np.ndarray | torch.Tensor], *, fast_path: bool = False) -> dict[str, np.ndarray]:
        """Run the PyTorch module on named inputs; outputs keyed by output name. This is the reference every
        export is compared with, so it computes what an exported graph does (see `attention_fast_path`)."""
        args = [torch.as_tensor(np.asarray(feeds[n])) if not isinstance(feeds[n], torch.Tensor) else feeds[n]
                for n in self.input_names]
        with torch.inference_mode(), attention_fast_path(fast_path):
            out = self.module(*args)
        return dict(zip(self.output_names, (t.detach().cpu().numpy() for t in flatten_outputs(out)), strict=True))

    def with_dynamic(self, dynamic: Sequence[tuple[str, int, str]]) -> SourceModel:
        """Mark input axes symbolic; output specs are re-derived by probing the module."""
        if not dynamic:
            return self
        inputs = {s.name: list(s.shape) for s in self.inputs}
        for name, axis, dim in dynamic:
            if name not in inputs:
                raise BadInput(f"--dynamic names input {name!r}, but the model's inputs are {list(inputs)}.")
            if axis >= len(inputs[name]):
                raise BadInput(f"--dynamic {name}:{axis}={dim}: input {name!r} has rank {len(inputs[name])}.")
            inputs[name][axis] = dim
        new_inputs = [replace(s, shape=tuple(inputs[s.name])) for s in self.inputs]
        outputs = output_specs(self.module, new_inputs, self.example_inputs)
        return replace(self, inputs=new_inputs, outputs=outputs)


@contextlib.contextmanager
def attention_fast_path(enabled: bool) -> Iterator[None]:
    """Turn PyTorch's eager attention fast path on or off: with a padding mask it runs the encoder on nested
    tensors and zero-fills the padded positions, which an exported graph (and eager with it off) computes."""
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(enabled)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def flatten_outputs(out: Any) -> list[torch.Tensor]:
    """Tensors of a forward() result in a stable order (tuples, lists, dicts and dataclass-like outputs)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, Mapping):
        return [t for v in out.values() for t in flatten_outputs(v)]
    if isinstance(out, list | tuple):
        return [t for v in out for t in flatten_outputs(v)]
    if out is None:
        return []
    raise StepFailed(f"The model returned a {type(out).__name__}; modelport needs tensors, tuples or dicts of them.")


def _output_names(out: Any) -> list[str]:
    if isinstance(out, Mapping):
        names = []
        for key, value in out.items():
            sub = flatten_outputs(value)
            names += [str(key)] if len(sub) == 1 else [f"{key}_{i}" for i in range(len(sub))]
        return names
    n = len(flatten_outputs(out))
    return ["output"] if n == 1 else [f"output_{i}" for i in range(n)]


def resize_along(t: torch.Tensor, axis: int, size: int) -> torch.Tensor:
    """Repeat or truncate a tensor along one axis: a valid input of another size for probing and checks."""
    if t.shape[axis] == size:
        return t
    reps = -(-size // t.shape[axis])
    tiled = torch.cat([t] * reps, dim=axis)
    return tiled.narrow(axis, 0, size)


def export_args(source: SourceModel, dynamic: bool = True) -> tuple[torch.Tensor, ...]:
    """The example inputs to hand torch.export: every symbolic dim at size >= 2 when kept dynamic (torch.export
    specialises dims of size 0 and 1), else the batch axis at 1 and other dims as in the examples."""
    args = []
    for spec in source.inputs:
        t = source.example_inputs[spec.name]
        for axis in spec.dynamic_axes:
            if dynamic and t.shape[axis] < 2:
                t = resize_along(t, axis, 2)
            elif not dynamic and axis == 0:
                t = resize_along(t, axis, 1)
        args.append(t)
    return tuple(args)


def output_specs(module: torch.nn.Module, inputs: list[TensorSpec],
                 examples: Mapping[str, torch.Tensor]) -> list[TensorSpec]:
    """Output names, dtypes and shapes; an output dim that follows a symbolic input dim becomes symbolic."""
    args = [examples[s.name] for s in inputs]
    with torch.inference_mode():
        out = module(*args)
    tensors = flatten_outputs(out)
    names = _output_names(out)
    shapes: list[list[Dim]] = [list(t.shape) for t in tensors]
    for dim in sorted({d for s in inputs for d in s.dynamic_axes.values()}):
        probe_args = []
        new_size = None
        for spec, arg in zip(inputs, args, strict=True):
            for axis, name in spec.dynamic_axes.items():
                if name == dim:
                    new_size = arg.shape[axis] + 1
                    arg = resize_along(arg, axis, new_size)
            probe_args.append(arg)
        try:
            with torch.inference_mode():
                probed = flatten_outputs(module(*probe_args))
        except Exception as exc:
            raise BadInput(f"The model fails when dim {dim!r} changes size: {exc}",
                           hint="Only mark axes dynamic that the model accepts at any size.") from exc
        for shape, t_old, t_new in zip(shapes, tensors, probed, strict=True):
            for i, (a, b) in enumerate(zip(t_old.shape, t_new.shape, strict=True)):
                if a != b and isinstance(shape[i], int):
                    shape[i] = dim if b == new_size else f"{dim}_{i}"
    return [TensorSpec(n, tuple(s), dtype_name(t.dtype)) for n, s, t in zip(names, shapes, tensors, strict=True)]


def weights_hash(module: torch.nn.Module) -> str:
    """A content hash of the module's class, parameter and buffer names, dtypes and values."""
    h = hashlib.sha256(type(module).__qualname__.encode())
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


_PLAIN = (bool, int, float, str, type(None))


def code_hash(module: torch.nn.Module) -> str:
    """A hash of what the exported graph depends on besides the weights: the source files of every module
    class in the tree (so an edited forward() or helper in them counts), generated code of traced modules,
    and each module's plain settings (flags, sizes, modes), so a cached export is never served stale."""
    h = hashlib.sha256()
    files: set[str] = set()
    for name, sub in module.named_modules():
        cls = type(sub)
        h.update(f"{name}={cls.__module__}.{cls.__qualname__};".encode())
        settings = {k: v for k, v in vars(sub).items() if not k.startswith("_") and _is_plain(v)}
        h.update(repr(sorted(settings.items())).encode())
        if isinstance(getattr(sub, "code", None), str):
            h.update(sub.code.encode())
        with contextlib.suppress(TypeError):  # built-in or dynamically made classes have no file
            files.add(inspect.getsourcefile(cls) or "")
    for path in sorted(f for f in files if f and Path(f).is_file()):
        h.update(Path(path).read_bytes())
    return h.hexdigest()[:16]


def _is_plain(value: Any) -> bool:
    if isinstance(value, tuple | list):
        return all(_is_plain(v) for v in value)
    return isinstance(value, _PLAIN)


def random_inputs(specs: Sequence[TensorSpec], sizes: Mapping[str, int] | None = None,
                  seed: int = 0) -> dict[str, torch.Tensor]:
    """Inputs drawn to the specs: normal floats, small non-negative integers, booleans."""
    _check_fit_in_memory(specs, sizes)
    g = torch.Generator().manual_seed(seed)
    out = {}
    for s in specs:
        shape = s.concrete(sizes)
        dtype = _TORCH_DTYPES[s.dtype]
        if dtype.is_floating_point:
            out[s.name] = torch.randn(shape, generator=g).to(dtype)
        elif dtype == torch.bool:
            out[s.name] = torch.randint(0, 2, shape, generator=g).bool()
        else:
            out[s.name] = torch.randint(0, 2, shape, generator=g, dtype=dtype)
    return out


def _check_fit_in_memory(specs: Sequence[TensorSpec], sizes: Mapping[str, int] | None) -> None:
    """Refuse an input whose example tensor would take over a quarter of the free memory, before allocating
    it (the model then runs on it several times): a mistyped --input shape is a clear error, not an
    out-of-memory crash."""
    import psutil

    available = psutil.virtual_memory().available
    for s in specs:
        nbytes = math.prod(s.concrete(sizes)) * _TORCH_DTYPES[s.dtype].itemsize
        if nbytes > available // 4:
            raise BadInput(f"Input {s} would take {nbytes / 2**30:.1f} GiB as an example tensor, more than a quarter "
                           f"of the {available / 2**30:.1f} GiB of memory free.",
                           hint="Check the shape in --input; example inputs need only a small batch.")


def _positional_names(module: torch.nn.Module, n: int) -> list[str]:
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        params = []
    names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return names[:n] if len(names) >= n else [f"input_{i}" for i in range(n)]


def _normalise_examples(module: torch.nn.Module, examples: Any, ref: str) -> dict[str, torch.Tensor]:
    if isinstance(examples, torch.Tensor):
        examples = (examples,)
    if isinstance(examples, Mapping):
        order = _positional_names(module, len(examples))
        keys = sorted(examples, key=order.index) if set(examples) <= set(order) else list(examples)
        items = {k: examples[k] for k in keys}
    elif isinstance(examples, list | tuple):
        items = dict(zip(_positional_names(module, len(examples)), examples, strict=True))
    else:
        raise BadInput(f"The factory {ref!r} returned example inputs of type {type(examples).__name__}.",
                       hint="Return (module, (tensor, ...)) or (module, {'name': tensor, ...}).")
    for k, v in items.items():
        if not isinstance(v, torch.Tensor):
            raise BadInput(f"Example input {k!r} from {ref!r} is a {type(v).__name__}, not a torch.Tensor.")
    return items


def _check_specs_fit(specs: Sequence[TensorSpec], module: torch.nn.Module, ref: str) -> dict[str, torch.Tensor]:
    examples = random_inputs(specs)
    try:
        with torch.inference_mode():
            module(*examples.values())
    except Exception as exc:
        given = " ".join(str(s) for s in specs)
        raise BadInput(f"The model {ref!r} does not accept inputs {given}: {type(exc).__name__}: {exc}",
                       hint="Give one --input NAME:SHAPE[:DTYPE] per forward() argument, in order.") from exc
    return examples


def _load_pt2(path: Path) -> tuple[torch.nn.Module, dict[str, torch.Tensor], list[tuple[str, int, str]]]:
    # torch logs the reader's traceback (the real cause) before raising "check the warnings above": keep the
    # log off the console and put its cause in the message
    log, kept = logging.getLogger("torch.export"), logging.handlers.BufferingHandler(64)
    log.addHandler(kept)
    propagate, log.propagate = log.propagate, False
    try:
        program = torch.export.load(str(path))
    except Exception as exc:
        causes = [r.exc_info[1] for r in kept.buffer if r.exc_info and r.exc_info[1] is not None]
        why = str(causes[-1]).split(". ")[0] if causes else str(exc)
        raise BadInput(f"Cannot load {str(path)!r} as a torch.export program: {why}",
                       hint="It may be damaged, or saved with torch.save rather than torch.export.save: save it "
                            "with torch.export.save(torch.export.export(model, args), 'model.pt2').") from exc
    finally:
        log.removeHandler(kept)
        log.propagate = propagate
    names = [s.arg.name for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    dynamic: list[tuple[str, int, str]] = []
    examples: dict[str, torch.Tensor] = {}
    for name in names:
        fake = placeholders[name].meta["val"]
        shape = []
        for axis, d in enumerate(fake.shape):
            if isinstance(d, torch.SymInt):
                dynamic.append((name, axis, "batch" if axis == 0 else f"{name}_dim{axis}"))
                hint = d.node.hint
                shape.append(int(hint) if hint is not None else 2)
            else:
                shape.append(int(d))
        examples[name] = random_inputs([TensorSpec(name, tuple(shape), dtype_name(fake.dtype))])[name]
    stored = getattr(program, "example_inputs", None)
    if stored and stored[0] and len(stored[0]) == len(names):
        examples = dict(zip(names, stored[0], strict=True))
    module = program.module()
    # torch.export makes train()/eval() raise on the unlifted module, yet converters (litert-torch) and
    # fine-tuning call them; the graph was captured in one mode, so the restored nn.Module methods only set flags.
    del module.train, module.eval
    return module, examples, dynamic


def _check_specs_match(given: Sequence[TensorSpec], found: Sequence[TensorSpec]) -> None:
    """`--input` beside example inputs (a factory's, a .pt2's) must describe them, never be silently ignored."""
    by_name = {s.name: s for s in given}
    for spec in found:
        want = by_name[spec.name]
        differs = " and ".join(w for w, d in (("shape", want.shape != spec.shape), ("dtype", want.dtype != spec.dtype))
                               if d)
        if differs:
            raise BadInput(f"--input {want} does not match the model's example input {spec} (different {differs}).",
                           hint="The example inputs the model comes with define its inputs: drop --input, or "
                                "change the examples.")


def _unique_names(specs: Sequence[TensorSpec]) -> None:
    names = [s.name for s in specs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise BadInput(f"--input names {', '.join(map(repr, twice))} more than once.",
                       hint="Give one --input NAME:SHAPE[:DTYPE] per model input.")


def _unique_axes(dynamic: Sequence[tuple[str, int, str]]) -> None:
    seen: dict[tuple[str, int], str] = {}
    for name, axis, dim in dynamic:
        if seen.setdefault((name, axis), dim) != dim:
            raise BadInput(f"--dynamic names axis {axis} of input {name!r} twice, as {seen[name, axis]!r} and {dim!r}.",
                           hint="Give each input axis one --dynamic NAME:AXIS=DIM.")


def load_model(ref: str, inputs: Sequence[str | TensorSpec] = (),
               dynamic: Sequence[str | tuple[str, int, str]] = ()) -> SourceModel:
    """Load MODEL into a SourceModel; `inputs` as `NAME:SHAPE[:DTYPE]`, `dynamic` as `NAME:AXIS=DIM`."""
    specs = [parse_input_spec(s) if isinstance(s, str) else s for s in inputs]
    _unique_names(specs)
    dyn = [parse_dynamic_spec(d) if isinstance(d, str) else d for d in dynamic]
    _unique_axes(dyn)
    if ref.endswith(".pt2"):
        path = Path(ref)
        if not path.is_file():
            raise BadInput(f"Model file {ref!r} does not exist.")
        module, examples, found_dynamic = _load_pt2(path)
        name = path.stem
        dyn = dyn or found_dynamic
    else:
        factory, name = import_user_callable(ref)
        try:
            made = factory()
        except BadInput:
            raise
        except Exception as exc:
            raise BadInput(f"The factory {ref!r} raised {type(exc).__name__}: {exc}",
                           hint="Run it in Python to see the traceback, or pass --debug.") from exc
        if isinstance(made, torch.nn.Module):
            module, examples = made, None
        elif isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], torch.nn.Module):
            module, examples = made[0], _normalise_examples(made[0], made[1], ref)
        else:
            raise BadInput(f"The factory {ref!r} returned a {type(made).__name__}.",
                           hint="Return an nn.Module, or a pair (module, example_inputs).")
        module.eval()
        if examples is None:
            if not specs:
                raise BadInput(f"The factory {ref!r} returned a module without example inputs.",
                               hint="Describe each input with --input NAME:SHAPE[:DTYPE], e.g. --input x:1x3x224x224.")
            examples = _check_specs_fit(specs, module, ref)
    if specs and set(examples) != {s.name for s in specs}:
        raise BadInput(f"--input names {[s.name for s in specs]} do not match the model's inputs {list(examples)}.")
    input_specs = [TensorSpec(k, tuple(v.shape), dtype_name(v.dtype)) for k, v in examples.items()]
    if specs:
        _check_specs_match(specs, input_specs)
    try:
        outputs = output_specs(module, input_specs, examples)
    except Exception as exc:
        if isinstance(exc, BadInput):
            raise
        raise BadInput(f"The model {ref!r} fails on its example inputs: {type(exc).__name__}: {exc}") from exc
    source = SourceModel(name=name, origin=ref, module=module, inputs=input_specs, outputs=outputs,
                         example_inputs=examples, weights_hash=weights_hash(module), code_hash=code_hash(module))
    return source.with_dynamic(dyn)
