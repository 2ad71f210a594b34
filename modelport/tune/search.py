"""The accuracy-budget search: the fewest layers kept out of INT8 that meet the budget, judged on the target runtime.

Full INT8 is built and judged first, on held-out evaluation data (never the calibration samples). If it misses,
debug's ranking on that artifact orders the layers by the error each adds (each as the group of nodes that keeps its
error out, tune/exclude.py); the top 1, 2, 4... groups are kept in float until a candidate meets the budget, then a
bisection on the count finds the fewest; a group whose fallback did not help (the candidate with it came no closer
than the one without) is then quantized again in one more candidate. At most `max_candidates` builds are judged.
Where a backend's default build cannot keep a layer's error out by excluding it (OpenVINO's NNCF, exclude.ROUTES), a
missed default build is followed by the route's full INT8 build, which is ranked and searched instead; the
manifest's `tune.exclusion` and `tune.route` say how layers were kept out. Where a backend has a full INT8 build
that is closer to float on some models and farther on others (TFLite's float-output FCs, exclude.ALTERNATIVES), a
missed default build is judged beside it and the search goes on from the closer (`tune.alternative`). Where the
default build met the budget but chose fidelity over speed (ONNX Runtime's int8 guard taking u8u8, exclude.FASTER),
its faster variant is judged beside it (`tune.faster`). Where a backend computes a half precision fast on this
machine (OpenVINO's BF16 on CPUs with AMX or AVX512_BF16, exclude.HALF), the layers kept out of INT8 are kept in it
first, and in FP32 only where no such candidate meets the budget (`tune.half`). Every candidate is timed in
interleaved rounds (timing.interleaved_rounds); the fastest that meets the budget is written to `out`, or the closest
when none does (marked `budget: missed`). The manifest's `tune.key` hashes everything the search depends on (model
content, calibration and evaluation data, budget, options, cap, metric, runtime and modelport versions): a later search
with the same key reuses the artifact at `out` unless `force`.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelport.artifact import MANIFEST, Artifact, build_key, damage, staging_dir
from modelport.backends import get_backend
from modelport.builder import build_artifact, modelport_version
from modelport.bundle import ModelBundle
from modelport.calibration import CalibrationSet
from modelport.debug import debug_artifact, rank_layers
from modelport.errors import BadInput, StepFailed
from modelport.exporters.tensor_map import reference_layers
from modelport.harness.fidelity import ACCURACY, TaskMetric, evaluate, reference_metric
from modelport.loading import load_artifact
from modelport.timing import interleaved_rounds
from modelport.tune.budget import Budget, check_applies
from modelport.tune.exclude import (
    TO_OPTIONS,
    already_float,
    alternative_for,
    describe_exclusion,
    faster_for,
    half_for,
    layer_groups,
    route_for,
    with_nodes,
)

MAX_CANDIDATES = 10
TIMING_ROUNDS = 5


@dataclass
class Candidate:
    """One build: the ONNX nodes it keeps in float, its figures on the evaluation data, its latency."""

    nodes: tuple[str, ...]
    path: Path
    figures: dict[str, float | None]
    met: bool
    shortfall: float
    options: dict[str, Any]  # what it was built with beyond the user's options (a route's and the exclusion)
    latency_ms: float | None = None
    order: int = 0  # when it was built, among the search's candidates
    kept_in: str = "fp32"  # what the nodes kept out of INT8 compute in (a half precision: exclude.HALF)

    def to_json(self) -> dict[str, Any]:
        def clean(v: float | None) -> float | None:
            return v if v is None or math.isfinite(v) else None

        return {"kept_in_float": list(self.nodes), "kept_in": self.kept_in,
                "figures": {k: clean(v) for k, v in self.figures.items()}, "met": self.met,
                "latency_ms": self.latency_ms, "options": self.options}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], budget: Budget, path: Path) -> Candidate:
        figures = {k: math.inf if k == "sqnr" and v is None else v for k, v in data["figures"].items()}
        return cls(tuple(data["kept_in_float"]), path, figures, data["met"], budget.shortfall(figures),
                   dict(data["options"]), data["latency_ms"], kept_in=data.get("kept_in", "fp32"))


class Judge:
    """A candidate's figures against PyTorch FP32 on the evaluation data (its outputs computed once)."""

    def __init__(self, bundle: ModelBundle, evaluation: CalibrationSet, budget: Budget,
                 metric: TaskMetric | None = None) -> None:
        self.batches = list(evaluation.batches())
        self.reference = _concat(bundle.source.run(b) for b in self.batches)
        self.labels = evaluation.labels()
        self.metric = (metric or ACCURACY) if budget.needs_labels else None
        self.baseline = reference_metric(self.metric, self.reference, self.labels) if self.metric else None

    def __call__(self, path: Path) -> dict[str, float | None]:
        with load_artifact(path) as runner:
            outputs = _concat(runner.run(b) for b in self.batches)
        record = evaluate(outputs, self.reference, self.labels, self.metric, self.baseline)
        summary, metric = record["summary"], record["metric"]
        return {"cos": summary["cosine"], "sqnr": math.inf if summary["identical"] else summary["sqnr_db"],
                "drop": -metric["delta"] if metric and metric["delta"] is not None else None}


