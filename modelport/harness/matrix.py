"""Plan and run the bench: the PyTorch FP32 baseline, then backend x precision x batch size.

The plan is the product of the chosen backends and precisions that the capability table allows, one
item per batch size. A backend whose module is missing or whose runtime is not installed stays in the
plan as `unavailable` rows with the reason; calibrated precisions without `--calib` are `skipped`.

Every step that touches a runtime runs in its own process (isolate.py): each build, each fidelity
pass (once per artifact, cached) and each latency measurement (once per batch size). A failure of any
of them, a segfault included, becomes a `failed` row with the stage and the reason, and the run goes
on. Rows are appended to results.jsonl as they finish; items whose key already has an `ok` row are
not measured again.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.progress import Progress

from modelport.backends import BACKENDS, get_backend
from modelport.backends.base import CALIBRATED
from modelport.errors import BadInput
from modelport.harness import fidelity, interleave, isolate, jobs, results, runners
from modelport.harness.reference import Data
from modelport.harness.results import PYTORCH
from modelport.harness.runners import model_spec
from modelport.machine import machine_summary
from modelport.model import SourceModel
from modelport.options import PRECISIONS

if TYPE_CHECKING:
    from modelport.tune.bench import BenchBudget

CUSTOM = "custom"
RowFn = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Settings:
    """What to measure and how; everything here that changes numbers is part of each row's key."""

    backends: tuple[str, ...] = tuple(BACKENDS)
    precisions: tuple[str, ...] = PRECISIONS
    batches: tuple[int, ...] = (1,)
    threads: int = 1
    iterations: int | None = None
    duration: float | None = 1.0
    warmup: int = 10
    rounds: int = 1  # above 1: the rows of each batch size take turns, round after round (interleave.py)
    timeout: float = 900.0
    options: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # backend or "*" -> key -> value
    runners: Mapping[str, str] = field(default_factory=dict)  # row name -> file.py:fn runner factory
    metric: str | None = None

    def __post_init__(self) -> None:
        if (self.iterations is None) == (self.duration is None):
            raise BadInput("Give one of --iterations and --duration.")
        if self.iterations is not None and self.iterations < 1:
            raise BadInput(f"--iterations must be at least 1, not {self.iterations}.")
        if self.duration is not None and not 0 < self.duration < math.inf:
            raise BadInput(f"--duration must be positive, not {self.duration}.")
        if self.threads < 1:
            raise BadInput(f"--threads must be at least 1, not {self.threads}.")
        if self.rounds < 1:
            raise BadInput(f"--rounds must be at least 1, not {self.rounds}.")
        if self.warmup < 0:
            raise BadInput(f"--warmup must be 0 or more, not {self.warmup}.")
        if not 0 < self.timeout < math.inf:
            raise BadInput(f"--timeout must be a positive number of seconds, not {self.timeout:g}.",
                           hint="It is how long each build or measurement may take before it is killed.")
        if not self.backends and not self.runners:
            raise BadInput("--backends names no backend (and no --runner is given), so the bench would time PyTorch "
                           "alone.", hint=f"Name one or more of {', '.join(BACKENDS)}, or all.")
        if self.backends and not self.precisions:
            raise BadInput("--precisions names no precision.", hint=f"Precisions: {', '.join(PRECISIONS)}.")
        if not self.batches or min(self.batches) < 1:
            raise BadInput(f"Batch sizes must be positive integers, not {list(self.batches)}.")
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad:
            raise BadInput(f"Unknown precision(s) {', '.join(bad)}.", hint=f"Precisions: {', '.join(PRECISIONS)}.")
        bad_names = [n for n in self.runners if not re.fullmatch(r"[A-Za-z0-9_.-]+", n)]
        if bad_names:
            raise BadInput(f"Runner name(s) {', '.join(map(repr, bad_names))} may hold only letters, digits, '_', '.' "
                           "and '-'.")
        clash = sorted(set(self.runners) & ({PYTORCH} | set(BACKENDS)))
        if clash:
            raise BadInput(f"Custom runner name(s) {', '.join(clash)} clash with a backend's name.")

    @property
    def protocol(self) -> dict[str, Any]:
        return {"iterations": self.iterations, "duration": self.duration, "warmup": self.warmup,
                **({"rounds": self.rounds} if self.rounds > 1 else {})}

    @property
    def fidelity_batch(self) -> int:
        """The batch size the fidelity pass feeds (the largest timed one: each runner sees only timed shapes)."""
        return max(self.batches)

    def to_json(self) -> dict[str, Any]:
        return {"backends": list(self.backends), "precisions": list(self.precisions), "batches": list(self.batches),
                "threads": self.threads, **self.protocol, "timeout": self.timeout,
                "options": {k: dict(v) for k, v in self.options.items()}, "runners": dict(self.runners),
                "metric": self.metric}


