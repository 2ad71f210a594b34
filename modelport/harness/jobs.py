"""The jobs a measuring process runs: one frozen dataclass per kind, the fields that kind needs.

The parent (matrix.py, interleave.py) makes a job, isolate.py writes it as JSON (`Job.to_json`, plus the
`threads` and `result` the Isolator adds), and the child in worker.py reads it back (`Job.from_json`) and
runs the handler registered for its type. The JSON names the kind in `task`.

A job that measures a runner names it by `runner`, a runner spec (`runners.runner_spec`: `{"kind": "artifact",
"path": DIR}`, `{"kind": "torch", **runners.model_spec(...)}` or `{"kind": "python", "ref": "file.py:fn",
"inputs": [...], "outputs": [...]}`); `inputs` is the .npz of evaluation inputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar


@dataclass(frozen=True)
class Job:
    """What one measuring process does; subclasses name their kind: `class X(Job, task="x")`."""

    task: ClassVar[str]
    _kinds: ClassVar[dict[str, type[Job]]] = {}

    def __init_subclass__(cls, task: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if task is not None:
            cls.task = task
            Job._kinds[task] = cls

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task, **{f.name: getattr(self, f.name) for f in fields(self)}}

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> Job:
        """The job a job file holds (keys that are not its fields, as `threads` and `result`, are left)."""
        cls = Job._kinds.get(data.get("task"))  # type: ignore[arg-type]
        if cls is None:
            raise ValueError(f"unknown job task {data.get('task')!r}")
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass(frozen=True)
class ProbeJob(Job, task="probe"):
    """Ask `Backend.available()` here, where importing a runtime cannot hurt the bench."""

    backend: str


@dataclass(frozen=True)
class ExportJob(Job, task="export"):
    """The validated ONNX export, written to `onnx_dir` for every ONNX-consuming build."""

    model: dict[str, Any]  # runners.model_spec
    onnx_dir: str


@dataclass(frozen=True)
class BuildJob(Job, task="build"):
    """Build (or reuse) one artifact in `out`, calibrated on the shared samples (reopened by their indices)."""

    model: dict[str, Any]
    onnx_dir: str
    backend: str
    precision: str
    options: dict[str, str]
    out: str
    calibration: dict[str, Any] | None  # text, indices, seed, fingerprint; None for uncalibrated precisions


@dataclass(frozen=True)
class TuneJob(BuildJob, task="tune"):
    """`bench --budget`: the accuracy-budget search in place of one INT8 build, judged on the held-out `evaluation`
    samples (reopened like the calibration ones); the closest candidate is written whether it meets or not."""

    budget: str
    evaluation: dict[str, Any]  # text, indices, seed, fingerprint
    max_candidates: int
    metric: str | None  # file.py:fn task metric for `drop`; None: top-1 accuracy


@dataclass(frozen=True)
class DebugJob(Job, task="debug"):
    """`bench --debug-misses`: `modelport debug` of one artifact on the evaluation samples, into `out`."""

    model: dict[str, Any]
    onnx_dir: str
    artifact: str
    evaluation: dict[str, Any]
    samples: int
    out: str


@dataclass(frozen=True)
class RunnerJob(Job):
    """A job that loads one runner and feeds it the evaluation inputs."""

    runner: dict[str, Any]
    inputs: str


@dataclass(frozen=True)
class FidelityJob(RunnerJob, task="fidelity"):
    """Run every evaluation sample in batches of `chunk`; save the outputs to `outputs` (.npz)."""

    chunk: int
    outputs: str


@dataclass(frozen=True)
class LatencyJob(RunnerJob, task="latency"):
    """Time `batch`-sized runs: `iterations` of them or `duration` seconds' worth, after `warmup`."""

    batch: int
    iterations: int | None
    duration: float | None
    warmup: int


@dataclass(frozen=True)
class RoundsJob(RunnerJob, task="rounds"):
    """Stay loaded and time on the parent's commands (interleave.py; worker.py says the commands)."""