def _concat(parts: Any) -> dict[str, np.ndarray]:
    collected: dict[str, list[np.ndarray]] = {}
    for part in parts:
        for name, value in part.items():
            collected.setdefault(name, []).append(np.asarray(value))
    return {name: np.concatenate(values) for name, values in collected.items()}


@dataclass
class Outcome:
    """The artifact written, and the record its manifest holds under `tune`."""

    artifact: Artifact
    record: dict[str, Any]
    why_missed: StepFailed | None = None  # the figures and what to try next, when no candidate met the budget
    reused: bool = False  # an earlier search with the same key wrote `artifact`; nothing was built

    @property
    def met(self) -> bool:
        return self.record["status"] == "met"


def search(bundle: ModelBundle, backend: str, out: str | Path, budget: Budget, calibration: CalibrationSet, *,
           evaluation: CalibrationSet | None = None, options: Mapping[str, Any] | None = None,
           max_candidates: int = MAX_CANDIDATES, threads: int | None = None, metric: TaskMetric | None = None,
           report: Callable[[str], None] | None = None, force: bool = False) -> Outcome:
    """Search, write the chosen INT8 artifact to `out`, and return it; StepFailed (after writing the closest
    candidate) when none meets the budget. Without `evaluation`, a quarter of `calibration` is held out.
    `metric` is the task metric `drop` is measured in (default top-1 accuracy)."""
    outcome = search_closest(bundle, backend, out, budget, calibration, evaluation=evaluation, options=options,
                             max_candidates=max_candidates, threads=threads, metric=metric, report=report,
                             force=force)
    if outcome.why_missed is not None:
        raise outcome.why_missed
    return outcome


