"""Rows to report data: what every renderer shows, built from DIR/results.jsonl alone.

Scope: the rows of the latest run's model and evaluation set (rows of earlier runs with the same
model and data are included; for the same backend, precision, options, batch and threads the latest
row wins). Plan items with no row are shown as `not measured` (an interrupted run).

Each row gets its speed-up over PyTorch FP32 at its batch size and thread count, its budget verdict
(budget.py) and whether it is on the Pareto front: the rows that no other row beats on both p50
latency and fidelity (the task metric, else SQNR). Rows also carry what sits beside them: the per-layer
plot `modelport debug` wrote for their artifact (ARTIFACT-debug/debug.html, its default place), and the
accuracy budget their build was held to where the row or its artifact records one (the `tune` record).
The report data is plain JSON (report.json holds it); its rows are `ReportRow`s as dicts, and renderers
read them back with `ReportRow.from_json`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modelport.errors import BadInput
from modelport.harness import results
from modelport.harness.latency import speedup
from modelport.harness.report.budget import Budget, meets_budget, recommend
from modelport.harness.results import PYTORCH, Row

DEBUG = "debug"  # the run directory's folder of debug runs, one per artifact
BUSY_LOAD = 0.5  # a load average above this share of the cores makes latencies noisy
ORDER = {"ok": 0, "failed": 1, "not measured": 2, "skipped": 3, "unavailable": 4}
_LATENCY_SHOWN = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "throughput", "iterations", "peak_rss_bytes",
                  "runner_rss_bytes", "round_ms")
_SUMMARY_SHOWN = ("top1_agreement", "cosine", "sqnr_db", "max_abs", "identical", "nonfinite")


@dataclass(kw_only=True)
class ReportRow:
    """One line of the report: a row's fields flattened for the tables, then the report's verdicts on it."""

    key: str
    backend: str
    title: str | None
    precision: str
    options: dict[str, Any] = field(default_factory=dict)
    batch: int
    threads: int
    status: str
    stage: str | None = None
    reason: str | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    std_ms: float | None = None
    throughput: float | None = None
    iterations: int | None = None
    peak_rss_bytes: int | None = None
    runner_rss_bytes: int | None = None
    round_ms: list[float] | None = None
    metric_name: str | None = None
    metric: float | None = None
    metric_delta: float | None = None
    top1_agreement: float | None = None
    cosine: float | None = None
    sqnr_db: float | None = None
    max_abs: float | None = None
    identical: bool | None = None
    nonfinite: int | None = None
    has_fidelity: bool = False
    size_bytes: int | None = None
    build_seconds: float | None = None
    path: str | None = None
    time: str | None = None
    debug_html: str | None = None  # the artifact's per-layer debug page, relative to the bench directory
    build_budget: str | None = None  # the budget the build was held to (`build --budget`), as it was written
    build_budget_met: bool | None = None
    device: str | None = None  # the device label a cluster run measured it on
    speedup: float | None = None  # PyTorch FP32's time over this row's
    meets_budget: bool | None = None
    pareto: bool = False
    tune: dict[str, Any] | None = None  # bench --budget: the search behind this INT8 row (tune/bench.py summary)

    @classmethod
    def of(cls, row: Row, *, debug_html: str | None = None, build_budget: Mapping[str, Any] | None = None
           ) -> ReportRow:
        latency, artifact = row.latency or {}, row.artifact or {}
        summary, metric = row.fidelity_part("summary"), row.fidelity_part("metric")
        budget = build_budget or {}
        return cls(debug_html=debug_html, build_budget=budget.get("budget"),
                   build_budget_met=budget["status"] == "met" if "status" in budget else budget.get("met"),
                   key=row.key, backend=row.backend, title=row.title, precision=row.precision,
                   options=row.options or {}, batch=row.batch, threads=row.threads, status=row.status,
                   stage=row.stage, reason=row.reason, **{k: latency.get(k) for k in _LATENCY_SHOWN},
                   metric_name=metric.get("name"), metric=metric.get("value"), metric_delta=metric.get("delta"),
                   **{k: summary.get(k) for k in _SUMMARY_SHOWN}, has_fidelity=bool(summary),
                   size_bytes=artifact.get("size_bytes"), build_seconds=artifact.get("build_seconds"),
                   path=artifact.get("path"), time=row.time, tune=artifact.get("tune"), device=row.device)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReportRow:
        """A row of report data (report.json's `rows`) read back."""
        return cls(**data)

    @property
    def is_baseline(self) -> bool:
        return self.backend == PYTORCH

    @property
    def label(self) -> str:
        """How the recommendation and the plot name the row."""
        return "PyTorch FP32" if self.is_baseline else f"{self.title} {self.precision}"

    def fidelity_score(self, with_metric: bool) -> float | None:
        """The y of the scatter plot and of the Pareto front: the task metric, else SQNR (identical = +inf)."""
        if not self.has_fidelity or self.nonfinite:
            return None
        if with_metric:
            return self.metric
        return math.inf if self.identical else self.sqnr_db


def pareto_keys(rows: Sequence[ReportRow], with_metric: bool) -> set[str]:
    """Rows that no other row beats on both latency (lower) and fidelity (higher)."""
    points = [(r.p50_ms, score, r.key) for r in rows
              if r.status == "ok" and r.p50_ms is not None and (score := r.fidelity_score(with_metric)) is not None]
    front = set()
    for lat, score, key in points:
        dominated = any(lat2 <= lat and score2 >= score and (lat2 < lat or score2 > score)
                        for lat2, score2, _ in points)
        if not dominated:
            front.add(key)
    return front


def groups(rows: Iterable[ReportRow]) -> list[tuple[int, int]]:
    """The (batch, threads) pairs of `rows`, in order: each has its own recommendation and plot."""
    return sorted({(r.batch, r.threads) for r in rows})


def devices(rows: Iterable[ReportRow]) -> list[str | None]:
    """The device labels of `rows` (a cluster run's --measure-on; None: this machine), each judged on its own."""
    return sorted({r.device for r in rows}, key=lambda d: (d is not None, d or ""))


def _recommend(rows: list[ReportRow], budget: Budget, metric: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """One recommendation per device, batch size and thread count."""
    recs = []
    for device in devices(rows):
        mine = [r for r in rows if r.device == device]
        for b, t in groups(r for r in mine if r.status == "ok"):
            rec = recommend(mine, budget, metric, b, t)
            recs.append(rec if device is None else {**rec, "device": device, "text": f"On {device}: {rec['text']}"})
    return recs


def _identity(row: Row) -> str:
    """What makes two rows the same measurement, whatever their keys (versions, run): the later one wins."""
    return json.dumps([row.backend, row.precision, row.options, row.batch, row.threads, row.device], sort_keys=True,
                      default=str)


def _scope(record: Mapping[str, Any]) -> tuple[str, str | None]:
    """The model and the evaluation set a run or row record belongs to."""
    holder = (record.get("data") or {}) if record["type"] == "run" else record
    return record["model"]["content_hash"], (holder.get("evaluation") or {}).get("fingerprint")


def _debug_page(out: Path, artifact: Mapping[str, Any] | None) -> str | None:
    """The per-layer page of this artifact, relative to `out`: the one `bench --debug-misses` wrote, else the
    one `modelport debug` writes by default (ARTIFACT-debug/debug.html), if either exists."""
    if not artifact or not artifact.get("path"):
        return None
    page = debug_page(out, artifact["path"]) or out / f"{artifact['path']}-debug" / "debug.html"
    return page.relative_to(out).as_posix() if page.is_file() else None


def _build_budget(record: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The budget record a row carries (`budget`) or its artifact's manifest did (`tune`): `budget` text and
    `status` met/missed, or a `met` flag."""
    found = record.get("budget") or (record.get("artifact") or {}).get("tune")
    return found if isinstance(found, Mapping) else None


def _scoped_rows(out: Path, records: Sequence[Mapping[str, Any]], runs: Sequence[Mapping[str, Any]]
                 ) -> list[ReportRow]:
    """The latest row per measurement in the scope of `runs`, then their plan items that have no row."""
    scope = _scope(runs[-1])
    latest: dict[str, tuple[Row, Mapping[str, Any]]] = {}
    for record in records:
        if record["type"] == "row" and _scope(record) == scope:
            row = Row.from_json(record)
            latest[_identity(row)] = row, record
    rows = [ReportRow.of(r, debug_html=_debug_page(out, r.artifact), build_budget=_build_budget(record))
            for r, record in latest.values()]
    seen = {r.key for r in rows} | {(r.backend, r.precision, r.batch, r.threads, r.device) for r in rows}
    for run in runs:
        threads = run["settings"]["threads"]
        for item in run["plan"]:
            ident = (item["backend"], item["precision"], item["batch"], threads, item.get("device"))
            if item["key"] not in seen and ident not in seen:
                seen |= {item["key"], ident}
                rows.append(ReportRow(key=item["key"], backend=item["backend"], title=item["backend"],
                                      precision=item["precision"], batch=item["batch"], threads=threads,
                                      device=item.get("device"),
                                      status="not measured" if item["status"] == "planned" else item["status"],
                                      reason=item.get("reason") or "the run stopped before measuring it"))
    return rows


def _judge(rows: list[ReportRow], budget: Budget, with_metric: bool) -> None:
    """Set each row's speed-up over PyTorch FP32 (on the same device), budget verdict and Pareto membership."""
    baselines = {(r.batch, r.threads, r.device): r for r in rows if r.is_baseline and r.status == "ok"}
    for r in rows:
        base = baselines.get((r.batch, r.threads, r.device))
        r.speedup = speedup({"round_ms": base.round_ms, "p50_ms": base.p50_ms},
                            {"round_ms": r.round_ms, "p50_ms": r.p50_ms}) if base else None
        r.meets_budget = meets_budget(r, budget, with_metric)
    front = set()
    for batch, threads in groups(rows):
        for device in devices(rows):
            front |= pareto_keys([r for r in rows if r.batch == batch and r.threads == threads and r.device == device],
                                 with_metric)
    for r in rows:
        r.pareto = r.key in front


def debug_dir(out: Path, artifact_path: str) -> Path:
    """Where `bench --debug-misses` writes the debug run of the artifact at `artifact_path` (run-relative)."""
    return out / DEBUG / Path(artifact_path).name


def debug_page(out: Path, artifact_path: str | None) -> Path | None:
    """The debug.html of a row's artifact, where a debug run wrote one."""
    page = debug_dir(out, artifact_path) / "debug.html" if artifact_path else None
    return page if page is not None and page.is_file() else None


def _busy_warnings(last: Mapping[str, Any]) -> list[str]:
    load, cores = last.get("load_average"), last["machine"].get("cores") or 0
    if load is not None and cores and load > BUSY_LOAD * cores:
        return [f"The machine was busy when the run started (1-minute load average {load:g} on {cores} "
                "cores): other work competes with the runtimes' threads, so latencies, p99 most of all, "
                "are noisy. Re-run on an idle machine, or with --threads 1, before trusting small differences."]
    return []


def build_report(out: Path, budget: Budget | None = None) -> dict[str, Any]:
    """Everything the renderers show, from DIR/results.jsonl alone."""
    budget = budget or Budget()
    records = list(results.read(out / results.RESULTS))
    runs = [r for r in records if r["type"] == "run"]
    if not runs:
        raise BadInput(f"{out / results.RESULTS} holds no bench run.", hint="Run `modelport bench MODEL -o DIR` first.")
    last = runs[-1]
    if budget.expr is None and last.get("budget"):  # the expression the run searched its INT8 rows for
        budget = replace(budget, expr=last["budget"])
    scoped_runs = [r for r in runs if _scope(r) == _scope(last)]
    rows = _scoped_rows(out, records, scoped_runs)
    metric = last.get("reference_metric")
    _judge(rows, budget, metric is not None)
    rows.sort(key=lambda r: (r.batch, r.threads, r.device or "", ORDER.get(r.status, 9), not r.is_baseline,
                             r.p50_ms if r.p50_ms is not None else math.inf, r.backend, r.precision))
    recs = _recommend(rows, budget, metric)
    return results.clean({
        "generated": datetime.now(UTC).isoformat(timespec="seconds"), "model": last["model"],
        "machine": last["machine"], "load_average": last.get("load_average"), "versions": last["versions"],
        "settings": last["settings"],
        "data": last.get("data"), "reference_metric": metric, "budget": asdict(budget),
        "runs": [r["run"] for r in scoped_runs], "rows": [asdict(r) for r in rows], "recommendations": recs,
        "warnings": _busy_warnings(last),
        "recommendation": recs[0]["text"] if recs else "No row was measured; nothing to recommend.",
    })
