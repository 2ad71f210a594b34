"""INT8 artifacts against FP32 and the by-hand quantizers, per runtime, timed in interleaved rounds.

The suite measures its rows one after another, minutes apart, and on a shared machine the load drifts in
between: a ratio of two rows can move by 30%. Here every session runs in the same process, round after
round in turn, and each speed-up is the median of per-round ratios to the same runtime's FP32 row, so
drift cancels out. Artifacts run through `modelport.load` and peers through their suite runners, as in the
suite. It reads the artifacts and peer files a suite run left (`make bench` runs it right after the suite):

    python -m benchmarks.interleaved [--suite-dir bench-suite] [--models resnet50,bert_base]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.run_suite import MODELS, RESULTS, THREADS, machine_slug

# label -> (the FP32 row it is compared with, a modelport artifact directory or a peer runner in peers.py)
ROWS = {"ORT fp32": ("ORT fp32", "artifacts/onnxruntime-fp32"),
        "modelport ORT int8": ("ORT fp32", "artifacts/onnxruntime-int8"),
        "modelport ORT int8-dynamic": ("ORT fp32", "artifacts/onnxruntime-int8-dynamic"),
        "quantize_static defaults": ("ORT fp32", "ort_static_defaults"),
        "Optimum avx2 static": ("ORT fp32", "optimum_avx2"),
        "OpenVINO fp32": ("OpenVINO fp32", "artifacts/openvino-fp32"),
        "modelport OpenVINO int8": ("OpenVINO fp32", "artifacts/openvino-int8"),
        "nncf.quantize defaults": ("OpenVINO fp32", "nncf_defaults")}
PEER_FILES = {"ort_static_defaults": "ort_static.onnx", "optimum_avx2": "optimum_avx2.onnx",
              "nncf_defaults": "nncf_defaults.xml"}
ROUNDS = 7
DEFAULT_MODELS = "resnet50,bert_base,vit_b16"


def _feeds(suite_dir: Path, calib: str, batch: int) -> dict[str, np.ndarray]:
    """One batch of the suite's own calibration source, read to the exported model's input specs."""
    from modelport.artifact import Artifact
    from modelport.calibration import open_calibration

    specs = Artifact.open(suite_dir / ROWS["ORT fp32"][1]).inputs
    return next(open_calibration(calib, specs).batches(batch))


def _runners(suite_dir: Path) -> dict[str, Any]:
    """The rows one model's suite directory holds, loaded (peer files sit in peers/ or peers/<export>/)."""
    import modelport
    from benchmarks import peers

    config = {}
    for peer, file in PEER_FILES.items():
        hits = sorted(suite_dir.glob(f"peers/{file}")) + sorted(suite_dir.glob(f"peers/*/{file}"))
        if hits:
            config[peer] = str(hits[-1])
    os.environ[peers.PEERS] = json.dumps(config)
    found = {}
    for label, (_, where) in ROWS.items():
        if where.startswith("artifacts/"):
            if (suite_dir / where / "manifest.json").is_file():
                found[label] = modelport.load(suite_dir / where, threads=THREADS)
        elif where in config:
            found[label] = getattr(peers, where)(THREADS)
    return found


def measure(runners: dict[str, Any], feeds: dict[str, np.ndarray], budget_s: float = 0.6) -> dict[str, Any]:
    """`budget_s` of timed runs per runner and round; each speed-up is a median of per-round ratios."""
    from modelport.harness.latency import interleaved_rounds

    per_round = interleaved_rounds({label: runner.run for label, runner in runners.items()}, feeds, ROUNDS,
                                   budget_s * ROUNDS * len(runners))
    out = {}
    for label, ms in per_round.items():
        base = per_round.get(ROWS[label][0])
        out[label] = {"median_ms": round(statistics.median(ms), 2), "vs": ROWS[label][0],
                      "speedup": round(statistics.median(b / m for b, m in zip(base, ms, strict=True)), 3)
                      if base else None}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite-dir", type=Path, default=Path("bench-suite"))
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument("--batches", default="1,8")
    args = parser.parse_args()
    from modelport.machine import machine_summary

    suites = {m.name: m for m in MODELS}
    results = []
    for name in args.models.split(","):
        runners = _runners(args.suite_dir / name)
        if not runners:
            print(f"{name}: no suite artifacts under {args.suite_dir / name}; run the suite first")
            continue
        for batch in (int(b) for b in args.batches.split(",")):
            rows = measure(runners, _feeds(args.suite_dir / name, suites[name].calib, batch))
            results.append({"model": name, "batch": batch, "rows": rows})
            print(name, batch, json.dumps(rows))
    machine = machine_summary()
    stamp = dt.date.today().isoformat()
    lines = [f"# INT8 against FP32 per runtime, interleaved ({ROUNDS} rounds, {THREADS} threads)", "",
             f"Measured {stamp} on {machine['cpu']} ({machine['cores']} cores, {', '.join(machine['flags'])}). "
             "Each figure is the median over rounds of a session's median run time; each speed-up is the median "
             "of per-round ratios to the same runtime's FP32 row, measured in the same round.", "",
             "| model | batch | row | p50 | speed-up | against |", "|---|---|---|---|---|---|"]
    for r in results:
        for label, row in r["rows"].items():
            speedup = f"{row['speedup']:.2f}x" if row["speedup"] else "-"
            lines.append(f"| {r['model']} | {r['batch']} | {label} | {row['median_ms']:.2f} ms | {speedup} | "
                         f"{row['vs']} |")
    subset = "" if args.models == DEFAULT_MODELS else "-" + args.models.replace(",", "-")
    name = f"{machine_slug(machine['cpu'])}-{stamp}-interleaved{subset}"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    (RESULTS / f"{name}.json").write_text(json.dumps({"machine": machine, "threads": THREADS, "rounds": ROUNDS,
                                                      "results": results}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