def search_closest(bundle: ModelBundle, backend: str, out: str | Path, budget: Budget, calibration: CalibrationSet,
                   *, evaluation: CalibrationSet | None = None, options: Mapping[str, Any] | None = None,
                   max_candidates: int = MAX_CANDIDATES, threads: int | None = None,
                   metric: TaskMetric | None = None, report: Callable[[str], None] | None = None,
                   force: bool = False) -> Outcome:
    """`search` without the error: the bench's INT8 row is the closest candidate whether it meets the budget or
    not, and its report says which (`Outcome.met`, the manifest's `tune.status`). An artifact at `out` that a
    search with the same key wrote is returned as it is (`Outcome.reused`) unless `force`."""
    start = time.perf_counter()
    if max_candidates < 1:
        raise BadInput(f"--max-candidates {max_candidates}: at least the full INT8 build is judged.")
    if evaluation is None:
        calibration, evaluation = calibration.split()
    elif evaluation.fingerprint == calibration.fingerprint:
        raise BadInput("The evaluation data is the calibration data: a budget judged on it says nothing about "
                       "new inputs.", hint="Pass held-out samples to --eval, or leave --eval out to hold out a "
                                           "quarter of --calib.")
    check_applies(budget, "int8", evaluation.labels() is not None)
    out = Path(out)
    key = search_key(bundle, backend, budget, calibration, evaluation, options or {}, max_candidates, metric)
    if not force and (done := _searched(out, key, budget, backend)) is not None:
        return done
    workdir = out.with_name(f"{out.name}.tune")
    judge = Judge(bundle, evaluation, budget, metric)
    say = report or (lambda _: None)
    tried: dict[int, Candidate] = {}  # by the number of ranked groups kept in float
    set_aside: list[Candidate] = []  # full INT8 builds judged that the search did not go on from
    groups: list[tuple[str, ...]] = []
    user = dict(options or {})
    base = dict(user)
    builds = itertools.count()

    def build(opts: dict[str, Any], nodes: tuple[str, ...] = ()) -> Candidate:
        """Build and judge one candidate; `nodes` are kept out of INT8, in the half precision where `opts` ask."""
        order = next(builds)
        path = build_artifact(bundle, backend, "int8", workdir / f"c{order}", options=opts,
                              calibration=calibration)[0].path
        figures = judge(path)
        extra = {k: v for k, v in opts.items() if user.get(k) != v}
        halved = half is not None and bool(nodes) and half.options.items() <= opts.items()
        built = Candidate(nodes, path, figures, budget.met(figures), budget.shortfall(figures), extra, order=order,
                          kept_in=(half.precision or "half") if halved else "fp32")
        say(f"{len(nodes)} node(s) in {'float' if built.kept_in == 'fp32' else built.kept_in}"
            f"{''.join(f', {k}={v}' for k, v in extra.items() if k != 'exclude')}: "
            f"{_figures(figures)} -> {'meets' if built.met else 'misses'} {budget.describe()}")
        return built

    def at(count: int, keeping: Mapping[str, Any] | None = None) -> Candidate:
        """The candidate keeping the top `count` ranked groups out of INT8, built with `keeping` (a half route's
        options) on top of `base`."""
        if count not in tried:
            nodes = tuple(dict.fromkeys(n for g in groups[:count] for n in g))  # groups overlap
            tried[count] = build(with_nodes(backend, {**base, **(keeping or {})}, nodes) if nodes else dict(base),
                                 nodes)
        return tried[count]

    route, alternative, half = route_for(backend, user), alternative_for(backend, user), half_for(backend, user)
    in_half: list[Candidate] = []  # candidates that kept layers in half, set aside when none of them met
    try:
        if not at(0).met and route is not None and max_candidates > 1:
            set_aside.append(tried.pop(0))
            base.update(route.options)
            at(0)
        if not tried[0].met and alternative is not None and max_candidates - len(set_aside) > 1:
            other = build({**base, **alternative.options})
            if other.shortfall < tried[0].shortfall:
                set_aside.append(tried.pop(0))
                base.update(alternative.options)
                tried[0] = other
            else:
                set_aside.append(other)
        cap = max_candidates - len(set_aside)
        # met already: a build the backend made for fidelity has a faster variant, which ships if it meets too
        faster = faster_for(backend, Artifact.open(tried[0].path).details, user) if tried[0].met else None
        variants = [build({**base, **faster.options})] if faster is not None and cap > 1 else []
        if not tried[0].met and backend in TO_OPTIONS and cap > 1:
            groups = _ranked_groups(bundle, backend, tried[0].path, evaluation, threads)
            keeping = half.options if half else {}
            _fewest(functools.partial(at, keeping=keeping), len(groups), tried, cap)
            if half and not any(c.met for c in tried.values()) and len(tried) < cap:  # half cannot: FP32
                in_half, keeping = [tried.pop(k) for k in sorted(tried) if k], {}
                _fewest(at, len(groups), tried, cap - len(in_half))
            kept = _without_unhelpful(tried, groups) if len(tried) + len(in_half) < cap else None
            variants += [build(with_nodes(backend, {**base, **keeping}, kept), kept)] if kept else []
        full = sorted([*set_aside, tried[0]], key=lambda c: c.order)  # the full INT8 builds, as judged
        candidates = full + in_half + [tried[k] for k in sorted(tried) if k] + variants
        _time(candidates, judge.batches[0], threads)
        passing = [c for c in candidates if c.met]
        chosen = (min(passing, key=lambda c: (c.latency_ms or math.inf, len(c.nodes))) if passing
                  else min(candidates, key=lambda c: (c.shortfall, len(c.nodes))))
        record = {"key": key, "budget": budget.describe(), "status": "met" if passing else "missed", "backend": backend,
                  "evaluation": {"source": evaluation.source.description, "samples": len(evaluation),
                                 "fingerprint": evaluation.fingerprint},
                  "exclusion": describe_exclusion(backend, base),
                  **({"route": {"options": route.options, "why": route.why}} if route and route.options.items() <=
                     base.items() else {}),
                  **({"alternative": {"options": alternative.options, "why": alternative.why,
                                      "searched_from": alternative.options.items() <= base.items()}}
                     if alternative and any(c.options.items() >= alternative.options.items() for c in candidates)
                     else {}),
                  **({"faster": {"options": faster.options, "why": faster.why}} if variants and faster else {}),
                  **({"half": {"precision": half.precision, "options": half.options, "why": half.why,
                               "fell_back_to_fp32": bool(in_half)}}
                     if half and len(candidates) > len(full) else {}),
                  "ranked_groups": [list(g) for g in groups], "max_candidates": max_candidates,
                  "candidates": [c.to_json() for c in candidates], "chosen": candidates.index(chosen),
                  "seconds": round(time.perf_counter() - start, 3),
                  **({"warning": warning} if (warning := _all_ranked_float(chosen, groups, backend)) else {})}
        artifact = _write(chosen.path, out, record)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return Outcome(artifact, record, _missed(budget, backend, chosen, candidates, out) if not passing else None)


