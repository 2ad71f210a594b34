"""`--rounds N`: the rows of each batch size take turns, round after round, each runner loaded once in its
own process; a runner that dies mid-rounds fails its own remaining rows and the others go on."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelport.errors import BadInput
from modelport.harness import bench, interleave, matrix, results
from modelport.harness.interleave import MIN_ROUND_RUNS
from modelport.harness.latency import speedup
from modelport.timing import MIN_ITERATIONS
from tests.models import MLP

RUNNERS = '''
import os
import signal

from modelport.model import load_model

LOG = LOG_PATH


class Stamping:
    """The model in PyTorch, writing its name and batch size to a shared log on every run."""

    def __init__(self, name, crash_at_batch_2_after_1=False):
        self.source = load_model(MODEL_REF)
        self.name, self.crash, self.seen = name, crash_at_batch_2_after_1, set()

    def run(self, feeds):
        batch = len(next(iter(feeds.values())))
        if self.crash and batch == 2 and 1 in self.seen:  # the timing process, past batch 1
            os.kill(os.getpid(), signal.SIGSEGV)
        self.seen.add(batch)
        with open(LOG, "a") as log:
            log.write(f"{self.name} {batch} {os.getpid()}\\n")
        return self.source.run(feeds)


def a(threads):
    return Stamping("a")


def b(threads):
    return Stamping("b")


def dies_at_batch_2(threads):
    return Stamping("c", crash_at_batch_2_after_1=True)
'''


@pytest.fixture
def runners(write_model, tmp_path: Path) -> tuple[str, Path]:
    log = tmp_path / "calls.log"
    path = tmp_path / "stamping_runners.py"
    path.write_text(RUNNERS.replace("MODEL_REF", repr(write_model(MLP))).replace("LOG_PATH", repr(str(log))))
    return str(path), log


def _rows(out: Path) -> list[dict]:
    return [r for r in results.read(out / results.RESULTS) if r["type"] == "row"]


def test_rows_of_a_batch_size_take_turns_round_after_round_in_one_loaded_process_each(runners, write_model,
                                                                                      tmp_path):
    ref, log = runners
    out = tmp_path / "bench"
    bench(write_model(MLP), out=out, backends=[], runners={"a": f"{ref}:a", "b": f"{ref}:b"}, batches=(1, 2),
          iterations=6, warmup=1, rounds=3, threads=1)
    rows = {(r["backend"], r["batch"]): r for r in _rows(out)}
    assert {r["status"] for r in rows.values()} == {"ok"}
    for name in ("a", "b"):
        for batch in (1, 2):
            latency = rows[(name, batch)]["latency"]
            assert latency["iterations"] == 6 and latency["rounds"] == 3 and len(latency["round_ms"]) == 3
    calls = [line.split() for line in log.read_text().splitlines()]
    # each runner ran in two processes: its fidelity pass, then one that timed both batch sizes
    pids = {name: list(dict.fromkeys(pid for n, _, pid in calls if n == name)) for name in ("a", "b")}
    assert len(pids["a"]) == len(pids["b"]) == 2
    timing = {pids["a"][1], pids["b"][1]}
    order = [f"{name}{batch}" for name, batch, pid in calls if pid in timing]
    # per batch size: one warm-up run each, then 3 rounds in which a and b each make 2 runs in turn; each round starts
    # one row later among the three (PyTorch's row first in round 1, which this log does not see)
    per_batch = ["a", "b", *["a", "a", "b", "b"] * 2, "b", "b", "a", "a"]
    assert order == [f"{n}1" for n in per_batch] + [f"{n}2" for n in per_batch]
    assert "taking turns over 3 rounds" in (out / "report.md").read_text()


def test_a_runner_dying_mid_rounds_fails_only_its_unwritten_rows(runners, write_model, tmp_path):
    ref, _ = runners
    out = tmp_path / "bench"
    bench(write_model(MLP), out=out, backends=[], runners={"a": f"{ref}:a", "c": f"{ref}:dies_at_batch_2"},
          batches=(1, 2), iterations=6, warmup=1, rounds=3, threads=1)
    rows = {(r["backend"], r["batch"]): r for r in _rows(out)}
    assert rows[("c", 1)]["status"] == "ok"  # written when batch 1 finished, before the crash
    died = rows[("c", 2)]
    assert died["status"] == "failed" and died["stage"] == "latency" and "killed by SIGSEGV" in died["reason"]
    assert rows[("a", 2)]["status"] == "ok" and rows[("a", 2)]["latency"]["rounds"] == 3
    assert rows[("pytorch", 2)]["status"] == "ok"


def test_each_row_gets_its_share_of_the_rounds_and_at_least_the_minimum_in_all():
    by_duration = matrix.Settings(duration=1.0, rounds=5)
    assert interleave.runs_per_round(by_duration, per_run_ns=1e6) == 200  # 1 s of 1 ms runs over 5 rounds
    # rows slower than the duration still get MIN_ITERATIONS in all; past a second a run, MIN_ROUND_RUNS
    assert interleave.runs_per_round(by_duration, per_run_ns=1.5e8) * 5 >= MIN_ITERATIONS
    assert interleave.runs_per_round(by_duration, per_run_ns=2e9) == 1
    assert interleave.runs_per_round(matrix.Settings(duration=1.0, rounds=2), per_run_ns=2e9) * 2 >= MIN_ROUND_RUNS
    assert interleave.runs_per_round(matrix.Settings(iterations=7, duration=None, rounds=3), 1e6) == 3
    with pytest.raises(BadInput, match="--rounds"):
        matrix.Settings(rounds=0)


def test_speed_ups_compare_rows_round_by_round_when_they_took_turns():
    # the machine slowed down in round 2 for both rows: per-round ratios see 2x throughout
    base, row = {"p50_ms": 30.0, "round_ms": [10.0, 50.0, 10.0]}, {"p50_ms": 5.0, "round_ms": [5.0, 25.0, 5.0]}
    assert speedup(base, row) == pytest.approx(2.0)
    # rows timed apart: only their p50s can be compared
    assert speedup({"p50_ms": 30.0}, {"p50_ms": 5.0}) == pytest.approx(6.0)
    assert speedup({"p50_ms": 30.0}, {"p50_ms": None}) is None
