"""INT8 against FP32 on every CPU runtime, on the 6-layer sentence-encoder shape at sequence 32, batch 1.

The shape is all-MiniLM-L6-v2's (hidden 384, 12 heads, FFN 1536; `benchmarks.models:minilm_l6`) with random
weights, so the figures speak to speed; fidelity on trained weights is benchmarks/trained.py's. Rows: each
runtime's modelport FP32, INT8 and int8-dynamic, and OpenVINO's INT8 with `fc_as_conv=off` (its MatMuls as
FullyConnected, the layout before the CPU kernels were read back). One process holds every runner at 2 threads;
the rows take turns round after round (modelport.timing.interleaved_rounds), and each ratio is the median of
per-round ratios to that runtime's FP32.

    python -m benchmarks.encoder_int8 [--rounds 9] [--budget 30]

Writes benchmarks/results/encoder-int8-<machine>-<date>.{md,json}.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.data import token_batches
from benchmarks.run_suite import write_dated_results

THREADS = 2
SEQ = 32
CALIBRATION_SAMPLES = 128
ROWS = {  # row -> (backend, precision, options); the first row of each runtime is the FP32 its ratios use
    "onnxruntime fp32": ("onnxruntime", "fp32", {}),
    "onnxruntime int8": ("onnxruntime", "int8", {"measure": "false"}),
    "onnxruntime int8-dynamic": ("onnxruntime", "int8-dynamic", {"measure": "false"}),
    "openvino fp32": ("openvino", "fp32", {}),
    "openvino int8": ("openvino", "int8", {"measure": "false"}),
    "openvino int8, fc_as_conv=off": ("openvino", "int8", {"measure": "false", "fc_as_conv": "off"}),
    "openvino int8-dynamic": ("openvino", "int8-dynamic", {}),
    "tflite fp32": ("tflite", "fp32", {}),
    "tflite int8": ("tflite", "int8", {"measure": "false"}),
    "tflite int8-dynamic": ("tflite", "int8-dynamic", {"measure": "false"}),
}


def _stack(samples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([s[k] for s in samples]) for k in samples[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--budget", type=float, default=30.0, help="seconds of timing, all rows")
    args = parser.parse_args()
    import modelport
    from modelport.backends import get_backend
    from modelport.calibration import CalibrationSet
    from modelport.machine import machine_summary
    from modelport.similarity import mean_cosine
    from modelport.timing import interleaved_rounds

    load = os.getloadavg()[0]
    source = modelport.load_model("benchmarks.models:minilm_l6")
    calibration = CalibrationSet.from_arrays(_stack(list(token_batches(CALIBRATION_SAMPLES, seq=SEQ, seed=1))),
                                             source.inputs)
    feeds = next(iter(token_batches(1, seq=SEQ, seed=7)))
    evaluation = _stack(list(token_batches(16, seq=SEQ, seed=3)))
    reference = np.concatenate([source.run({k: v[i:i + 1] for k, v in evaluation.items()})["output"]
                                for i in range(16)])
    runners, built, skipped = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="encoder-int8-") as tmp:
        for row, (backend, precision, options) in ROWS.items():
            ok, why = get_backend(backend).available()
            if not ok:
                skipped[row] = why
                continue
            start = time.perf_counter()
            artifact = modelport.build(source, backend=backend, precision=precision, options=options,
                                       calibration=calibration, out=Path(tmp) / row.replace(" ", "_").replace(",", ""))
            built[row] = {"seconds": round(time.perf_counter() - start, 1),
                          "fc_as_conv": artifact.details.get("fc_as_conv", {}).get("chosen")}
            runners[row] = modelport.load(artifact.path, threads=THREADS)
            print(f"built {row} in {built[row]['seconds']} s", flush=True)
        fidelity = {row: round(mean_cosine(reference, np.concatenate(
            [r.run({k: v[i:i + 1] for k, v in evaluation.items()})["output"] for i in range(16)])), 5)
            for row, r in runners.items()}
        ms = interleaved_rounds({row: r.run for row, r in runners.items()}, feeds, args.rounds, args.budget)
    rows = []
    for row, times in ms.items():
        fp32 = np.asarray(ms[f"{ROWS[row][0]} fp32"])
        rows.append({"row": row, "p50_ms": round(float(np.median(times)), 3), "rounds_ms": [round(t, 3) for t in times],
                     "vs_fp32": round(float(np.median(fp32 / np.asarray(times))), 3), "cosine": fidelity[row],
                     **built[row]})
    machine = machine_summary()
    lines = [f"Machine: {machine['cpu']} ({machine['cores']} cores, {', '.join(machine['flags'])}), {THREADS} threads, "
             f"{args.rounds} interleaved rounds; 1-minute load average {load:.1f} when it started (a shared machine: "
             "the ratios, measured side by side, are what holds). Sequence 32, batch 1, random weights.", "",
             "| row | p50 ms | vs its runtime's FP32 | cosine to PyTorch (16 sequences) |", "|---|---|---|---|"]
    lines += [f"| {r['row']} | {r['p50_ms']:.2f} | {r['vs_fp32']:.2f}x | {r['cosine']:.5f} |" for r in rows]
    lines += [f"| {row} | skipped: {why} | | |" for row, why in skipped.items()]
    lines += ["", "Ratios are medians of per-round ratios (above 1: faster than that runtime's FP32). "
              "`python -m benchmarks.encoder_int8`."]
    path = write_dated_results("encoder-int8", "INT8 against FP32 per runtime: the 6-layer MiniLM shape, 1x32",
                               "\n".join(lines), machine, {"rounds": args.rounds, "threads": THREADS,
                                                           "load_average": load, "rows": rows, "skipped": skipped})
    print("\n".join(lines))
    print(f"Wrote {path} and .json")


if __name__ == "__main__":
    main()
