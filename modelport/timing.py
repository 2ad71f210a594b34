"""Timing loops: how a run is timed, shared by the harness (every row) and builds that time a choice.

The timed region is the runner's `run` call and nothing else: the feeds are built once before the
loop, the clock is `time.perf_counter_ns` read just before and after the call, and each duration goes
into a list slot allocated before the loop. Progress and the `--duration` deadline are checked between
chunks of iterations, never inside the loop. A backend times with these without knowing the harness.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")
RunFn = Callable[[Mapping[str, np.ndarray]], Any]
ProgressFn = Callable[[int, int], None]

CHUNKS = 20
# Before each runner's turn: ONNX Runtime's and OpenVINO's worker threads spin a while after a run and would take
# the cores from whichever runner comes next. The harness's rounds (harness/interleave.py) pause so between rows;
# builds, the budget search and the benchmarks time with this loop, and now pause the same.
HANDOFF_PAUSE_S = 0.02
MIN_ITERATIONS = 10
MAX_ITERATIONS = 1_000_000


def timed_loop(run: RunFn, feeds: Mapping[str, np.ndarray], times: list[int], start: int, stop: int) -> None:
    """Fill times[start:stop] with the ns each `run(feeds)` took: the only code inside the measurement."""
    clock = time.perf_counter_ns
    for i in range(start, stop):
        t0 = clock()
        run(feeds)
        times[i] = clock() - t0


def interleaved_rounds(runs: Mapping[str, RunFn], feeds: Mapping[str, np.ndarray], rounds: int,
                       budget_s: float) -> dict[str, list[float]]:
    """Per round, each runner's median ms per run, the runners taking turns round after round.

    Load drifting on a shared machine then hits every runner alike within a round: compare them round by
    round (a best round, or a median of per-round ratios), never one runner's whole run against another's.
    About `budget_s` seconds in all, after 3 warm-up runs each, with HANDOFF_PAUSE_S before each turn.
    """
    for run in runs.values():
        warm_up(run, feeds, 3)
    per_pass = max(sum(warm_up(run, feeds, 1)[0] for run in runs.values()) / 1e9, 1e-5)
    count = int(min(50, max(3, budget_s / per_pass / rounds)))
    times = [0] * count
    out: dict[str, list[float]] = {key: [] for key in runs}
    for r in range(rounds):
        for key in turns(list(runs), r):
            time.sleep(HANDOFF_PAUSE_S)
            timed_loop(runs[key], feeds, times, 0, count)
            out[key].append(float(np.median(times)) / 1e6)
    return out


def turns(keys: list[T], round_index: int) -> list[T]:
    """The order of round `round_index`'s turns: each round starts one runner later, so that every runner takes
    every place, the first among them, equally often. In a fixed order the first runner always follows the last
    one's turn and pays for it (its threads still spinning, the cache cold)."""
    shift = round_index % len(keys) if keys else 0
    return keys[shift:] + keys[:shift]


def warm_up(run: RunFn, feeds: Mapping[str, np.ndarray], iterations: int) -> list[int]:
    """Untimed-for-the-report runs that let the runtime allocate and tune; returns their durations."""
    times = [0] * max(iterations, 1)
    timed_loop(run, feeds, times, 0, len(times))
    return times


def timed_runs(run: RunFn, feeds: Mapping[str, np.ndarray], *, iterations: int | None = None,
               duration: float | None = None, warmup: int = 10,
               progress: ProgressFn | None = None) -> np.ndarray:
    """Durations in ns of `iterations` runs, or of as many as fit in `duration` seconds (at least 10).

    Exactly one of `iterations` and `duration` is given.
    """
    if (iterations is None) == (duration is None):
        raise ValueError("give exactly one of iterations and duration")
    warm = warm_up(run, feeds, warmup)
    if iterations is not None:
        total = max(1, int(iterations))
        chunk = max(1, -(-total // CHUNKS))
        times = [0] * total
        for start in range(0, total, chunk):
            stop = min(start + chunk, total)
            timed_loop(run, feeds, times, start, stop)
            if progress:
                progress(stop, total)
        return np.asarray(times, dtype=np.int64)
    assert duration is not None
    per_run = max(float(np.median(warm)), 1.0)
    estimate = int(min(MAX_ITERATIONS, max(MIN_ITERATIONS, duration * 1e9 / per_run)))
    chunk = max(1, estimate // CHUNKS)
    budget_ns = int(duration * 1e9)
    times: list[int] = []
    start_ns = time.perf_counter_ns()
    while True:
        start = len(times)
        times.extend([0] * chunk)
        timed_loop(run, feeds, times, start, start + chunk)
        elapsed = time.perf_counter_ns() - start_ns
        if progress:
            progress(min(elapsed, budget_ns), budget_ns)
        if (elapsed >= budget_ns and len(times) >= MIN_ITERATIONS) or len(times) >= MAX_ITERATIONS:
            return np.asarray(times, dtype=np.int64)
