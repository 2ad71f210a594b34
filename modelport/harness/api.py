"""`bench()`: the whole cross-runtime comparison in one call, as `modelport bench` runs it."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from modelport.backends import PRECISIONS, parse_backends
from modelport.console import progress as progress_bar
from modelport.console import status
from modelport.errors import BadInput, ModelportWarning
from modelport.harness import cluster, fidelity, isolate, matrix, reference, results
from modelport.harness.report import Budget, build_report, write_reports
from modelport.model import SourceModel, load_model
from modelport.specs import parse_dynamic_spec
from modelport.tune.bench import MAX_CANDIDATES, BenchBudget
from modelport.tune.bench import debug_misses as run_debug_misses
from modelport.tune.ship import ship as ship_artifact

DEBUG_SAMPLES = 64  # evaluation samples each --debug-misses run streams (debug's own default)

DEFAULT_DURATION = 1.0


def default_threads() -> int:
    """Physical cores: one thread per core is what deployments usually pin, and what is comparable."""
    import os

    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def _split(value: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(p.strip() for p in value.split(",") if p.strip())
    return tuple(value)


def _options(options: Mapping[str, Any] | None) -> dict[str, dict[str, str]]:
    """{"onnxruntime": {"key": v}, "*": {...}} or flat {"onnxruntime.key": v, "key": v}."""
    out: dict[str, dict[str, str]] = {}
    for name, value in (options or {}).items():
        if isinstance(value, Mapping):
            out.setdefault(name, {}).update({k: str(v) for k, v in value.items()})
        else:
            backend, dot, key = name.rpartition(".")
            out.setdefault(backend if dot else "*", {})[key] = str(value)
    return out


def bench(model: str | SourceModel, *, out: str | Path = "bench-out", backends: str | Sequence[str] = "all",
          precisions: str | Sequence[str] = PRECISIONS, batches: Sequence[int] = (1,), threads: int | None = None,
          iterations: int | None = None, duration: float | None = None, warmup: int = 10, rounds: int = 1,
          calib: str | None = None, evaluation: str | None = None, calib_size: int | None = None,
          eval_size: int | None = None, seed: int = 0, inputs: Sequence[str] = (), dynamic: Sequence[str] = (),
          options: Mapping[str, Any] | None = None, runners: Mapping[str, str] | None = None,
          metric: str | None = None, timeout: float = 900.0, budget: Budget | str | None = None,
          max_candidates: int = MAX_CANDIDATES, ship: str | Path | None = None, debug_misses: bool = False,
          show_progress: bool = False, on_row: matrix.RowFn | None = None,
          on_cluster: cluster.ClusterSettings | None = None) -> dict[str, Any]:
    """Build MODEL for every backend x precision, measure each against PyTorch FP32, write reports to `out`.

    Returns the report (what report.json holds). Rows are appended to `out`/results.jsonl as they
    finish; calling again with the same arguments measures only what is missing. `runners` adds rows
    for your own runner factories (`{"name": "file.py:fn"}`, called as `fn(threads=N)`, returning an
    object with `run(feeds) -> dict`). `rounds` > 1 times the rows of each batch size in turns (interleave.py).
    `on_row` is called with each row as it is written (from a thread per device on a cluster).
    `on_cluster` runs the jobs on a Ray cluster (cluster.py), measuring on its device labels.

    `budget` is a Budget or a `--budget` expression (`cos>=0.995,sqnr>=25,drop<=1`): with an expression, each
    runtime's INT8 row is the artifact the accuracy-budget search chose (at most `max_candidates` builds, judged
    on the evaluation samples, never the calibration ones), and every row is judged by it. `debug_misses` writes
    a debug run of each artifact that misses the budget under `out`/debug/; `ship` copies the recommended
    artifact to that directory with a SHIP.md (StepFailed, nothing written, when no artifact meets the budget).
    """
    settings = matrix.Settings(
        backends=tuple(parse_backends(backends if isinstance(backends, str) else ",".join(backends))),
        precisions=_split(precisions), batches=tuple(int(b) for b in batches),
        threads=threads if threads is not None else default_threads(), iterations=iterations,
        duration=duration if duration is not None or iterations is not None else DEFAULT_DURATION,
        warmup=warmup, rounds=rounds, timeout=timeout, options=_options(options), runners=dict(runners or {}),
        metric=metric)
    budget = Budget(expr=budget) if isinstance(budget, str) else budget or Budget()
    if max_candidates < 1:
        raise BadInput(f"--max-candidates {max_candidates}: at least the full INT8 build is judged.")
    if debug_misses and calib is None and evaluation is None:
        raise BadInput("--debug-misses debugs artifacts on the evaluation samples, and this bench would have only "
                       "synthetic ones.", hint="Give --eval SRC or --calib SRC.")
    if on_cluster is not None and (budget.expr is not None or debug_misses):
        raise BadInput(f"{'--budget' if budget.expr is not None else '--debug-misses'} runs locally only: the "
                       "search and the debug runs write artifacts the cluster executor does not ship back.",
                       hint="Search and debug locally (modelport build --budget on the target), then bench the "
                            "chosen artifact's model on the cluster.")
    if on_cluster is not None and settings.rounds > 1:
        raise BadInput("--rounds above 1 keeps every runner loaded on one machine; it does not run on a cluster.",
                       hint="Drop --rounds, or bench without --cluster.")
    load = matrix.load_average()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with cluster.executor(on_cluster, out / "work", settings.threads) as isolator:
        return _bench(model, settings, budget, out, isolator, load, calib=calib, evaluation=evaluation,
                      calib_size=calib_size, eval_size=eval_size, seed=seed, inputs=inputs, dynamic=dynamic,
                      show_progress=show_progress, on_row=on_row, max_candidates=max_candidates,
                      ship=Path(ship) if ship is not None else None, debug_misses=debug_misses)


def _bench(model: str | SourceModel, settings: matrix.Settings, budget: Budget, out: Path,
           isolator: isolate.Executor, load: float | None, *, calib: str | None, evaluation: str | None,
           calib_size: int | None, eval_size: int | None, seed: int, inputs: Sequence[str], dynamic: Sequence[str],
           show_progress: bool, on_row: matrix.RowFn | None, max_candidates: int, ship: Path | None,
           debug_misses: bool) -> dict[str, Any]:
    metric = settings.metric
    task = fidelity.load_metric(metric)  # a wrong --metric fails before any slow work
    with status("Checking which backends work here", show_progress):
        plan = matrix.make_plan(settings, calibrated=calib is not None,
                                available=matrix.isolated_availability(isolator, settings.timeout))
        plan = cluster.plan_for(isolator, plan)
    dyn = [parse_dynamic_spec(d) for d in dynamic]
    with status(f"Loading {model if isinstance(model, str) else model.name}", show_progress):
        source = load_model(model, inputs, dyn) if isinstance(model, str) else model.with_dynamic(dyn)
        source = matrix.prepare_model(source, settings.batches, user_dynamic=bool(dyn))
    cache = out / "cache"
    with status("Reading the calibration and evaluation data", show_progress):
        data = reference.prepare(source, calib, evaluation, calib_size=calib_size, eval_size=eval_size, seed=seed,
                                 cache=cache)
    with status(f"Running PyTorch FP32 on {data.samples} evaluation samples", show_progress):
        ref = reference.reference_outputs(source, data, chunk=settings.fidelity_batch, threads=settings.threads,
                                          cache=cache)
    if fidelity.task_metric_applies(task, ref, data.labels):
        ref_metric = fidelity.reference_metric(task, ref, data.labels)
    elif metric is not None:
        raise BadInput(f"--metric {metric} needs labels, and the evaluation data has none.",
                       hint="Give --eval (or --calib) data whose samples carry a `label`.")
    else:
        task, ref_metric = None, None
    calib_job = None
    if data.calibration is not None:
        calib_job = {"text": calib, "indices": data.calibration.indices, "seed": data.calibration.seed,
                     "fingerprint": data.calibration.fingerprint}
    eval_job = {"text": evaluation if evaluation is not None else calib, "indices": data.evaluation.indices,
                "seed": data.evaluation.seed, "fingerprint": data.evaluation.fingerprint}
    searched = None
    if budget.expr is not None:
        _check_budget(budget, data, task is not None)
        searched = BenchBudget(budget.expr, eval_job, max_candidates, metric)
    with progress_bar(show_progress) as bar:
        ctx = matrix.Context(source, settings, data, ref, task, ref_metric, out, matrix.new_run_id(), calib_job,
                             progress=bar if show_progress else None, on_row=on_row, load_average=load,
                             budget=searched)
        matrix.assign_keys(plan, ctx)
        results.append(ctx.results_path, matrix.run_record(ctx, plan))
        cluster.execute(ctx, plan, isolator)
    report = build_report(out, budget)
    if debug_misses:
        with status("Debugging the rows that miss the budget", show_progress):
            problems = run_debug_misses(report, out, isolator, matrix.model_spec(source), eval_job,
                                        samples=min(DEBUG_SAMPLES, data.samples), timeout=settings.timeout)
        for problem in problems:
            warnings.warn(f"--debug-misses could not debug {problem}", ModelportWarning, stacklevel=2)
        report = build_report(out, budget)
    write_reports(report, out)
    if ship is not None:
        winner, where = ship_artifact(report, out, ship)
        report = {**report, "shipped": {"path": str(where), "key": winner.key, "label": winner.label}}
    return report


def _check_budget(budget: Budget, data: reference.Data, has_metric: bool) -> None:
    """A `drop` bound needs a task metric, and the search needs evaluation samples apart from the calibration."""
    if budget.bounds.needs_labels and not has_metric:
        raise BadInput(f"--budget {budget.expr}: drop is the task metric's loss, and this bench has no task metric.",
                       hint="Give --eval data with labels (and --metric for a task other than classification), "
                            "or bound cos or sqnr instead.")
    if data.calibration is not None and data.calibration.fingerprint == data.evaluation.fingerprint:
        raise BadInput("The evaluation data is the calibration data: a budget judged on it says nothing about new "
                       "inputs.", hint="Pass held-out samples to --eval, or leave --eval out to split --calib.")
