"""The harness's own cost per timed iteration, on a model whose ONNX Runtime run takes about 0.1 ms.

`modelport.timing.timed_loop` (the loop `modelport bench` times every row with) runs over the
modelport Runner of an ONNX Runtime fp32 artifact, while a thin probe around the Runner's
InferenceSession records how long each of the runtime's own `run` calls took, in the same iteration.

Figures (medians over rounds; each round's shares are of its total wall time):
- harness share: the part of each iteration outside `runner.run`: the clock reads, the loop and the
  store, which the reported latency leaves out. Goal: under 5%.
- outside-runtime share: the part outside the runtime's own `InferenceSession.run`: the harness share
  plus the Runner's feed checks and conversions (and the probe's own clock reads), which the reported
  latency includes.

    .venv/bin/python benchmarks/bench_harness_overhead.py [--iterations 2000] [--rounds 9]

Writes benchmarks/results/harness_overhead.json and .md with the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn

RESULTS = Path(__file__).parent / "results"
TARGET_MS = 0.1
WIDTHS = (64, 128, 192, 256, 384, 512, 768)


def mlp(width: int) -> tuple[nn.Module, tuple[torch.Tensor]]:
    """Two dense layers around a ReLU; `width` sets the work per run."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(width, 2 * width), nn.ReLU(), nn.Linear(2 * width, width)).eval()
    return model, (torch.randn(1, width),)


def _build(width: int, folder: Path):
    """The fp32 ONNX Runtime artifact of mlp(width), and its Runner at one thread."""
    from modelport.builder import build_artifact
    from modelport.bundle import ModelBundle
    from modelport.loading import load_artifact
    from modelport.model import SourceModel, output_specs, weights_hash
    from modelport.specs import TensorSpec as Spec
    from modelport.specs import dtype_name

    module, (x,) = mlp(width)
    inputs = [Spec("x", tuple(x.shape), dtype_name(x.dtype))]
    source = SourceModel(f"mlp{width}", f"{__file__}:mlp", module, inputs, output_specs(module, inputs, {"x": x}),
                         {"x": x}, weights_hash(module))
    artifact, _ = build_artifact(ModelBundle(source, onnx_dir=folder / "onnx"), "onnxruntime", "fp32",
                                 folder / f"ort-{width}")
    return load_artifact(artifact.path, threads=1), {"x": x.numpy()}


def _bare_loop(session, names, arrays, n: int) -> int:
    run = session.run
    start = time.perf_counter_ns()
    for _ in range(n):
        run(names, arrays)
    return time.perf_counter_ns() - start


def _runtime_ms(runner, feeds) -> float:
    arrays = {k: np.ascontiguousarray(v) for k, v in feeds.items()}
    names = [o.name for o in runner.session.get_outputs()]
    _bare_loop(runner.session, names, arrays, 200)
    return _bare_loop(runner.session, names, arrays, 2000) / 2000 / 1e6


def choose_width(folder: Path) -> int:
    """The width whose runtime call is closest to TARGET_MS on this machine."""
    best = None
    for width in WIDTHS:
        runner, feeds = _build(width, folder)
        ms = _runtime_ms(runner, feeds)
        if best is None or abs(ms - TARGET_MS) < abs(best[1] - TARGET_MS):
            best = (width, ms)
        if ms > TARGET_MS:
            break
    assert best is not None
    return best[0]


class _ProbedSession:
    """Stands in for the Runner's InferenceSession: the same session, each `run` call timed."""

    def __init__(self, session, store: list[int]) -> None:
        self._session, self._run, self.store, self.calls = session, session.run, store, 0

    def run(self, *args, **kwargs):
        t0 = time.perf_counter_ns()
        out = self._run(*args, **kwargs)
        self.store[self.calls] = time.perf_counter_ns() - t0
        self.calls += 1
        return out

    def __getattr__(self, name: str):
        return getattr(self._session, name)


def measure(width: int, folder: Path, iterations: int, rounds: int) -> dict:
    from modelport.timing import timed_loop

    runner, feeds = _build(width, folder)
    times, inner = [0] * iterations, [0] * iterations
    probe = _ProbedSession(runner.session, inner)
    runner.session = probe
    timed_loop(runner.run, feeds, times, 0, iterations)  # warm-up
    per_round = []
    for _ in range(rounds):
        probe.calls = 0
        start = time.perf_counter_ns()
        timed_loop(runner.run, feeds, times, 0, iterations)
        wall = time.perf_counter_ns() - start
        timed, runtime = sum(times), sum(inner)
        per_round.append({
            "iteration_us": wall / iterations / 1e3, "reported_latency_us": timed / iterations / 1e3,
            "runtime_call_us": runtime / iterations / 1e3, "harness_share": (wall - timed) / wall,
            "outside_runtime_share": (wall - runtime) / wall,
            "runner_wrapper_median_us": statistics.median(t - r for t, r in zip(times, inner, strict=True)) / 1e3,
        })
    return {key: statistics.median(r[key] for r in per_round) for key in per_round[0]} | {"rounds": per_round}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from modelport.harness.matrix import package_versions
    from modelport.machine import machine_summary

    with tempfile.TemporaryDirectory(prefix="modelport-overhead-") as tmp:
        width = choose_width(Path(tmp))
        figures = measure(width, Path(tmp), args.iterations, args.rounds)
    result = {
        "benchmark": "harness overhead per timed iteration",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_summary(), "versions": package_versions(),
        "model": f"Linear({width},{2 * width})-ReLU-Linear({2 * width},{width}), batch 1, ONNX Runtime fp32, "
                 "1 thread",
        "iterations_per_round": args.iterations, "goal_harness_share": 0.05,
        **{k: v for k, v in figures.items() if k != "rounds"}, "rounds": figures["rounds"],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "harness_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    md = [
        "# Harness overhead per timed iteration", "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, flags {' '.join(m['flags'])}; {m['os']}; Python {m['python']}",
        f"- Versions: {', '.join(f'{k} {v}' for k, v in result['versions'].items())}",
        f"- Model: {result['model']} (chosen as the width closest to {TARGET_MS} ms per run here)",
        f"- {args.rounds} rounds of {args.iterations} timed iterations; medians over rounds", "",
        "| figure | value |", "|---|---|",
        f"| one timed iteration (wall) | {figures['iteration_us']:.1f} µs |",
        f"| the latency the harness records (`runner.run`) | {figures['reported_latency_us']:.1f} µs |",
        f"| the runtime's own `InferenceSession.run` | {figures['runtime_call_us']:.1f} µs |",
        f"| **harness share: outside `runner.run`** (goal < 5%) | **{100 * figures['harness_share']:.2f}%** |",
        f"| outside the runtime's own run call (harness + Runner wrapper) | "
        f"{100 * figures['outside_runtime_share']:.2f}% |",
        f"| the Runner wrapper per call, median | {figures['runner_wrapper_median_us']:.1f} µs |", "",
    ]
    (RESULTS / "harness_overhead.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
