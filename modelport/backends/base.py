"""The contract every backend keeps: a loader-side `Backend` that builds and loads, a `Runner` that runs.

As in Polygraphy, building (slow, once) and running (fast, many times) are separate objects; the
harness only ever sees these two classes. Runtime packages are imported inside methods, never at module
import, so that listing backends works on a machine that has none of them.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from modelport.errors import BadInput, Unavailable
from modelport.model import TensorSpec

if TYPE_CHECKING:
    from modelport.artifact import Artifact
    from modelport.bundle import ModelBundle
    from modelport.calibration import CalibrationSet

PRECISIONS = ("fp32", "fp16", "int8", "int8-dynamic")
CALIBRATED = frozenset({"int8"})


def parse_bool(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, not {text!r}")


def parse_list(text: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(text, str):
        return tuple(p.strip() for p in text.split(",") if p.strip())
    return tuple(text)


@dataclass(frozen=True)
class Option:
    """A named build option: how to read it from `--option key=value`, its default and where it applies."""

    name: str
    help: str
    default: Any = None
    parse: Callable[[Any], Any] = str
    choices: tuple[Any, ...] | None = None
    precisions: tuple[str, ...] = PRECISIONS


@dataclass(frozen=True)
class Recipe:
    """What to build: a precision and the complete, validated option values (defaults filled in)."""

    precision: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"precision": self.precision,
                "options": {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(self.options.items())}}


class Runner(ABC):
    """Runs one loaded artifact: named float/int numpy arrays in, named arrays out, as the user feeds them.

    Layout (NCHW/NHWC), dtype and quantized-I/O conversions happen here, never in the caller.
    """

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    @abstractmethod
    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None:  # noqa: B027 (optional hook: most runtimes free on garbage collection)
        """Release the runtime's resources; the runner is unusable afterwards."""

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
        would want to know about the build (ops kept in float and why, choices made for this CPU...).
        """

    @abstractmethod
    def load(self, artifact: Artifact, threads: int | None = None) -> Runner: ...

