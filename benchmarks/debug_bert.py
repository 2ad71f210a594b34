"""`modelport debug` on a BERT-base-shaped encoder: seconds and peak memory as the samples streamed grow.

The encoder is the suite's (`benchmarks.models:bert_base`: transformers' BertConfig, 12 layers, hidden 768,
sequence 128, random weights: for cost only, its fidelity figures mean nothing). Its ONNX Runtime int8-dynamic
artifact is debugged against the FP32 export, every intermediate tensor of both compared, with `modelport
debug` in a process of its own whose resident memory (with its children) is polled; the samples are streamed
one at a time, so peak memory should not grow with their number.

    python -m benchmarks.debug_bert [--samples 4,16]

writes benchmarks/results/debug-bert-<machine>-<date>.{md,json} (benchmarks/run_suite.py's write_dated_results).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.run_suite import write_dated_results
from modelport.builder import build_artifact
from modelport.bundle import ModelBundle
from modelport.machine import machine_summary
from modelport.model import load_model

MODEL = "benchmarks.models:bert_base"
DATA = "benchmarks.data:tokens"
DYNAMIC = ("input_ids:0=batch", "attention_mask:0=batch")
POLL_S = 0.05


def _tree_rss(process: psutil.Process) -> int:
    """Resident bytes of a process and its children now (0 for those that are gone)."""
    total = 0
    for p in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # a child that ended between the listing and the read
            total += p.memory_info().rss
    return total


def debug_run(artifact: Path, samples: int, out: Path, threads: int) -> dict[str, Any]:
    """`modelport debug ARTIFACT` over `samples` samples in its own process: seconds, peak RSS, what it found."""
    cmd = [sys.executable, "-m", "modelport.cli", "debug", str(artifact), "--model", MODEL, "--eval", DATA,
           "--samples", str(samples), "--threads", str(threads), "-o", str(out), "--json"]
    out.mkdir(parents=True, exist_ok=True)
    stdout, stderr = out / "stdout.json", out / "stderr.log"  # files, not pipes: the JSON outgrows a pipe's buffer
    start = time.perf_counter()
    with stdout.open("w") as so, stderr.open("w") as se:
        child = subprocess.Popen(cmd, stdout=so, stderr=se, env=os.environ.copy())
        watched, peak = psutil.Process(child.pid), 0
        while child.poll() is None:
            peak = max(peak, _tree_rss(watched))
            time.sleep(POLL_S)
    seconds = time.perf_counter() - start
    if child.returncode != 0:
        raise RuntimeError(f"modelport debug failed ({child.returncode}): {stderr.read_text()[-2000:]}")
    record = json.loads(stdout.read_text())
    top = record["culprits"][:3]
    return {"samples": record["samples"], "seconds": round(seconds, 1), "debug_seconds": record["seconds"],
            "peak_rss_mib": round(peak / 2**20), "tensors": len(record["layers"]), "compared": record["compared"],
            "top3": [f"{c['module'] or '-'} ({c['onnx_node']}, {c['jump_db']:.1f} dB)" for c in top]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", default="4,16", help="sample counts to debug, comma-separated")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    counts = [int(n) for n in args.samples.split(",")]
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="debug-bert-") as tmp:
        work = Path(tmp)
        source = load_model(MODEL, (), list(DYNAMIC))
        start = time.perf_counter()
        artifact = build_artifact(ModelBundle(source), "onnxruntime", "int8-dynamic", work / "bert-int8")[0]
        build_s = time.perf_counter() - start
        runs = [debug_run(artifact.path, n, work / f"debug-{n}", args.threads) for n in counts]
    machine = machine_summary()
    rows = "\n".join(f"| {r['samples']} | {r['seconds']} | {r['debug_seconds']} | {r['peak_rss_mib']} | "
                     f"{r['compared']} of {r['tensors']} | {'; '.join(r['top3'])} |" for r in runs)
    table = (f"Machine: {machine['cpu']}, {machine['cores']} cores; 1-minute load average {load:.1f} when it "
             f"started (the machine is shared: seconds are noisy, memory is not). Model: `{MODEL}` (BERT-base "
             "shape, random weights), its ONNX Runtime int8-dynamic artifact (built in "
             f"{build_s:.0f} s, export included) debugged against its FP32 export on `{DATA}` (sequence 128), "
             f"{args.threads} threads, `modelport debug` in its own process.\n\n"
             "| samples | wall s (process) | debug s (streaming) | peak RSS MiB (process tree) | tensors compared | "
             "top-3 culprits (module, ONNX node, jump) |\n|---|---|---|---|---|---|\n" + rows +
             "\n\nThe wall time includes starting Python, loading torch and the model (its content hash is checked "
             "against the artifact's) and both ONNX Runtime sessions; `debug s` is the streaming loop alone. "
             "Random weights: the culprits say where this artifact's error enters, not anything about BERT.")
    path = write_dated_results("debug-bert", f"modelport debug on BERT-base ({machine['cpu']})", table, machine,
                               {"model": MODEL, "data": DATA, "load_average": load, "build_seconds": build_s,
                                "threads": args.threads, "runs": runs})
    print(path.read_text())


if __name__ == "__main__":
    main()
