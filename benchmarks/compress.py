"""What compression buys on the digits CNN (and one 4x as wide): accuracy, params, MACs, ONNX size, latency.

For each model: the original, 50% of channels pruned (no fine-tuning), pruned then distilled from the
original, and low-rank (90% of the singular-value energy) then distilled, each made by
`modelport.compress`. Every variant's `.pt2` is built for ONNX Runtime and OpenVINO FP32 with
modelport's builder, and all of them are timed in one `modelport.harness.bench` run of the original
(the variants as `--runner` rows, timed in interleaved rounds so load drifting on the machine hits every
row alike); accuracy on the digits test split comes from the same run. The digits CNN is so small that a
run is mostly runtime overhead, hence the wide CNN (channels x4, trained here on the same data).

    .venv/bin/python benchmarks/compress.py [--rounds 5] [--batches 1,32] [--threads 1] [--epochs 8]

Writes benchmarks/results/compress-<machine>-<date>.md and .json, with the machine. MACs are
`modelport.compress.size`'s count (what `modelport compress --json` reports); the JSON also holds the
suite's ONNX-graph count (benchmarks/peak.py) of each exported file as a cross-check. Goal, measured and
reported, not asserted: pruned 50% + distillation within 1 point of the original's accuracy and at least
1.5x faster on ONNX Runtime and OpenVINO FP32.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.peak import count_macs as onnx_macs  # noqa: E402
from benchmarks.run_suite import write_dated_results  # noqa: E402
from modelport.examples.digits import cached_digits_model  # noqa: E402

TRAIN = "modelport.examples:digits_calibration"
EVAL = "modelport.examples:digits_evaluation"
MODELS = {"digits_cnn": "modelport.examples:digits_cnn",
          "wide_digits_cnn": f"{Path(__file__).resolve()}:wide_digits_cnn"}
BACKENDS = ("onnxruntime", "openvino")
VARIANTS = ("pruned", "pruned_distilled", "low_rank_distilled")
WORK_ENV = "MODELPORT_COMPRESS_BENCH_WORK"
_SHORT = {"onnxruntime": "ORT", "openvino": "OV"}


class WideDigitsCNN(nn.Module):
    """The digits CNN with four times the channels and hidden units."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16 * width, 3, padding=1), nn.BatchNorm2d(16 * width), nn.ReLU(),
            nn.Conv2d(16 * width, 32 * width, 3, padding=1), nn.BatchNorm2d(32 * width), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * width * 16, 64 * width), nn.ReLU(),
                                        nn.Linear(64 * width, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _train_wide() -> WideDigitsCNN:
    """Trained with compress's own fine-tuning loop and task loss on the digits train split."""
    from modelport.calibration import open_evaluation
    from modelport.compress.data import read_examples
    from modelport.compress.train import Schedule, cross_entropy, fine_tune, task_step
    from modelport.specs import TensorSpec

    torch.manual_seed(0)
    model = WideDigitsCNN()
    data = read_examples(open_evaluation(TRAIN, [TensorSpec("x", ("batch", 1, 8, 8))]))
    fine_tune(model, task_step(cross_entropy, ["output"]), data, Schedule(epochs=15, lr=3e-3), step=0)
    return model.eval()


def wide_digits_cnn() -> tuple[nn.Module, tuple[torch.Tensor]]:
    """The wide CNN, trained once and cached (MODELPORT_CACHE), with one test image as its example input."""
    return cached_digits_model("wide_digits_cnn", WideDigitsCNN, _train_wide)


def _open_runner(variant: str, backend: str, model: str, threads: int | None = None):
    import modelport

    return modelport.load(Path(os.environ[WORK_ENV]) / model / f"{variant}-{backend}", threads=threads)


# The bench's --runner rows: one factory per model x variant x backend, found by name (file.py:NAME).
for _model in MODELS:
    for _variant in VARIANTS:
        for _backend in BACKENDS:
            globals()[f"{_model}__{_variant}__{_backend}"] = functools.partial(_open_runner, _variant, _backend, _model)


def _settings(variant: str, epochs: int):
    from modelport.compress import Settings

    return {"pruned": Settings(prune=0.5, epochs=0),
            "pruned_distilled": Settings(prune=0.5, distill=True, epochs=epochs, lr=2e-3),
            "low_rank_distilled": Settings(low_rank=0.9, distill=True, epochs=epochs, lr=2e-3)}[variant]


def run_model(name: str, ref: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    from modelport.builder import build_artifact
    from modelport.bundle import ModelBundle
    from modelport.compress import compress, size
    from modelport.harness import bench
    from modelport.model import load_model

    folder = work / name
    original = load_model(ref, dynamic=["x:0=batch"])
    onnx = ModelBundle(original).onnx_path
    variants: dict[str, dict[str, Any]] = {"original": {"settings": None, **size(original.module, {
        "x": original.example_inputs["x"][:1]}), "onnx_bytes": onnx.stat().st_size,
        "onnx_macs": onnx_macs(onnx, {"batch": 1})}}
    for variant in VARIANTS:
        print(f"{name}: compressing ({variant})", flush=True)
        result = compress(original, train=TRAIN, evaluation=EVAL, out=folder / f"{variant}.pt2",
                          settings=_settings(variant, args.epochs), threads=args.threads)
        source = load_model(str(result.path))
        bundle = ModelBundle(source)
        for backend in BACKENDS:
            build_artifact(bundle, backend, "fp32", folder / f"{variant}-{backend}")
        variants[variant] = {"settings": result.report["settings"], "params": result.report["after"]["params"],
                             "macs": result.report["after"]["macs"], "onnx_bytes": bundle.onnx_path.stat().st_size,
                             "onnx_macs": onnx_macs(bundle.onnx_path, {"batch": 1}),
                             "compress_metric": result.report["after"]["metric"],
                             "steps": result.report["steps"]}
    print(f"{name}: timing every variant in {args.rounds} interleaved rounds", flush=True)
    runners = {f"{v}-{b}": f"{Path(__file__).resolve()}:{name}__{v}__{b}" for v in VARIANTS for b in BACKENDS}
    report = bench(ref, out=folder / "bench", backends=",".join(BACKENDS), precisions="fp32",
                   batches=args.batches, threads=args.threads, rounds=args.rounds, evaluation=EVAL,
                   dynamic=["x:0=batch"], runners=runners)
    rows = [r for r in report["rows"] if r["status"] == "ok" and r["backend"] != "pytorch"]
    for r in rows:
        variant, backend = (r["backend"].rsplit("-", 1) if r["backend"] not in BACKENDS
                            else ("original", r["backend"]))
        entry = variants[variant]
        entry.setdefault("latency", {}).setdefault(backend, {})[str(r["batch"])] = r["p50_ms"]
        entry["accuracy"] = r["metric"]
    return variants


def _overhead_bound(base: dict[str, Any], pruned: dict[str, Any], speedups: dict[str, float],
                    batches: list[str]) -> str:
    """Why a miss only at batch 1 is no fault of the pruning: said where the larger batches meet the goal."""
    slow = [k for k, s in speedups.items() if s < 1.5]
    first = batches[0]
    if (not slow or len(batches) < 2 or base["accuracy"] - pruned["accuracy"] > 1
            or any(not k.endswith(f" b{first}") for k in slow)):
        return ""
    p50 = ", ".join(f"{b} {base['latency'][b][first]:.3f} ms" for b in BACKENDS)
    return (f". The miss is at batch {first} only and is not the pruning's: the model keeps "
            f"{pruned['macs'] / base['macs']:.0%} of its MACs and meets the goal at the larger batches, but one "
            f"batch-{first} run of the original takes {p50}, mostly the runtime's own per-call cost, which fewer "
            "MACs cannot remove")


def markdown(machine: dict[str, Any], results: dict[str, dict[str, Any]], args: argparse.Namespace,
             stamp: str) -> str:
    out = [f"Measured {stamp} on {machine['cpu']} ({machine['cores']} cores, {', '.join(machine['flags'])}), "
           f"{args.threads} thread(s), p50 latency over {args.rounds} interleaved rounds (ONNX Runtime and OpenVINO "
           f"FP32 artifacts built by modelport). Accuracy: top-1 on the digits test split (497 images), trained "
           f"weights. Fine-tuning: {args.epochs} epochs of distillation from the original.", ""]
    batches = [str(b) for b in args.batches]
    head = ["model", "variant", "accuracy", "params", "MACs", "ONNX size"]
    head += [f"{_SHORT[b]} b{n} p50 (speed-up)" for b in BACKENDS for n in batches]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    goals = []
    for model, variants in results.items():
        base = variants["original"]
        for variant, v in variants.items():
            cells = [model, variant, f"{v['accuracy']:.2f}", f"{v['params']:,}", f"{v['macs']:,}",
                     f"{v['onnx_bytes'] / 1024:.1f} KB"]
            for backend in BACKENDS:
                for n in batches:
                    ms, ref = v["latency"][backend].get(n), base["latency"][backend].get(n)
                    cells.append("-" if ms is None else f"{ms:.3f} ms ({ref / ms:.2f}x)")
            out.append("| " + " | ".join(cells) + " |")
        d = variants["pruned_distilled"]
        drop = base["accuracy"] - d["accuracy"]
        speedups = {f"{b} b{n}": base["latency"][b][n] / d["latency"][b][n] for b in BACKENDS for n in batches}
        met = drop <= 1 and all(s >= 1.5 for s in speedups.values())
        goals.append(f"- {model}: pruned 50% + distilled: accuracy {-drop:+.2f} points against the original; speed-up "
                     + ", ".join(f"{k} {s:.2f}x" for k, s in speedups.items())
                     + (": goal met." if met else ": goal not met (" + ", ".join(
                         k for k, s in speedups.items() if s < 1.5) + " under 1.5x)" + _overhead_bound(
                         base, d, speedups, batches) + "."))
    notes = ["", "MACs per sample are `modelport.compress.size`'s count; the suite's ONNX-graph count "
             "(benchmarks/peak.py) of each exported file is in the JSON as `onnx_macs`.", "",
             "At batch 1 the digits CNN is overhead-bound (a run is tens of microseconds, most of it the runtime's "
             "own cost), so removing three quarters of its MACs barely moves its latency; the wide CNN (4x the "
             "channels, trained here on the same data) and batch 32 show what the MACs cost."]
    return "\n".join([*out, *notes, "", "Goal (50% pruned + distillation within 1 point, at least 1.5x faster):",
                      *goals])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=lambda s: [int(b) for b in s.split(",")], default=[1, 32])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--work", type=Path, default=Path("compress-bench-out"))
    args = parser.parse_args()
    from modelport.machine import machine_summary

    os.environ[WORK_ENV] = str(args.work.resolve())
    torch.set_num_threads(args.threads)
    results = {name: run_model(name, ref, args.work, args) for name, ref in MODELS.items()}
    machine = machine_summary()
    stamp = dt.date.today().isoformat()
    table = markdown(machine, results, args, stamp)
    path = write_dated_results("compress", "modelport compress benchmark", table, machine,
                               {"settings": vars(args) | {"work": str(args.work)}, "results": results})
    print(table)
    print(f"Wrote {path} and .json")


if __name__ == "__main__":
    main()