@dataclass
class PlanItem:
    """One row to measure: who runs it, at which precision and batch size, or why it cannot be."""

    backend: str
    title: str
    kind: str  # "torch", "artifact" or "python"
    precision: str
    batch: int
    status: str = "planned"  # planned, unavailable or skipped
    reason: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # complete recipe options (defaults filled in)
    given: dict[str, str] = field(default_factory=dict)  # the options the user gave, passed to the build
    versions: dict[str, str] = field(default_factory=dict)
    key: str = ""
    device: str | None = None  # the device label it is measured on (a cluster's --measure-on), None: anywhere

    @property
    def group(self) -> tuple[str, str]:
        return self.backend, self.precision

    @property
    def slug(self) -> str:
        """A file-name-safe id of the artifact: backend, precision and, where options were given, their hash."""
        return f"{self.backend}-{self.precision}" + (f"-{results.row_key(self.given)[:8]}" if self.given else "")

    def to_json(self) -> dict[str, Any]:
        return {"backend": self.backend, "precision": self.precision, "batch": self.batch, "status": self.status,
                "reason": self.reason, "key": self.key, **({"device": self.device} if self.device else {})}


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def package_versions() -> dict[str, str]:
    """Versions of modelport, torch and every runtime package in the backend table that is installed."""
    names = ["modelport", "torch", "numpy", "onnx"] + [p for e in BACKENDS.values() for p in e.packages]
    return {n: v for n in dict.fromkeys(names) if (v := _version(n)) is not None}


