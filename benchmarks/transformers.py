"""Transformer fusions and INT8 on a BERT-base-shaped encoder, or the 6-layer MiniLM shape with `--model minilm_l6`,
or a 6-layer GPT-2 shape with `--model gpt2_l6` (random weights from a transformers config):
FP32 and INT8 latency per runtime, fused against unfused, beside Hugging Face Optimum's own path, and each
row's share of the machine's measured matrix-multiply peak.

    python -m benchmarks.transformers [--model bert_base|minilm_l6|gpt2_l6] [--shapes 1x32,8x32,1x128,8x128]
                                      [--rounds 5] [--budget 20] [--rows "ort int8,ort int8-dynamic"] [--threads 2]
                                      [--baseline "before ort fp32=DIR,..."] [--tag NAME]

Rows: modelport's ONNX Runtime FP32 / static INT8 / dynamic INT8 with and without fusions (`fusions=off` is
what modelport built before), OpenVINO FP32 and INT8, and Optimum's export optimized by `ORTOptimizer` at
O2 and O3 and the O3 model quantized with its avx2 static preset (built in the Optimum venv: make
optimum-venv; benchmarks/optimum_transformers.py), and `--baseline` artifacts built elsewhere (another checkout's
modelport, so a change is timed against what it replaces in the same rounds). One process holds every runner
(`--threads` each, 2 by default); for
each input shape the rows take turns round after round (modelport.timing.interleaved_rounds), so load
drifting on the machine hits them alike; ratios are medians of per-round ratios. The INT8 peak (1024^3
MatMulInteger, 20 in a turn, benchmarks/peak.py) takes its turn in the same rounds, so a row's share of it is a
median of per-round shares under the same load, not a ratio to a peak measured at another moment. `--rows`
builds and times a subset (ORT FP32, the reference of every ratio, always among them). Fidelity is the mean
per-sample cosine to PyTorch FP32 on padded token batches: random weights, so it speaks to speed only.
Writes benchmarks/results/transformers-<machine>-<date>.{md,json} (transformers-minilm_l6-... for that model,
-1thread-... for --threads 1, -TAG-... for --tag: a run of some rows beside the full table, not over it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.data import token_batches  # noqa: E402
from benchmarks.peak import PeakMatMul, count_macs, matmul_peak  # noqa: E402
from benchmarks.peers import DEFAULT_OPTIMUM_VENV, OPTIMUM_PYTHON  # noqa: E402
from benchmarks.run_suite import write_dated_results  # noqa: E402
from modelport.similarity import mean_cosine  # noqa: E402

THREADS = 2  # the default: the machine's cores
MODELS = {"bert_base": "BERT-base shape", "minilm_l6": "6-layer MiniLM shape (hidden 384)",
          "gpt2_l6": "6-layer GPT-2 shape (hidden 384), causal and padding mask"}
DYNAMIC = ["input_ids:0=batch", "input_ids:1=seq", "attention_mask:0=batch", "attention_mask:1=seq"]
QUICK = {"measure": "false", "analysis_samples": "16"}  # the benchmark times every row itself
BUILDS = {  # row -> (backend, precision, options)
    "ort fp32 unfused": ("onnxruntime", "fp32", {"fusions": "off"}),
    "ort fp32": ("onnxruntime", "fp32", {}),
    "ort fp32 gelu=approximate": ("onnxruntime", "fp32", {"gelu": "approximate"}),  # FastGelu, as Optimum O3
    "ort int8 unfused": ("onnxruntime", "int8", {"fusions": "off", **QUICK}),
    "ort int8": ("onnxruntime", "int8", QUICK),
    "ort int8-dynamic": ("onnxruntime", "int8-dynamic", {"measure": "false"}),
    "ov fp32": ("openvino", "fp32", {}),
    "ov int8": ("openvino", "int8", {}),
    # the plugin's own choice where the CPU has AVX512_BF16 or AMX (modelport pins f32): faster, farther from torch
    "ov fp32 bf16": ("openvino", "fp32", {"inference_precision": "bf16"}),
    "ov int8 bf16": ("openvino", "int8", {"inference_precision": "bf16"}),
}
OPTIMUM_ROWS = {"optimum O2": "o2", "optimum O3": "o3", "optimum O3 + avx2 int8": "o3_avx2"}
INT8_ROWS = ("ort int8 unfused", "ort int8", "ort int8-dynamic", "ov int8", "ov int8 bf16", "optimum O3 + avx2 int8")
REFERENCE = "ort fp32"
PEAK = "int8 peak (MatMulInteger 1024^3)"
PEAK_REPEATS = 20  # ~0.2 s a turn, as long as a row's run: one 9 ms MatMul read half the peak (benchmarks/peak.py)


def _stack(samples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([s[k] for s in samples]) for k in samples[0]}


def build_rows(source: Any, work: Path, calib_size: int, rows: list[str]) -> tuple[dict[str, Path], dict[str, float]]:
    """The artifacts of `rows` and the seconds each build took (reused artifacts take about none)."""
    import modelport
    from modelport.calibration import CalibrationSet

    calibration = CalibrationSet.from_arrays(_stack(list(token_batches(calib_size, seed=1))), source.inputs)
    paths, seconds = {}, {}
    for row in rows:
        backend, precision, options = BUILDS[row]
        start = time.perf_counter()
        artifact = modelport.build(source, backend=backend, precision=precision, options=options,
                                   calibration=calibration, out=work / row.replace(" ", "-"))
        seconds[row] = round(time.perf_counter() - start, 1)
        print(f"built {row} in {seconds[row]:.0f} s", flush=True)
        paths[row] = artifact.path
    return paths, seconds


def optimum_rows(source: Any, work: Path, calib_size: int) -> tuple[dict[str, Path], str | None]:
    """Optimum's files, built in its venv from the same weights (save_pretrained) and calibration samples."""
    python = Path(os.environ.get(OPTIMUM_PYTHON, DEFAULT_OPTIMUM_VENV / "bin" / "python"))
    out = work / "optimum"
    files = {row: out / f"{name}.onnx" for row, name in OPTIMUM_ROWS.items()}
    if all(p.is_file() for p in files.values()):
        return files, None
    if not python.is_file():
        return {}, f"no Optimum venv at {python} (make optimum-venv)"
    hf = work / "hf-model"
    next(m for m in source.module.modules() if hasattr(m, "save_pretrained")).save_pretrained(hf)  # the BertModel
    samples = _stack(list(token_batches(calib_size, seed=1)))
    samples["token_type_ids"] = np.zeros_like(samples["input_ids"])  # Optimum's BERT export takes them
    npz = work / "optimum-calib.npz"
    np.savez(npz, **samples)
    # -P: benchmarks/ is not put on sys.path, where this file would shadow the transformers package
    done = subprocess.run([str(python), "-P", str(HERE / "optimum_transformers.py"), str(hf), str(npz), str(out)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        return {}, f"Optimum failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}"
    return files, None


class _OrtFile:
    """An ONNX file in ONNX Runtime, fed what its inputs take (Optimum's BERT adds token_type_ids)."""

    def __init__(self, path: Path, threads: int) -> None:
        from modelport.ort_session import ort_session

        self.session = ort_session(path, threads=threads)
        self.names = [i.name for i in self.session.get_inputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        full = {**feeds, "token_type_ids": np.zeros_like(feeds["input_ids"])}
        return {"output": self.session.run(None, {n: full[n] for n in self.names})[0]}


def measure(runners: dict[str, Any], onnx_path: Path, shapes: list[tuple[int, int]], rounds: int, budget: float,
            peak: PeakMatMul) -> list[dict[str, Any]]:
    from modelport.timing import interleaved_rounds

    rows = []
    for batch, seq in shapes:
        feeds = _stack(list(token_batches(batch, seq=seq, seed=7)))
        runs = {name: runner.run for name, runner in runners.items()}
        ms = interleaved_rounds({**runs, PEAK: peak.run}, feeds, rounds, budget)
        peak_ms = np.asarray(ms.pop(PEAK))
        macs = count_macs(onnx_path, {"batch": batch, "seq": seq})
        base = np.asarray(ms[REFERENCE])
        o3 = np.asarray(ms["optimum O3"]) if "optimum O3" in ms else None
        for name, times in ms.items():
            t = np.asarray(times)
            rows.append({"row": name, "batch": batch, "seq": seq, "p50_ms": round(float(np.median(t)), 3),
                         "best_round_ms": round(float(t.min()), 3), "rounds_ms": [round(x, 3) for x in times],
                         "vs_ort_fp32": round(float(np.median(base / t)), 3),
                         "vs_optimum_o3": round(float(np.median(o3 / t)), 3) if o3 is not None else None,
                         "gmacs": round(macs / 1e9, 3),
                         "peak_gmacs_per_s": round(float(np.median(peak.macs / peak_ms)) / 1e6, 1),
                         # per round: (row's MACs/s) / (the peak's MACs/s) in the same round
                         "share_of_int8_peak": round(float(np.median(macs * peak_ms / (peak.macs * t))), 3)})
        print(json.dumps([r for r in rows if r["batch"] == batch and r["seq"] == seq][:3]), flush=True)
    return rows


def markdown(machine: dict[str, Any], rows: list[dict[str, Any]], fidelity: dict[str, float],
             peaks: dict[str, float], notes: list[str], args: argparse.Namespace) -> str:
    lines = [f"Machine: {machine['cpu']} ({machine['cores']} cores, {', '.join(machine['flags'])}), "
             f"{args.threads} threads, {args.rounds} interleaved rounds per shape. Peaks measured in this run "
             f"(ONNX Runtime MatMul): FP32 {peaks['fp32'] / 1e9:.1f} GMAC/s, INT8 {peaks['int8'] / 1e9:.1f} GMAC/s "
             "alone; in the rounds the INT8 peak took its turn with the rows (its median per shape is in the JSON, "
             "peak_gmacs_per_s).",
             "",
             "| batch | seq | row | p50 ms | vs ORT fp32 (fused) | vs Optimum O3 | share of INT8 peak | "
             "cosine to torch |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        o3 = f"{r['vs_optimum_o3']:.2f}x" if r["vs_optimum_o3"] is not None else "n/a"
        lines.append(f"| {r['batch']} | {r['seq']} | {r['row']} | {r['p50_ms']:.2f} | {r['vs_ort_fp32']:.2f}x | {o3} | "
                     f"{r['share_of_int8_peak'] * 100:.0f}% | {fidelity.get(r['row'], float('nan')):.4f} |")
    lines += ["", "Ratios are medians of per-round ratios (above 1: faster than the reference row). Cosine: mean "
              "per-sample cosine of last_hidden_state to PyTorch FP32 on 8 padded sequences of 128 tokens, random "
              "weights (speed evidence only).", *notes]
    return "\n".join(lines)


def _baselines(text: str) -> dict[str, Path]:
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    if any(len(p) != 2 or not (Path(p[1]) / "manifest.json").is_file() for p in pairs):
        raise argparse.ArgumentTypeError("expected ROW=ARTIFACT_DIR,... with a manifest.json in each folder")
    return {row.strip(): Path(path) for row, path in pairs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="bert_base")
    parser.add_argument("--shapes", type=lambda s: [tuple(map(int, x.split("x"))) for x in s.split(",")],
                        default=[(1, 32), (8, 32), (1, 128), (8, 128)], help="BATCHxSEQ,...")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--budget", type=float, default=20.0, help="seconds of timing per shape, all rows")
    parser.add_argument("--calib-size", type=int, default=32)
    parser.add_argument("--work", type=Path, help="build folder (default: bench-transformers[-MODEL])")
    parser.add_argument("--rows", type=lambda s: [r.strip() for r in s.split(",")],
                        default=[*BUILDS, *OPTIMUM_ROWS], help="rows to build and time, comma-separated")
    parser.add_argument("--threads", type=int, default=THREADS, help="intra-op threads of every runner")
    parser.add_argument("--baseline", type=_baselines, default={},
                        help="ROW=ARTIFACT_DIR,...: artifacts built elsewhere, timed as extra rows")
    parser.add_argument("--tag", help="appended to the results' file name")
    args = parser.parse_args()
    unknown = set(args.rows) - set(BUILDS) - set(OPTIMUM_ROWS)
    if unknown:
        parser.error(f"unknown rows {sorted(unknown)}; rows are {[*BUILDS, *OPTIMUM_ROWS]}")
    import torch

    import modelport
    from modelport.bundle import ModelBundle
    from modelport.machine import machine_summary

    args.work = args.work or Path("bench-transformers" + ("" if args.model == "bert_base" else f"-{args.model}"))
    torch.set_num_threads(args.threads)
    source = modelport.load_model(f"benchmarks.models:{args.model}", dynamic=DYNAMIC)
    onnx_path = ModelBundle(source).onnx_path
    paths, build_seconds = build_rows(source, args.work, args.calib_size,
                                      [REFERENCE, *(r for r in BUILDS if r in args.rows and r != REFERENCE)])
    optimum, skipped = (optimum_rows(source, args.work, args.calib_size) if set(OPTIMUM_ROWS) & set(args.rows)
                        else ({}, None))
    optimum = {row: path for row, path in optimum.items() if row in args.rows}
    notes = [f"Optimum rows skipped: {skipped}"] if skipped else []
    paths.update(args.baseline)
    runners = {row: modelport.load(path, threads=args.threads) for row, path in paths.items()}
    runners.update({row: _OrtFile(path, args.threads) for row, path in optimum.items()})
    evaluation = _stack(list(token_batches(8, seed=3)))
    reference = source.run(evaluation)["output"]
    fidelity = {row: round(mean_cosine(reference, r.run(evaluation)["output"]), 5) for row, r in runners.items()}
    peaks = {"fp32": matmul_peak("fp32", args.threads), "int8": matmul_peak("int8", args.threads)}
    peak = PeakMatMul("int8", args.threads, repeats=PEAK_REPEATS)
    load = [os.getloadavg()[0]]
    rows = measure(runners, onnx_path, args.shapes, args.rounds, args.budget, peak)
    load.append(os.getloadavg()[0])
    notes.append(f"1-minute load average {load[0]:.1f} when the timing started, {load[1]:.1f} when it ended "
                 f"({os.cpu_count()} cores: above {args.threads} another process competed with the rows, alike "
                 "within a round).")
    details = {row: json.loads((path / "manifest.json").read_text()).get("details", {}) for row, path in paths.items()}
    machine = machine_summary()
    table = markdown(machine, rows, fidelity, peaks, notes, args)
    name = "transformers" + ("" if args.model == "bert_base" else f"-{args.model}") + \
        ("" if args.threads == THREADS else f"-{args.threads}thread") + (f"-{args.tag}" if args.tag else "")
    path = write_dated_results(name, f"Transformer fusions and INT8: {MODELS[args.model]}, random weights",
                               table, machine, {"settings": {k: str(v) for k, v in vars(args).items()},
                                                "peaks": peaks, "fidelity": fidelity, "rows": rows,
                                                "build_seconds": build_seconds, "load_average": load,
                                                "fusions": {r: d.get("fusions") for r, d in details.items()},
                                                "openvino_runtime": {r: d.get("runtime") for r, d in details.items()
                                                                     if r.startswith("ov")}})
    print(table)
    print(f"Wrote {path} and .json")


if __name__ == "__main__":
    main()
