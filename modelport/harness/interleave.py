"""Interleaved timing (`--rounds N`): every row of one batch size takes turns, round after round.

Timed one after another, two rows are minutes apart, and a shared machine's load drifts in between
(PyTorch eager on ResNet-50 measured 96.7 ms one session and 136 ms the next). Here each runner is
loaded in its own process (isolation as before: its own runtime, threads and memory) and stays loaded,
waiting; the rows of one batch size then time a share of their runs in turn, N rounds over. Drift
lands on every row of a round alike, and each row keeps its per-round medians (`round_ms`) so that
two rows can be compared round by round.

The cost: every runner of the bench is resident at once (the sum of the rows' memory, not the largest).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from modelport.harness.isolate import ChildGone, LiveChild
from modelport.harness.jobs import RoundsJob
from modelport.timing import HANDOFF_PAUSE_S, MAX_ITERATIONS, MIN_ITERATIONS, turns

if TYPE_CHECKING:
    from modelport.harness.matrix import MatrixRun, PlanItem, Prepared

MIN_ROUND_RUNS = 5  # a slow row timed in rounds rests its p50 on at least this many runs
SLOW_RUN_NS = 1e9
# Runners that load at once, each in its own fresh process: most of a load is single-threaded (Python
# imports, reading weights), so two overlap on two cores; a row's load_seconds then includes some of the
# other's. Nothing is timed until all are loaded.
LOADING_AT_ONCE = 2


def runs_per_round(settings: Any, per_run_ns: float) -> int:
    """Each row's share of one round: its runs spread over the rounds, at least MIN_ITERATIONS in all, or
    MIN_ROUND_RUNS for a row slower than SLOW_RUN_NS a run.

    Ten 2.5 s runs (a transformer at batch 8) would double such a row's time for no steadier ratio: each
    round's run is itself a side-by-side sample of the speed-up. Faster rows keep ten, where a noisy host
    needs them.
    """
    rounds = settings.rounds
    if settings.iterations is not None:
        return max(1, math.ceil(settings.iterations / rounds))
    wanted = settings.duration * 1e9 / max(per_run_ns, 1.0) / rounds
    least = MIN_ROUND_RUNS if per_run_ns > SLOW_RUN_NS else MIN_ITERATIONS
    return int(min(MAX_ITERATIONS, max(math.ceil(least / rounds), round(wanted))))


class Rounds:
    """Loads every prepared runner, times them in turns per batch size, and emits their rows."""

    def __init__(self, run: MatrixRun, prepared: list[Prepared]) -> None:
        self.run = run
        self.settings = run.ctx.settings
        self.prepared = prepared
        self.children: dict[int, LiveChild] = {}
        self.open: dict[int, list[PlanItem]] = {i: list(p.items) for i, p in enumerate(prepared)}
        self.loaded: dict[int, dict[str, Any]] = {}

    def run_all(self) -> None:
        try:
            waiting = list(self.open)
            while waiting:
                wave, waiting = waiting[:LOADING_AT_ONCE], waiting[LOADING_AT_ONCE:]
                for i in wave:
                    self._spawn(i)
                for i in wave:
                    self._ready(i)
            for batch in self.settings.batches:
                self._batch(batch)
            for i in list(self.children):
                self.children.pop(i).finish(self.settings.timeout)  # every row is written; its log keeps the rest
        finally:
            for child in self.children.values():
                child.kill()

    def _ask(self, i: int, command: dict[str, Any] | None) -> dict[str, Any] | None:
        try:
            return self.children[i].ask(command, self.settings.timeout)
        except ChildGone as exc:
            del self.children[i]
            self._fail(i, str(exc) + f" [log: {exc.outcome.log.relative_to(self.run.ctx.out)}]")
            return None

    def _fail(self, i: int, reason: str) -> None:
        for item in self.open.pop(i, []):
            self.run.latency_failed(self.prepared[i], item, reason)

    def _spawn(self, i: int) -> None:
        prepared = self.prepared[i]
        self.run.step(f"loading {prepared.label}")
        job = RoundsJob(runner=prepared.runner_spec, inputs=str(self.run.ctx.data.inputs_path))
        self.children[i] = LiveChild(job, workdir=self.run.ctx.work, name=f"{prepared.items[0].slug}-rounds",
                                     threads=self.settings.threads)

    def _ready(self, i: int) -> None:
        reply = self._ask(i, None)  # waits for "ready": the runner is loaded
        if reply is not None:
            self.loaded[i] = reply

    def _batch(self, batch: int) -> None:
        rows = {i: item for i, items in self.open.items() for item in items
                if item.batch == batch and i in self.children}
        counts = {}
        for i in rows:
            self.run.step(f"warming up {self.prepared[i].label} at batch {batch}")
            reply = self._ask(i, {"cmd": "warm", "batch": batch, "warmup": self.settings.warmup})
            if reply is not None:
                counts[i] = runs_per_round(self.settings, reply["per_run_ns"])
        progress = self.run.step(f"timing {len(counts)} rows at batch {batch} in {self.settings.rounds} rounds")
        for r in range(self.settings.rounds):
            for i in turns(list(counts), r):
                if i in self.children:
                    self._ask(i, {"cmd": "time", "batch": batch, "count": counts[i]})
                    time.sleep(HANDOFF_PAUSE_S)
            progress(r + 1, self.settings.rounds)
        for i in counts:
            if i in self.children and (timed := self._ask(i, {"cmd": "summary", "batch": batch})) is not None:
                self._emit(i, rows[i], timed)

    def _emit(self, i: int, item: PlanItem, timed: dict[str, Any]) -> None:
        from modelport.harness.matrix import LATENCY_KEYS

        self.open[i].remove(item)
        loaded = {"load_seconds": self.loaded[i]["load_seconds"], "threads": self.settings.threads}
        latency = {**{k: timed.get(k, loaded.get(k)) for k in LATENCY_KEYS}, "rounds": timed["rounds"],
                   "round_ms": timed["round_ms"]}
        self.run.measured(self.prepared[i], item, latency)