def _options_for(backend: Any, name: str, precision: str, options: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """The user's options that apply to this backend at this precision (`*` options go where they fit)."""
    known = {o.name for o in backend.options if precision in o.precisions}
    given = {k: v for k, v in options.get("*", {}).items() if k in known}
    given.update({k: v for k, v in options.get(name, {}).items() if k in known})
    return given


def _check_options(settings: Settings, backends: Mapping[str, Any]) -> None:
    """Every option given goes to some backend and precision of the plan: a misspelt backend or key, or one
    that only a precision or backend outside the plan takes, is an error rather than silently dropped."""
    named = set(settings.options) - {"*"}
    unknown = sorted(named - set(BACKENDS))
    if unknown:
        raise BadInput(f"--option names unknown backend(s) {', '.join(map(repr, unknown))}.",
                       hint=f"Write --option BACKEND.KEY=VALUE with BACKEND one of {', '.join(BACKENDS)}, "
                            "or KEY=VALUE for every backend that takes KEY.")
    outside = sorted(named - set(settings.backends))
    if outside:
        raise BadInput(f"--option names {', '.join(outside)}, which this bench does not build.",
                       hint=f"Add it to --backends (now {', '.join(settings.backends)}) or drop the option.")
    taken: set[str] = set()
    for name, backend in backends.items():
        if isinstance(backend, str):  # cannot be imported: its rows say why, its options cannot be checked
            continue
        precisions = [p for p in settings.precisions if p in BACKENDS[name].precisions]
        known = {o.name for o in backend.options}
        here = {o.name for o in backend.options if set(o.precisions) & set(precisions)}
        mine = set(settings.options.get(name, {}))
        if mine - known:
            raise BadInput(f"Unknown option(s) {', '.join(sorted(mine - known))} for {name}.",
                           hint=f"Its options: {', '.join(sorted(known)) or 'none'}.")
        if mine - here:
            raise BadInput(f"Option(s) {', '.join(sorted(mine - here))} for {name} apply to none of the precisions "
                           f"benched ({', '.join(precisions)}).", hint=f"At those precisions it takes: "
                           f"{', '.join(sorted(here)) or 'no options'}; add the precision with --precisions.")
        taken |= here
    unused = sorted(set(settings.options.get("*", {})) - taken)
    if unused:
        raise BadInput(f"No selected backend takes option(s) {', '.join(unused)} at the precisions benched.",
                       hint="Name the backend (--option BACKEND.KEY=VALUE) or check `modelport backends`.")


Availability = Callable[[str], tuple[bool, str]]


def _in_process(name: str) -> tuple[bool, str]:
    return get_backend(name).available()


def isolated_availability(isolator: isolate.Executor, timeout: float) -> Availability:
    """`Backend.available()` asked in a measuring process: runtime imports (slow, noisy, sometimes crashing)
    stay out of the process that runs the bench."""

    def available(name: str) -> tuple[bool, str]:
        outcome = isolator.run(jobs.ProbeJob(name), name=f"{name}-probe", timeout=timeout)
        if not outcome.ok or outcome.result is None:
            return False, f"checking whether {name} works here failed: {outcome.error}"
        return bool(outcome.result["available"]), str(outcome.result["reason"])

    return available


def make_plan(settings: Settings, *, calibrated: bool, available: Availability = _in_process) -> list[PlanItem]:
    """Every row the bench will write, baseline first. Options are checked before any runtime is asked
    whether it works here (`available`, by default `Backend.available()` in this process)."""
    items = [PlanItem(PYTORCH, "PyTorch", "torch", "fp32", b, versions={"torch": _version("torch") or "?"})
             for b in settings.batches]
    backends = {}
    for name in settings.backends:
        if name not in BACKENDS:
            raise BadInput(f"Unknown backend {name!r}.", hint=f"Backends: {', '.join(BACKENDS)}, or all.")
        try:
            backends[name] = get_backend(name)
        except Exception as exc:  # a backend module that is missing or broken is a row, not a failed run
            backends[name] = f"modelport cannot import its {name} backend ({type(exc).__name__}: {exc})"
    _check_options(settings, backends)
    for name in settings.backends:
        entry, backend = BACKENDS[name], backends[name]
        for precision in (p for p in settings.precisions if p in entry.precisions):
            if isinstance(backend, str):
                item = PlanItem(name, entry.title, "artifact", precision, 0, "unavailable", backend)
            else:
                given = _options_for(backend, name, precision, settings.options)
                item = PlanItem(name, entry.title, "artifact", precision, 0, given=given, versions=backend.versions(),
                                options=dict(backend.recipe(precision, given).options))
                if precision in CALIBRATED and not calibrated:
                    item.status, item.reason = "skipped", (f"{precision} needs calibration data: pass --calib SRC "
                                                           "(or --calib synthetic for latency only)")
            items += [replace(item, batch=b) for b in settings.batches]
    for name, backend in backends.items():  # only now, with every option checked, ask each runtime
        mine = [item for item in items if item.backend == name]
        if isinstance(backend, str) or not mine:
            continue
        ok, reason = available(name)
        if not ok:
            for item in mine:
                item.status, item.reason = "unavailable", reason
    for name, ref in settings.runners.items():
        items += [PlanItem(name, name, "python", CUSTOM, b, options={"runner": ref}) for b in settings.batches]
    return items


def prepare_model(source: SourceModel, batches: Sequence[int], user_dynamic: bool) -> SourceModel:
    """Make axis 0 of every input a dynamic `batch` dim unless the user chose the dynamic axes.

    A model that cannot run at another batch size stays static, which is fine when every requested
    batch size is its static one and an error otherwise.
    """
    static = [s for s in source.inputs if s.static_batch is not None]
    if static and not user_dynamic:
        try:
            source = source.with_dynamic([(s.name, 0, "batch") for s in static])
        except BadInput as exc:
            sizes = {s.static_batch for s in static}
            if not set(batches) <= sizes:
                raise BadInput(f"--batch {','.join(map(str, batches))}: {source.name} does not run with another batch "
                               f"size ({exc.message})", hint=f"Bench at its static batch (--batch "
                               f"{','.join(map(str, sorted(sizes)))}).") from exc
    for spec in source.inputs:
        if spec.static_batch is not None and set(batches) != {spec.static_batch}:
            raise BadInput(f"Input {spec.name!r} has a static batch of {spec.static_batch}, so it cannot be benched "
                           f"at batch {','.join(map(str, batches))}.",
                           hint=f"Add --dynamic {spec.name}:0=batch, or pass --batch {spec.static_batch}.")
    return source


@dataclass
class Context:
    """What every step of one bench run shares."""

    source: SourceModel
    settings: Settings
    data: Data
    reference: dict[str, np.ndarray]
    metric: fidelity.TaskMetric | None
    reference_metric: float | None
    out: Path
    run_id: str
    calib_job: dict[str, Any] | None
    progress: Progress | None = None
    on_row: RowFn | None = None
    load_average: float | None = None  # before the run started its own work
    budget: BenchBudget | None = None  # --budget: each INT8 row is the searched artifact (tune/bench.py)

    @property
    def results_path(self) -> Path:
        return self.out / results.RESULTS

    @property
    def work(self) -> Path:
        return self.out / "work"

    @property
    def cache(self) -> Path:
        return self.out / "cache"


def assign_keys(plan: list[PlanItem], ctx: Context) -> None:
    calib_fp = ctx.data.calibration.fingerprint if ctx.data.calibration is not None else None
    for item in plan:
        item.key = results.row_key({
            "model": ctx.source.content_hash, "backend": item.backend, "kind": item.kind, "precision": item.precision,
            "options": item.options, "calibration": calib_fp if item.precision in CALIBRATED else None,
            "evaluation": ctx.data.evaluation.fingerprint, "metric": ctx.settings.metric, "batch": item.batch,
            "threads": ctx.settings.threads, "versions": {**item.versions, "modelport": _version("modelport")},
            "protocol": ctx.settings.protocol, "fidelity_batch": ctx.settings.fidelity_batch,
            **(ctx.budget.key if ctx.budget is not None and item.precision == "int8" else {}),
            **({"device": item.device} if item.device else {})})


def run_record(ctx: Context, plan: list[PlanItem]) -> dict[str, Any]:
    return {"type": "run", "run": ctx.run_id, "time": _now(), "model": _model_json(ctx.source),
            "machine": machine_summary(), "load_average": ctx.load_average, "versions": package_versions(),
            "settings": ctx.settings.to_json(), "budget": ctx.budget.expr if ctx.budget is not None else None,
            "data": ctx.data.describe(), "reference_metric": _metric_json(ctx),
            "plan": [i.to_json() for i in plan]}


def load_average() -> float | None:
    """The 1-minute load average as the run starts: other work on the machine makes latencies noisy."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _model_json(source: SourceModel) -> dict[str, Any]:
    return {"name": source.name, "origin": source.origin, "content_hash": source.content_hash,
            "inputs": [str(s) for s in source.inputs], "outputs": [str(s) for s in source.outputs]}


def _metric_json(ctx: Context) -> dict[str, Any] | None:
    if ctx.metric is None or ctx.reference_metric is None:
        return None
    return {"name": ctx.metric.name, "units": ctx.metric.units, "value": ctx.reference_metric}


def new_run_id() -> str:
    return f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"


class MatrixRun:
    """Measures the plan item group by group (one artifact = one group) and emits rows."""

    def __init__(self, ctx: Context, isolator: isolate.Executor) -> None:
        self.ctx = ctx
        self.done = results.measured_keys(ctx.results_path)
        self.overall = ctx.progress.add_task("bench", total=None) if ctx.progress else None
        self._step_task: Any = None
        self._exported = False
        self.isolator = isolator
        self._export_error: _StageFailed | None = None

    # -- progress -------------------------------------------------------------------------------------

    def step(self, description: str) -> Callable[[float, float], None]:
        """A progress line for one step; returns the callback a child's progress lines go to."""
        progress = self.ctx.progress
        if progress is None:
            return lambda done, total: None
        if self._step_task is None:
            self._step_task = progress.add_task(description, total=None)
        progress.reset(self._step_task, description=f"  {description}", total=None)

        def update(done: float, total: float) -> None:
            progress.update(self._step_task, completed=done, total=total)

        return update

    def _advance(self, n: int = 1) -> None:
        if self.ctx.progress is not None and self.overall is not None:
            self.ctx.progress.advance(self.overall, n)

    # -- rows -----------------------------------------------------------------------------------------

    def _emit(self, item: PlanItem, *, status: str, stage: str | None = None, reason: str | None = None,
              artifact: dict[str, Any] | None = None, fid: dict[str, Any] | None = None,
              latency: dict[str, Any] | None = None) -> None:
        ctx = self.ctx
        calibration = ctx.data.calibration
        row = results.Row(
            key=item.key, run=ctx.run_id, time=_now(), model=_model_json(ctx.source), backend=item.backend,
            title=item.title, kind=item.kind, precision=item.precision, options=item.options, batch=item.batch,
            threads=ctx.settings.threads, status=status, stage=stage, reason=reason, versions=item.versions,
            protocol=ctx.settings.protocol,
            calibration=calibration.describe() if calibration is not None and item.precision in CALIBRATED else None,
            evaluation=ctx.data.describe()["evaluation"], artifact=artifact, fidelity=fid, latency=latency,
            device=item.device)
        results.append(ctx.results_path, row.to_json())
        self._advance()
        if ctx.on_row is not None:
            ctx.on_row(results.clean(row.to_json()))

    # -- the run --------------------------------------------------------------------------------------

    def run(self, plan: list[PlanItem]) -> None:
        if self.ctx.progress is not None and self.overall is not None:
            self.ctx.progress.update(self.overall, total=len(plan), description=f"bench {self.ctx.source.name}")
        groups: dict[tuple[str, str], list[PlanItem]] = {}
        for item in plan:
            groups.setdefault(item.group, []).append(item)
        ready = []
        for items in groups.values():
            todo = [i for i in items if i.key not in self.done]
            self._advance(len(items) - len(todo))
            if todo and (prepared := self._prepare(todo)) is not None:
                if self.ctx.settings.rounds > 1:
                    ready.append(prepared)  # timed below, all together
                else:
                    for item in prepared.items:
                        self._measured(prepared, item, *self._try(lambda i=item: self._latency(i, prepared)))
        if ready:
            interleave.Rounds(self, ready).run_all()

    def _prepare(self, items: list[PlanItem]) -> Prepared | None:
        """Build the group's artifact and take its fidelity; rows that cannot be measured are emitted here."""
        first = items[0]
        if first.status != "planned":
            for item in items:
                self._emit(item, status=first.status, reason=first.reason)
            return None
        label = f"{first.backend} {first.precision}"
        kind = runners.KINDS[first.kind]
        artifact, built, fid, fid_error = None, None, None, None
        if kind.builds:
            try:
                artifact = self._build(first, label)
            except _StageFailed as exc:
                for item in items:
                    self._emit(item, status="failed", stage=exc.stage, reason=exc.reason, artifact=artifact)
                return None
            built = self.ctx.out / artifact["path"]
        runner_spec = runners.runner_spec(first.kind, self.ctx.source, first.options, built)
        if kind.reference:  # PyTorch FP32 against itself
            artifact = {"size_bytes": _weights_bytes(self.ctx.source), "build_seconds": None, "reused": None}
            fid = fidelity.evaluate(self.ctx.reference, self.ctx.reference, self.ctx.data.labels,
                                    self.ctx.metric, self.ctx.reference_metric)
        else:
            fid, fid_error = self._try(lambda: self._fidelity(first, runner_spec, artifact, label))
        return Prepared(items, label, runner_spec, artifact, fid, fid_error)

    @staticmethod
    def _try(step: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any] | None, _StageFailed | None]:
        try:
            return step(), None
        except _StageFailed as exc:
            return None, exc

    def measured(self, prepared: Prepared, item: PlanItem, latency: dict[str, Any]) -> None:
        self._measured(prepared, item, latency, None)

    def latency_failed(self, prepared: Prepared, item: PlanItem, reason: str) -> None:
        self._measured(prepared, item, None, _StageFailed("latency", reason))

    def _measured(self, prepared: Prepared, item: PlanItem, latency: dict[str, Any] | None,
                  lat_error: _StageFailed | None) -> None:
        """Emit one row: ok, or failed with every stage that failed and why."""
        errors = [e for e in (prepared.fid_error, lat_error) if e is not None]
        if errors:
            self._emit(item, status="failed", stage=errors[0].stage, artifact=prepared.artifact, fid=prepared.fid,
                       latency=latency, reason="; ".join(f"{e.stage}: {e.reason}" for e in errors))
        else:
            self._emit(item, status="ok", artifact=prepared.artifact, fid=prepared.fid, latency=latency)

    def _isolated(self, job: jobs.Job, name: str, description: str) -> dict[str, Any]:
        outcome = self.isolator.run(job, name=name, timeout=self.ctx.settings.timeout,
                                    progress=self.step(description))
        if not outcome.ok:
            raise _StageFailed(job.task, f"{outcome.error} [log: {outcome.log.relative_to(self.ctx.out)}]")
        assert outcome.result is not None
        return outcome.result

    def _build(self, item: PlanItem, label: str) -> dict[str, Any]:
        ctx = self.ctx
        if BACKENDS[item.backend].consumes == "onnx":
            self._export()
        rel = Path("artifacts") / item.slug
        job = jobs.BuildJob(model=model_spec(ctx.source), onnx_dir=str(ctx.out / "onnx"), backend=item.backend,
                            precision=item.precision, options=item.given, out=str(ctx.out / rel),
                            calibration=ctx.calib_job if item.precision in CALIBRATED else None)
        if ctx.budget is not None and item.precision == "int8":
            built = self._isolated(ctx.budget.job(job), f"{item.slug}-tune", f"searching {label} within the budget")
        else:
            built = self._isolated(job, f"{item.slug}-build", f"building {label}")
        return {"path": str(rel), "size_bytes": built["size_bytes"], "build_seconds": built["build_seconds"],
                "reused": built["reused"], "manifest_key": built["manifest_key"], "details": built["details"],
                **({"tune": built["tune"]} if "tune" in built else {})}

    def _export(self) -> None:
        """The validated ONNX export, once per run, isolated like every step; a failure fails each ONNX build."""
        if self._export_error is not None:
            raise self._export_error
        if self._exported:
            return
        job = jobs.ExportJob(model=model_spec(self.ctx.source), onnx_dir=str(self.ctx.out / "onnx"))
        try:
            self._isolated(job, "export", f"exporting {self.ctx.source.name} to ONNX")
        except _StageFailed as exc:
            self._export_error = exc
            raise
        self._exported = True

    def _fidelity(self, item: PlanItem, runner_spec: dict[str, Any], artifact: dict[str, Any] | None,
                  label: str) -> dict[str, Any]:
        ctx = self.ctx
        identity = {"runner": runner_spec if artifact is None else artifact["manifest_key"],
                    "evaluation": ctx.data.evaluation.fingerprint, "batch": ctx.settings.fidelity_batch,
                    "metric": ctx.settings.metric, "model": ctx.source.content_hash,
                    **({"device": item.device} if item.device else {})}
        cached = ctx.cache / f"fidelity-{results.row_key(identity)}.json"
        if cached.is_file():
            return json.loads(cached.read_text())
        where = f"{item.device}-" if item.device else ""
        outputs_path = ctx.work / f"{where}{item.slug}-outputs.npz"
        job = jobs.FidelityJob(runner=runner_spec, inputs=str(ctx.data.inputs_path), chunk=ctx.settings.fidelity_batch,
                               outputs=str(outputs_path))
        result = self._isolated(job, f"{item.slug}-fidelity", f"fidelity {label}")
        with np.load(outputs_path) as saved:
            outputs = {name: saved[f"arr_{i}"] for i, name in enumerate(result["output_names"])}
        outputs_path.unlink(missing_ok=True)
        try:
            record = fidelity.evaluate(outputs, ctx.reference, ctx.data.labels, ctx.metric, ctx.reference_metric)
        except Exception as exc:
            raise _StageFailed("fidelity", f"{type(exc).__name__}: {exc}") from exc
        record = results.clean({**record, "load_seconds": result["load_seconds"]})
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps(record))
        return record

    def _latency(self, item: PlanItem, prepared: Prepared) -> dict[str, Any]:
        ctx = self.ctx
        settings = ctx.settings
        job = jobs.LatencyJob(runner=prepared.runner_spec, inputs=str(ctx.data.inputs_path), batch=item.batch,
                              iterations=settings.iterations, duration=settings.duration, warmup=settings.warmup)
        start = time.perf_counter()
        result = self._isolated(job, f"{item.slug}-b{item.batch}-latency",
                                f"timing {prepared.label} at batch {item.batch}")
        return {**{k: result.get(k) for k in LATENCY_KEYS}, "seconds": time.perf_counter() - start}


LATENCY_KEYS = ("iterations", "warmup", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "min_ms", "max_ms",
                "throughput", "peak_rss_bytes", "runner_rss_bytes", "load_seconds", "threads", "node")


@dataclass
class Prepared:
    """A group whose artifact is built and whose fidelity is taken (or failed): what timing it needs."""

    items: list[PlanItem]
    label: str
    runner_spec: dict[str, Any]
    artifact: dict[str, Any] | None
    fid: dict[str, Any] | None
    fid_error: _StageFailed | None


class _StageFailed(Exception):
    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason


def _weights_bytes(source: SourceModel) -> int:
    return sum(t.numel() * t.element_size() for t in source.module.state_dict().values())