def search_key(bundle: ModelBundle, backend: str, budget: Budget, calibration: CalibrationSet,
               evaluation: CalibrationSet, options: Mapping[str, Any], max_candidates: int,
               metric: TaskMetric | None) -> str:
    """What the searched artifact depends on, hashed: equal keys mean the search would judge the same builds on the
    same samples (the metric by its name)."""
    return build_key({"backend": backend, "model": bundle.source.content_hash, "opset": bundle.opset,
                      "calibration": calibration.fingerprint, "evaluation": evaluation.fingerprint,
                      "budget": budget.describe(), "options": dict(options), "max_candidates": max_candidates,
                      "metric": metric.name if metric is not None else None, "modelport": modelport_version(),
                      "versions": get_backend(backend).versions()})


def _searched(out: Path, key: str, budget: Budget, backend: str) -> Outcome | None:
    """The artifact at `out` when a search with `key` wrote it and its files are as written; else None."""
    try:
        artifact = Artifact.open(out)
    except BadInput:
        return None
    record = artifact.manifest.get("tune") or {}
    if record.get("key") != key or damage(artifact, hashes=True) is not None:
        return None
    candidates = [Candidate.from_json(c, budget, out) for c in record["candidates"]]
    missed = (None if record["status"] == "met" else
              _missed(budget, backend, candidates[record["chosen"]], candidates, out))
    return Outcome(artifact, record, missed, reused=True)


def _ranked_groups(bundle: ModelBundle, backend: str, int8: Path, evaluation: CalibrationSet,
                   threads: int | None) -> list[tuple[str, ...]]:
    """Debug's culprits on the full INT8 artifact, as groups of ONNX nodes kept in float together, worst first;
    layers that add no error, that `backend` cannot keep in float, or whose group the build already kept in float,
    are left out."""
    record = debug_artifact(int8, bundle.source, evaluation, threads=threads)
    mapped = {e["onnx_node"] for e in record["layers"] if e["runtime_tensor"]}
    groups = layer_groups(reference_layers(bundle.onnx_path), backend, mapped)
    floats = already_float(Artifact.open(int8).details)
    ranked = [groups[e["onnx_node"]] for e in rank_layers(record["layers"])
              if e["onnx_node"] in groups and e["jump_db"] > 0 and not set(groups[e["onnx_node"]]) <= floats]
    return _adding_nodes(ranked)


