"""`modelport bench --budget EXPR`: each runtime's INT8 row is the searched artifact, judged on held-out data.

The harness hands a `TuneJob` (harness/jobs.py) to a measuring process in place of the INT8 `BuildJob`; there
`tune_for_bench` runs the search on the bench's own evaluation samples (disjoint from its calibration samples)
and writes the chosen candidate, or the closest when none meets the budget, where the build would have gone.
The row then measures that artifact like any other; `summary` is what the row and the reports show of the search.
`debug_misses` (`--debug-misses`) debugs each measured artifact that misses the budget, so the report links
where its loss comes from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelport.harness.jobs import BuildJob, DebugJob, TuneJob
from modelport.tune.budget import parse_budget

if TYPE_CHECKING:
    from modelport.bundle import ModelBundle
    from modelport.calibration import CalibrationSet
    from modelport.harness.isolate import Isolator

MAX_CANDIDATES = 10  # search.MAX_CANDIDATES, without importing the search where only the job is made


@dataclass(frozen=True)
class BenchBudget:
    """What `bench --budget` asks of the INT8 rows: the expression, the search's cap, and the data it is judged on."""

    expr: str
    evaluation: Mapping[str, Any]  # text, indices, seed, fingerprint of the bench's evaluation samples
    max_candidates: int = MAX_CANDIDATES
    metric: str | None = None

    @property
    def key(self) -> dict[str, Any]:
        """What the searched row's numbers depend on beyond an ordinary INT8 row's."""
        return {"budget": self.expr, "max_candidates": self.max_candidates}

    def job(self, build: BuildJob) -> TuneJob:
        """The search in place of `build`, writing where it would have."""
        fields = {k: v for k, v in build.to_json().items() if k != "task"}
        return TuneJob(**fields, budget=self.expr, evaluation=dict(self.evaluation),
                       max_candidates=self.max_candidates, metric=self.metric)


def tune_for_bench(job: TuneJob, bundle: ModelBundle, calibration: CalibrationSet, evaluation: CalibrationSet,
                   threads: int) -> dict[str, Any]:
    """Search in the measuring process; what `_build` returns for a row, plus the search's `tune` summary."""
    from modelport.harness.fidelity import load_metric
    from modelport.tune.search import search_closest

    metric = load_metric(job.metric) if job.metric is not None else None
    outcome = search_closest(bundle, job.backend, job.out, parse_budget(job.budget), calibration,
                             evaluation=evaluation, options=job.options, max_candidates=job.max_candidates,
                             threads=threads, metric=metric)
    artifact = outcome.artifact
    return {"reused": outcome.reused, "build_seconds": artifact.manifest["build_seconds"],
            "size_bytes": artifact.size_bytes, "manifest_key": artifact.manifest["key"], "details": artifact.details,
            "tune": summary(outcome.record)}


def summary(record: Mapping[str, Any]) -> dict[str, Any]:
    """The search record in brief: met or missed, what the chosen candidate keeps in float, what it cost."""
    candidates = record["candidates"]
    chosen = candidates[record["chosen"]]
    return {"budget": record["budget"], "status": record["status"], "kept_in_float": chosen["kept_in_float"],
            "kept_in": chosen.get("kept_in", "fp32"),
            "figures": chosen["figures"], "candidates": len(candidates), "seconds": record["seconds"],
            "latency_ms": chosen["latency_ms"], "full_int8_latency_ms": candidates[0]["latency_ms"],
            "exclusion": record.get("exclusion")}


def debug_misses(report: Mapping[str, Any], out: Path, isolator: Isolator, model: Mapping[str, Any],
                 evaluation: Mapping[str, Any], *, samples: int, timeout: float) -> list[str]:
    """A debug run (debug.json and debug.html under `out`/debug/ARTIFACT) of every measured artifact that misses
    the budget, each in its own process; what could not be debugged, and why (a runtime without intermediates)."""
    from modelport.harness.report.aggregate import ReportRow, debug_dir

    problems, seen = [], set()
    for r in (ReportRow.from_json(row) for row in report["rows"]):
        if r.status != "ok" or r.meets_budget is not False or r.path is None or r.path in seen:
            continue
        seen.add(r.path)
        target = debug_dir(out, r.path)
        job = DebugJob(model=dict(model), onnx_dir=str(out / "onnx"), artifact=str(out / r.path),
                       evaluation=dict(evaluation), samples=samples, out=str(target))
        done = isolator.run(job, name=f"{target.name}-debug", timeout=timeout)
        if not done.ok:
            problems.append(f"{r.backend} {r.precision}: {done.error} [log: {done.log}]")
    return problems
