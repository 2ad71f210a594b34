"""The kinds of runner a bench row measures, in one table (KINDS): how the plan names one and how the measuring
process loads it.

A row's runner is the PyTorch FP32 reference (`torch`), a built artifact loaded by its backend (`artifact`) or
a user's `--runner NAME=file.py:fn` (`python`). The parent (matrix.py) writes a runner spec, `{"kind": K, ...}`
made by `runner_spec`, into each runner job (jobs.py); the measuring process (worker.py) loads it with
`load_runner`, and isolate.py asks `needs_torch` whether that process imports torch. A new kind of runner is
one `RunnerKind` in KINDS; the model itself travels as `model_spec` and comes back with `load_source`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelport.backends.base import Runner
from modelport.errors import StepFailed
from modelport.specs import TensorSpec

if TYPE_CHECKING:
    from modelport.model import SourceModel


def model_spec(source: SourceModel) -> dict[str, Any]:
    """How a measuring process reloads the same model: origin, concrete input specs, dynamic axes, hash."""
    inputs = [str(TensorSpec(name, tuple(t.shape), s.dtype))
              for s in source.inputs for name, t in [(s.name, source.example_inputs[s.name])]]
    dynamic = [f"{s.name}:{axis}={dim}" for s in source.inputs for axis, dim in s.dynamic_axes.items()]
    return {"origin": source.origin, "inputs": inputs, "dynamic": dynamic, "content_hash": source.content_hash}


def load_source(spec: Mapping[str, Any]) -> Any:
    """The model being benched, reloaded from its origin; refuses a model whose content hash differs."""
    from modelport.model import load_model

    source = load_model(spec["origin"], spec["inputs"], spec["dynamic"])
    if source.content_hash != spec["content_hash"]:
        raise RuntimeError(f"{spec['origin']} loaded in the measuring process is not the model being benched "
                           f"(content hash {source.content_hash}, expected {spec['content_hash']}); does its "
                           "factory depend on random state?")
    return source


class TorchRunner(Runner):
    """The PyTorch FP32 source model under the Runner contract: the baseline row, its feeds checked alike."""

    name = "PyTorch"

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self._source = load_source(spec)
        self.inputs, self.outputs = self._source.inputs, self._source.outputs

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._source.run(feeds)


class UserRunner(Runner):
    """A `--runner NAME=file.py:fn` object under the Runner contract, fed the model's inputs.

    `fn(threads=N)` returns any object with `run(feeds)`; its feeds are checked as every runtime's are,
    and a result that is not a dict of arrays is a StepFailed naming the runner, not a puzzle in fidelity.
    """

    def __init__(self, spec: Mapping[str, Any], threads: int) -> None:
        from modelport.usercode import import_user_callable

        self.name = spec["ref"]
        self.inputs = [TensorSpec.from_json(s) for s in spec["inputs"]]
        self.outputs = [TensorSpec.from_json(s) for s in spec["outputs"]]
        factory, _ = import_user_callable(spec["ref"], "runner factory", "--runner")
        self._user = factory(threads=threads)
        if not callable(getattr(self._user, "run", None)):
            raise StepFailed(f"The runner {self.name} returned a {type(self._user).__name__} without a run(feeds) "
                             "method.", hint="Return an object whose run(feeds) returns {output name: array}.")

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = self._user.run(feeds)
        if not isinstance(result, Mapping):
            raise StepFailed(f"The runner {self.name} returned a {type(result).__name__} from run(feeds), not a dict "
                             "of arrays.", hint="Return {output name: numpy array}.")
        out = {}
        for key, value in result.items():
            array = np.asarray(value)
            if array.dtype.kind not in "biufc":
                raise StepFailed(f"The runner {self.name} returned {key!r} as a {type(value).__name__}, not an array "
                                 "of numbers.", hint="Return {output name: numpy array}.")
            out[key] = array
        return out

    def _release(self) -> None:
        if callable(close := getattr(self._user, "close", None)):
            close()


def _load_artifact(spec: Mapping[str, Any], threads: int) -> Runner:
    from modelport.loading import load_artifact

    return load_artifact(spec["path"], threads=threads)


def _user_spec(source: SourceModel, options: Mapping[str, Any], artifact: Path | None) -> dict[str, Any]:
    return {"ref": options["runner"], "inputs": [s.to_json() for s in source.inputs],
            "outputs": [s.to_json() for s in source.outputs]}


@dataclass(frozen=True, kw_only=True)
class RunnerKind:
    """What the bench does for one kind of runner, on each side of the process boundary."""

    name: str
    builds: bool  # an artifact is built first, and the runner loads it
    reference: bool  # the PyTorch FP32 reference itself: its fidelity is exact by definition, not measured
    torch: bool  # its measuring process imports torch (an artifact's runner needs numpy and its runtime only)
    spec: Callable[[SourceModel, Mapping[str, Any], Path | None], dict[str, Any]]  # (source, options, artifact dir)
    load: Callable[[Mapping[str, Any], int], Runner]  # (spec, threads), in the measuring process


KINDS: dict[str, RunnerKind] = {k.name: k for k in (
    RunnerKind(name="torch", builds=False, reference=True, torch=True,
               spec=lambda source, options, artifact: model_spec(source), load=lambda spec, threads: TorchRunner(spec)),
    RunnerKind(name="artifact", builds=True, reference=False, torch=False,
               spec=lambda source, options, artifact: {"path": str(artifact)}, load=_load_artifact),
    RunnerKind(name="python", builds=False, reference=False, torch=True, spec=_user_spec, load=UserRunner),
)}


def runner_spec(kind: str, source: SourceModel, options: Mapping[str, Any], artifact: Path | None = None
                ) -> dict[str, Any]:
    """The JSON a runner job names its runner by: the kind, and what loading that kind needs."""
    return {"kind": kind, **KINDS[kind].spec(source, options, artifact)}


def load_runner(spec: Mapping[str, Any], threads: int) -> Runner:
    """The runner a spec names, loaded in this (the measuring) process."""
    kind = KINDS.get(spec["kind"])
    if kind is None:
        raise ValueError(f"unknown runner kind {spec['kind']!r}")
    return kind.load(spec, threads)


def needs_torch(job: Mapping[str, Any]) -> bool:
    """Whether a job's process runs torch: every job but one that measures a runner of a kind that needs no torch
    (an artifact's: numpy and its runtime only), which then neither imports torch nor inherits it from its server."""
    spec = job.get("runner")
    kind = KINDS.get(spec["kind"]) if spec else None
    return kind is None or kind.torch