def _adding_nodes(ranked: Sequence[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """The ranked groups less those whose nodes groups ranked above already keep in float: groups overlap (a pool
    and the conv after it), and such a group would make a count judge the same build as the count before it."""
    seen: set[str] = set()
    kept = []
    for group in ranked:
        if not set(group) <= seen:
            kept.append(group)
            seen.update(group)
    return kept


def _fewest(at: Callable[[int], Candidate], n: int, tried: Mapping[int, Candidate], cap: int) -> None:
    """Counts 1, 2, 4... up to `n` until one meets the budget, then bisection between the last miss and it."""
    low, high, count = 0, None, 1
    while count <= n and len(tried) < cap:
        if at(count).met:
            high = count
            break
        low = count
        if count == n:
            break
        count = min(2 * count, n)
    while high is not None and high - low > 1 and len(tried) < cap:
        mid = (low + high) // 2
        if at(mid).met:
            high = mid
        else:
            low = mid


def _without_unhelpful(tried: Mapping[int, Candidate], groups: Sequence[tuple[str, ...]]) -> tuple[str, ...] | None:
    """The best count's nodes less every group whose fallback did not help: judged at two consecutive counts, the
    candidate with it came no closer to the budget than the one without. None when there is no such group."""
    best = min(tried, key=lambda k: (not tried[k].met, k if tried[k].met else tried[k].shortfall))
    useless = {k for k in range(1, best + 1) if k in tried and k - 1 in tried
               and tried[k].shortfall >= tried[k - 1].shortfall}
    if not useless:
        return None
    keep = [n for i, g in enumerate(groups[:best], start=1) if i not in useless for n in g]
    drop = {n for i in useless for n in groups[i - 1]} - set(keep)
    return tuple(n for n in tried[best].nodes if n not in drop) if drop else None


def _all_ranked_float(chosen: Candidate, groups: Sequence[tuple[str, ...]], backend: str) -> str | None:
    """A warning when the chosen candidate keeps every ranked group in float: an INT8 artifact mostly in name."""
    ranked = {n for g in groups for n in g}
    if not ranked or not ranked <= set(chosen.nodes):
        return None
    return (f"Every layer debug ranked is kept out of INT8 ({len(chosen.nodes)} nodes): little of this artifact runs "
            f"in INT8, so {backend}'s FP32 or FP16 build may meet the budget as well and run faster (`modelport bench "
            "--budget` times them side by side).")


def _time(candidates: Sequence[Candidate], feeds: Mapping[str, np.ndarray], threads: int | None) -> None:
    """Each candidate's median ms per run over interleaved rounds (load drift hits them alike)."""
    runners = [load_artifact(c.path, threads=threads) for c in candidates]
    try:
        rounds = interleaved_rounds({str(i): r.run for i, r in enumerate(runners)}, feeds, TIMING_ROUNDS,
                                    budget_s=0.3 * len(runners))
    finally:
        for r in runners:
            r.close()
    for i, c in enumerate(candidates):
        c.latency_ms = round(float(np.median(rounds[str(i)])), 4)


def _write(chosen: Path, out: Path, record: dict[str, Any]) -> Artifact:
    """The chosen candidate copied to `out` whole or not at all, its manifest carrying the search's record."""
    with staging_dir(out) as tmp:
        shutil.copytree(chosen, tmp, dirs_exist_ok=True)
        manifest = json.loads((tmp / MANIFEST).read_text())
        manifest["details"]["budget"] = record["status"]
        manifest["tune"] = record
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    return Artifact.open(out)


def _figures(figures: Mapping[str, float | None]) -> str:
    shown = {"cos": "cos {:.5f}", "sqnr": "sqnr {:.1f} dB", "drop": "drop {:.2f}"}
    return ", ".join(shown[k].format(v) for k, v in figures.items() if v is not None and math.isfinite(v))


def _missed(budget: Budget, backend: str, closest: Candidate, candidates: Sequence[Candidate],
            out: Path) -> StepFailed:
    tried = "; ".join(f"{len(c.nodes)} in float: {_figures(c.figures)}" for c in candidates)
    how = ("" if backend in TO_OPTIONS else
           f" {backend} has no option to keep single layers in float, so only its full INT8 build was judged.")
    return StepFailed(f"No {backend} INT8 candidate meets the budget {budget.describe()}. The closest keeps "
                      f"{len(closest.nodes)} node(s) in float ({', '.join(closest.nodes) or 'none'}) and reaches "
                      f"{_figures(closest.figures)}; tried {len(candidates)}: {tried}. Wrote it to {out}, marked "
                      f"budget: missed.{how}",
                      hint="Try --precision fp16, another calibration method (--option method=entropy or "
                           "percentile), more --max-candidates, or quantization-aware training: modelport compress "
                           "--qat.")
