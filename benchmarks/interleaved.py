"""ONNX Runtime INT8 against FP32 and the by-hand quantizers, timed in interleaved rounds.

The suite measures its rows one after another, minutes apart, and on a shared machine the load drifts in
between: a ratio of two rows can move by 30%. Here every session runs in the same process, round after
round in turn, and each speed-up is the median of per-round ratios, so drift cancels out. It reads the
artifacts and peer files a suite run left (`make bench` runs it right after the suite):

    python -m benchmarks.interleaved [--suite-dir bench-suite] [--models resnet50,bert_base]
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.run_suite import MODELS, RESULTS, THREADS, machine_slug

ROWS = {"ORT fp32": "artifacts/onnxruntime-fp32/model.onnx",
        "modelport ORT int8": "artifacts/onnxruntime-int8/model.onnx",
        "modelport ORT int8-dynamic": "artifacts/onnxruntime-int8-dynamic/model.onnx",
        "quantize_static defaults": "peers/ort_static.onnx",
        "Optimum avx2 static": "peers/optimum_avx2.onnx"}
ROUNDS = 7


def _session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _feeds(calib: str, batch: int) -> dict[str, np.ndarray]:
    module, _, name = calib.partition(":")
    samples = [s for _, s in zip(range(batch), getattr(importlib.import_module(module), name)(), strict=False)]
    return {k: np.concatenate([s[k] for s in samples]) for k in samples[0]}


def _files(suite_dir: Path) -> dict[str, Path]:
    """The row files of one model's suite directory (peer files sit under peers/<export>/)."""
    found = {}
    for label, rel in ROWS.items():
        hits = sorted(suite_dir.glob(rel)) or sorted(suite_dir.glob(rel.replace("peers/", "peers/*/")))
        if hits:
            found[label] = hits[-1]
    return found


def measure(files: dict[str, Path], feeds: dict[str, np.ndarray], budget_s: float = 0.6) -> dict[str, Any]:
    sessions = {label: _session(path) for label, path in files.items()}
    for s in sessions.values():
        s.run(None, feeds)
    per_round: dict[str, list[float]] = {label: [] for label in sessions}
    for _ in range(ROUNDS):
        for label, s in sessions.items():
            times, start = [], time.perf_counter()
            while len(times) < 3 or time.perf_counter() - start < budget_s:
                t = time.perf_counter()
                s.run(None, feeds)
                times.append(time.perf_counter() - t)
            per_round[label].append(statistics.median(times) * 1e3)
    base = per_round.get("ORT fp32")
    return {label: {"median_ms": round(statistics.median(ms), 2),
                    "speedup_vs_ort_fp32": round(statistics.median(b / m for b, m in zip(base, ms, strict=True)), 3)
                    if base else None} for label, ms in per_round.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite-dir", type=Path, default=Path("bench-suite"))
    parser.add_argument("--models", default="resnet50,bert_base")
    parser.add_argument("--batches", default="1,8")
    args = parser.parse_args()
    from modelport.machine import machine_summary

    suites = {m.name: m for m in MODELS}
    results = []
    for name in args.models.split(","):
        files = _files(args.suite_dir / name)
        if "ORT fp32" not in files:
            print(f"{name}: no suite artifacts under {args.suite_dir / name}; run the suite first")
            continue
        for batch in (int(b) for b in args.batches.split(",")):
            rows = measure(files, _feeds(suites[name].calib, batch))
            results.append({"model": name, "batch": batch, "rows": rows})
            print(name, batch, json.dumps(rows))
    machine = machine_summary()
    stamp = dt.date.today().isoformat()
    lines = [f"# ONNX Runtime INT8, interleaved ({ROUNDS} rounds, {THREADS} threads)", "",
             f"Measured {stamp} on {machine['cpu']} ({machine['cores']} cores, {', '.join(machine['flags'])}). "
             "Each figure is the median over rounds of a session's median run time; each speed-up is the median "
             "of per-round ratios to ORT fp32 measured in the same round.", "",
             "| model | batch | row | p50 | speed-up vs ORT fp32 |", "|---|---|---|---|---|"]
    for r in results:
        for label, row in r["rows"].items():
            lines.append(f"| {r['model']} | {r['batch']} | {label} | {row['median_ms']:.2f} ms | "
                         f"{row['speedup_vs_ort_fp32']:.2f}x |")
    name = f"{machine_slug(machine['cpu'])}-{stamp}-ort-interleaved"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    (RESULTS / f"{name}.json").write_text(json.dumps({"machine": machine, "threads": THREADS, "rounds": ROUNDS,
                                                      "results": results}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
