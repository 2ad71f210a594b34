"""The contract every backend keeps: a loader-side `Backend` that builds and loads, a `Runner` that runs.

As in Polygraphy, building (slow, once) and running (fast, many times) are separate objects; the
harness only ever sees these two classes. Runtime packages are imported inside methods, never at module
import, so that listing backends works on a machine that has none of them.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn

import numpy as np

from modelport.errors import BadInput, StepFailed, Unavailable
from modelport.options import Option
from modelport.specs import TensorSpec

if TYPE_CHECKING:
    from modelport.artifact import Artifact
    from modelport.bundle import ModelBundle
    from modelport.calibration import CalibrationSet

CALIBRATED = frozenset({"int8"})
# A backend's build-time INT8 timing is a few interleaved rounds: within 5% of its FP32 is "as fast", not "slower";
# below this speed-up the build warns that INT8 does not pay (ONNX Runtime, OpenVINO, TFLite).
SLOWER_THAN_FP32 = 0.95


@dataclass(frozen=True)
class Recipe:
    """What to build: a precision and the complete, validated option values (defaults filled in)."""

    precision: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"precision": self.precision,
                "options": {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(self.options.items())}}


@dataclass(frozen=True)
class RuntimeOp:
    """One op of a compiled (device-side) model: what the runtime really executes and in which precision."""

    name: str
    type: str
    precision: str
    original: tuple[str, ...]

    def comes_from(self, name: str) -> bool:
        """Whether this runtime op executes the IR or ONNX node `name` (fused layers carry several)."""
        return any(o == name or o.startswith(name + "/") for o in (self.name, *self.original))


@dataclass(frozen=True)
class _Feed:
    """How one input is checked: its spec, dtype, rank, static dims and symbolic dims, worked out once."""

    spec: TensorSpec
    dtype: np.dtype
    rank: int
    static: tuple[tuple[int, int], ...]
    symbolic: tuple[tuple[int, str], ...]


class Runner(ABC):
    """Runs one loaded artifact: named float/int numpy arrays in, named arrays out, as the user feeds them.

    `run` is the same for every runtime: it checks the feeds against `inputs` once (names, rank, static
    dims, symbolic dims shared between inputs, dtype with exact or standard casts only), so a wrong feed
    is a BadInput naming the input rather than a runtime's traceback, then calls the backend's `_run`.
    Layout (NCHW/NHWC), dtype and quantized-I/O conversions the runtime needs happen in `_run`, never in
    the caller. The optional capabilities (`run_many`, `runtime_ops`, `tensor_names` with `fused_activations` and
    `intermediates`) have
    defaults here.
    """

    name: str = "custom"  # in messages: "the openvino runner"
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    closed: bool = False

    def run(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return self._run(self.checked(feeds))

    @abstractmethod
    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run feeds that `checked` passed: every input, C-contiguous, its spec's dtype, rank and static dims."""

    def run_many(self, feeds: Sequence[Mapping[str, Any]]) -> list[dict[str, np.ndarray]]:
        """Many independent inputs, results in order; runtimes with a throughput mode run them concurrently."""
        return [self.run(f) for f in feeds]

    def runtime_ops(self) -> list[RuntimeOp]:
        """The ops the runtime compiled, with the precision each really runs in."""
        raise Unavailable(f"The {self.name} runner cannot read back the ops and precisions its runtime compiled.")

    def tensor_names(self) -> list[str]:
        """The intermediate tensors `intermediates` can read, in execution order, named as the runtime names them
        (ONNX tensor names where the artifact keeps them; a tensor the runtime fused away is not listed)."""
        raise Unavailable(f"The {self.name} runner cannot expose intermediate tensors.",
                          hint="Debug this artifact's layers on ONNX Runtime, OpenVINO or TFLite.")

    def fused_activations(self) -> dict[str, str]:
        """Tensors of `tensor_names` written by an op with an activation fused into it (name -> RELU, RELU6...):
        such a tensor is the activation's output, not the op's. Empty where the runtime keeps the ONNX names."""
        return {}

    def tensor_producers(self) -> dict[str, tuple[str, str | None]]:
        """Tensors of `tensor_names` -> the runtime's type of the op writing each and that op's first input (a name
        of `tensor_names`, or None): how debug finds ops of no module where the runtime names tensors by module.
        Empty where the runtime keeps the ONNX names."""
        return {}

    def intermediates(self, feeds: Mapping[str, Any], names: Sequence[str]) -> dict[str, np.ndarray]:
        """The tensors `names` (from `tensor_names`) computed on `feeds` in the runtime itself, for per-layer
        debugging: float32, quantized tensors dequantized, in the runtime's own layout (TFLite: NHWC)."""
        raise Unavailable(f"The {self.name} runner cannot expose intermediate tensors.",
                          hint="Debug this artifact's layers on ONNX Runtime, OpenVINO or TFLite.")

    def checked(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The feeds as `_run` takes them, or a BadInput naming the input, what the model takes and what was given.

        It sits in every timed run, so the common case (the right arrays) only compares and looks up.
        """
        if self.closed:
            raise StepFailed(f"The {self.name} runner was closed; load the artifact again to run it.")
        plan = self._feed_plan
        if len(feeds) != len(plan):
            self._refuse_names(feeds)
        out: dict[str, np.ndarray] = {}
        sizes: dict[str, tuple[int, str]] = {}
        for name, feed in plan.items():
            try:
                a = feeds[name]
            except (KeyError, IndexError, TypeError):
                self._refuse_names(feeds)
            if type(a) is not np.ndarray:
                a = _as_array(a, feed.spec)
            if a.ndim != feed.rank:
                raise BadInput(f"Input {name!r} has shape {a.shape} (rank {a.ndim}); the model takes {feed.spec} "
                               f"(rank {feed.rank}).")
            shape = a.shape
            for axis, dim in feed.static:
                if shape[axis] != dim:
                    raise BadInput(f"Input {name!r} has shape {shape}, which does not fit the model's {feed.spec}: "
                                   f"axis {axis} must be {dim}.")
            for axis, dim in feed.symbolic:
                first = sizes.setdefault(dim, (shape[axis], name))
                if first[0] != shape[axis]:
                    raise BadInput(f"Input {name!r} has {dim}={shape[axis]} (shape {shape}) but input {first[1]!r} "
                                   f"has {dim}={first[0]}; inputs sharing a dim must agree ({feed.spec}).")
            if a.dtype != feed.dtype:
                a = _cast(a, feed)
            if not a.flags.c_contiguous:
                a = np.ascontiguousarray(a)
            out[name] = a
        return out

    @functools.cached_property
    def _feed_plan(self) -> dict[str, _Feed]:
        return {s.name: _Feed(s, np.dtype(s.dtype), len(s.shape),
                              tuple((i, d) for i, d in enumerate(s.shape) if isinstance(d, int)),
                              tuple((i, d) for i, d in enumerate(s.shape) if isinstance(d, str)))
                for s in self.inputs}

    def _refuse_names(self, feeds: Mapping[str, Any]) -> NoReturn:
        names = [s.name for s in self.inputs]
        if not isinstance(feeds, Mapping):
            raise BadInput(f"Feeds are a {type(feeds).__name__}; a runner takes a dict of input name to array.",
                           hint=f"Pass a dict like {{{', '.join(f'{n!r}: array' for n in names)}}}.")
        missing, unknown = [n for n in names if n not in feeds], sorted(map(str, set(feeds) - set(names)))
        raise BadInput(f"The model takes inputs {names}; it was given {sorted(map(str, feeds))} "
                       f"(missing {missing or 'none'}, unknown {unknown or 'none'}).",
                       hint=f"Key the feeds by the model's input names: {', '.join(map(str, self.inputs))}.")

    def close(self) -> None:
        """Release the runtime's resources; running afterwards is a StepFailed, closing again does nothing."""
        if not self.closed:
            self.closed = True
            self._release()

    def _release(self) -> None:  # noqa: B027 (optional hook: most runtimes free on garbage collection)
        """Drop the runtime's objects."""

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _as_array(value: Any, spec: TensorSpec) -> np.ndarray:
    """A feed that is not an ndarray yet (a list, a CPU torch tensor, a scalar) as one."""
    try:
        return np.asarray(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise BadInput(f"Input {spec.name!r} is a {type(value).__name__} that is not an array ({exc}); "
                       f"the model takes {spec}.") from None


def _cast(a: np.ndarray, feed: _Feed) -> np.ndarray:
    """`a` as the input's dtype where the cast is exact or standard: a safe cast (int32 to int64, uint8 to
    float32), float to narrower float (float64 to float32 only rounds), or integer to narrower integer when
    every value fits. Anything else (float to int, int64 to float32, text) would change what the model sees."""
    want = feed.dtype
    if np.can_cast(a.dtype, want, "safe") or (a.dtype.kind == want.kind == "f"):
        return a.astype(want)
    if a.dtype.kind in "iu" and want.kind in "iu":
        cast = a.astype(want)
        if np.array_equal(cast, a):
            return cast
        raise BadInput(f"Input {feed.spec.name!r} is {a.dtype} with values that the model's {want} input cannot "
                       f"hold; the model takes {feed.spec}.")
    raise BadInput(f"Input {feed.spec.name!r} is {a.dtype}; the model takes {feed.spec}, and {a.dtype} does not "
                   f"convert to {want} exactly.", hint=f"Feed {feed.spec.name!r} as {want}.")


class Backend(ABC):
    """Builds runtime-native artifacts from a ModelBundle and loads them into Runners."""

    name: ClassVar[str]
    options: ClassVar[tuple[Option, ...]] = ()

    @property
    def entry(self):  # -> BackendEntry; the table is the one source of capabilities
        from modelport.backends import BACKENDS

        return BACKENDS[self.name]

    def available(self) -> tuple[bool, str]:
        """Whether this machine can build and run this backend, and if not, why and what to install."""
        for module in self.entry.imports:
            try:
                importlib.import_module(module)
            except Exception as exc:
                extra = f"pip install 'modelport[{self.entry.extra}]'" if self.entry.extra else "reinstall modelport"
                return False, f"{module} is not importable ({type(exc).__name__}: {exc}); {extra}"
        return True, "ok"

    def runnable(self) -> tuple[bool, str]:
        """Whether this machine can load and run this backend's artifacts (a lighter need than building)."""
        errors = []
        for module in self.entry.runtimes:
            try:
                importlib.import_module(module)
                return True, "ok"
            except Exception as exc:
                errors.append(f"{module} ({type(exc).__name__}: {exc})")
        extra = f"pip install 'modelport[{self.entry.extra}]'" if self.entry.extra else "reinstall modelport"
        return False, f"none of {', '.join(errors)} is importable; {extra}"

    def require(self, *, to_run: bool = False) -> None:
        ok, reason = self.runnable() if to_run else self.available()
        if not ok:
            raise Unavailable(f"The {self.name} backend is not available here: {reason}")

    def versions(self) -> dict[str, str]:
        """Versions of the packages this backend builds with, for the manifest and the build key."""
        out = {}
        for dist in self.entry.packages:
            try:
                out[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                continue
        return out

    def reads_ranges_file(self, recipe: Recipe) -> bool:
        """Whether this recipe's build takes activation ranges from a file (`ranges_file`, e.g. QAT's): where the
        backend declares the option at the recipe's precision."""
        return "ranges_file" in recipe.options

    def recipe(self, precision: str, options: Mapping[str, Any] | None = None) -> Recipe:
        """Validate a precision and options; unknown or malformed options are errors, never ignored."""
        if precision not in self.entry.precisions:
            raise BadInput(f"The {self.name} backend does not build {precision!r}.",
                           hint=f"Its precisions are {', '.join(self.entry.precisions)}.")
        known = {o.name: o for o in self.options if precision in o.precisions}
        given = dict(options or {})
        unknown = sorted(set(given) - set(known))
        if unknown:
            listing = ", ".join(sorted(known)) or "none"
            raise BadInput(f"Unknown option(s) {', '.join(unknown)} for {self.name} {precision}.",
                           hint=f"Options it takes at {precision}: {listing}.")
        values = {}
        for name, opt in known.items():
            raw = given.get(name, opt.default)
            if raw is None:
                values[name] = None
                continue
            try:
                value = opt.parse(raw)
            except (TypeError, ValueError) as exc:
                raise BadInput(f"Option {name}={raw!r} for {self.name}: {exc}.", hint=opt.help) from None
            if opt.choices and value not in opt.choices:
                allowed = ", ".join(map(str, opt.choices))
                raise BadInput(f"Option {name}={value!r} for {self.name} is not one of {allowed}.")
            values[name] = value
        return Recipe(precision, values)

    @abstractmethod
    def build(self, bundle: ModelBundle, recipe: Recipe, calibration: CalibrationSet | None,
              out_dir: Path) -> dict[str, Any]:
        """Write the runtime's files into `out_dir` (a fresh directory) and return details for the manifest.

        The details must include `main_file` (the file `load` opens) and may include anything a user
        would want to know about the build (ops kept in float and why, choices made for this CPU...). A
        `latency` entry's `warning` (INT8 measured slower than FP32) becomes the build's `warning`, which the
        build command prints.
        """

    @abstractmethod
    def load(self, artifact: Artifact, threads: int | None = None) -> Runner: ...

