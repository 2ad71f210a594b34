"""How long `modelport debug` takes, how much memory it holds, and how useful its ranking is.

For the trained digits CNN (real images, real labels) and its INT8 artifact on each CPU runtime: debug
seconds and peak memory over the evaluation samples, then the share of the INT8 artifact's output error
(noise power against PyTorch FP32 on the 497 held-out images) that keeping the top-1 and top-3 culprits in
float removes, against 3 layers drawn at random (the mean over a few draws). Layers are kept in float with
each backend's `exclude` option (ONNX node names; a culprit ReLU brings the Conv/Gemm it is folded into, for
the ranked and the random picks alike); TFLite has no per-op exclude, so only its debug is timed.

    python -m benchmarks.debug [--samples 128] [--draws 3]

writes benchmarks/results/debug-<machine>-<date>.md.
"""

from __future__ import annotations

import argparse
import datetime
import random
import re
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

from modelport.builder import build_artifact
from modelport.bundle import ModelBundle
from modelport.calibration import open_calibration, open_evaluation
from modelport.debug import rank_layers
from modelport.debug.run import debug_artifact
from modelport.exporters.tensor_map import Layer, reference_layers
from modelport.harness.fidelity import compare_output
from modelport.loading import load_artifact
from modelport.machine import cpu_model, machine_summary
from modelport.model import load_model

RESULTS = Path(__file__).parent / "results"
MODEL = "modelport.examples:digits_cnn"
CALIB = "modelport.examples:digits_calibration"
EVAL = "modelport.examples:digits_evaluation"
RUNTIMES = {"onnxruntime": True, "openvino": True, "tflite": False}  # whether it has a per-op exclude option
# Activations ORT's QDQ pass folds into the Conv/Gemm before them: keeping one in float means keeping that layer.
FOLDED = ("Relu", "Clip", "LeakyRelu")


def exclusion(node: str, layers: list[Layer]) -> list[str]:
    """The ONNX nodes to keep in float for one culprit node: it, and the layer it is folded into if it is an
    activation (excluding a folded ReLU alone changes nothing)."""
    producer = {layer.tensor: layer for layer in layers}
    layer = next(la for la in layers if la.onnx_node == node)
    before = producer.get(layer.inputs[0]) if layer.op_type in FOLDED and layer.inputs else None
    return [node] + ([before.onnx_node] if before is not None and before.onnx_node else [])


def output_fidelity(artifact: Path, evaluation: Any, reference: np.ndarray) -> dict[str, float]:
    """SQNR, cosine and output noise power of the artifact against PyTorch FP32 on every evaluation sample."""
    with load_artifact(artifact) as runner:
        out = np.concatenate([runner.run(b)["output"] for b in evaluation.batches(64)])
    metrics = compare_output(out, reference)
    noise = float(np.sum((out.astype(np.float64) - reference) ** 2))
    return {"sqnr_db": metrics["sqnr_db"], "cosine": metrics["cosine"], "noise": noise,
            "top1_agreement": metrics["top1_agreement"]}


def closed(base: dict[str, float], kept: dict[str, float]) -> float:
    """The share of the INT8 artifact's output noise power that keeping layers in float removed."""
    return 1.0 - kept["noise"] / base["noise"]


def measure(backend: str, source: Any, calibration: Any, evaluation: Any, debug_data: Any, reference: np.ndarray,
            out: Path, draws: int) -> dict[str, Any]:
    bundle = ModelBundle(source)

    layers = reference_layers(bundle.onnx_path)

    def build(name: str, culprits: list[str]) -> Path:
        exclude = list(dict.fromkeys(n for c in culprits for n in exclusion(c, layers)))
        options = {"exclude": ",".join(exclude)} if exclude else {}
        return build_artifact(bundle, backend, "int8", out / f"{backend}-{name}", options=options,
                              calibration=calibration)[0].path

    base = build("int8", [])
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    start = time.perf_counter()
    record = debug_artifact(base, source, debug_data)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    ranked = [c for c in rank_layers(record["layers"]) if c["onnx_node"]]
    nodes = list(dict.fromkeys(c["onnx_node"] for c in ranked))
    row: dict[str, Any] = {"backend": backend, "seconds": seconds, "peak_mib": peak / 2**20,
                           "rss_growth_mib": rss_growth / 1024, "compared": record["compared"],
                           "tensors": len(record["layers"]), "samples": record["samples"],
                           "top3": [(c["module"] or c["tensor"], c["onnx_node"], c["jump_db"]) for c in ranked[:3]]}
    if not RUNTIMES[backend]:
        return row
    fid = {"int8": output_fidelity(base, evaluation, reference)}
    fid["top1"] = output_fidelity(build("top1", nodes[:1]), evaluation, reference)
    fid["top3"] = output_fidelity(build("top3", nodes[:3]), evaluation, reference)
    randoms = []
    for draw in range(draws):
        picked = random.Random(draw).sample(nodes, 3)
        randoms.append((picked, output_fidelity(build(f"random{draw}", picked), evaluation, reference)))
    row.update(fidelity=fid, random=randoms,
               closed={"top1": closed(fid["int8"], fid["top1"]), "top3": closed(fid["int8"], fid["top3"]),
                       "random3": float(np.mean([closed(fid["int8"], f) for _, f in randoms]))})
    return row


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    m = machine_summary()
    lines = [f"# modelport debug on the digits CNN ({datetime.date.today().isoformat()})", "",
             f"Machine: {m['cpu']}, {m['cores']} cores ({', '.join(m['flags'])}), {m['os']}, Python {m['python']}.",
             "Model: the trained digits CNN (`modelport.examples:digits_cnn`, real weights and images). INT8 "
             f"artifacts calibrated on 300 training images; debug over {args.samples} held-out images; output "
             "fidelity against PyTorch FP32 on all 497 held-out images. `python -m benchmarks.debug`.", "",
             "## Debug cost", "",
             "| runtime | seconds | peak traced MiB | max RSS growth MiB | tensors compared | top-3 culprits "
             "(module, ONNX node, jump dB) |", "|---|---|---|---|---|---|"]
    for r in rows:
        culprits = "; ".join(f"{m} ({n}, {j:.1f})" for m, n, j in r["top3"])
        lines.append(f"| {r['backend']} | {r['seconds']:.2f} | {r['peak_mib']:.2f} | {r['rss_growth_mib']:.0f} | "
                     f"{r['compared']} of {r['tensors']} | {culprits} |")
    lines += ["", "## Usefulness of the ranking: culprits kept in float", "",
              "Share closed: the fraction of the INT8 artifact's output noise power (against PyTorch FP32) "
              f"removed. Random: 3 layers drawn from the same candidates, mean of {args.draws} draws. A ReLU picked is "
              "kept in float with the Conv/Gemm it is folded into.", "",
              "| runtime | INT8 SQNR dB / cosine / top-1 agr. | top-1 kept: SQNR, closed | top-3 kept: SQNR, closed | "
              "3 random kept: SQNR (mean), closed |", "|---|---|---|---|---|"]
    for r in rows:
        if "fidelity" not in r:
            lines.append(f"| {r['backend']} | - | no per-op exclude option (options: layout, dynamic, io, ops) | "
                         "- | - |")
            continue
        f, c = r["fidelity"], r["closed"]
        rand_sqnr = np.mean([x["sqnr_db"] for _, x in r["random"]])
        lines.append(f"| {r['backend']} | {f['int8']['sqnr_db']:.1f} / {f['int8']['cosine']:.5f} / "
                     f"{f['int8']['top1_agreement']:.3f} | {f['top1']['sqnr_db']:.1f}, {c['top1']:.0%} | "
                     f"{f['top3']['sqnr_db']:.1f}, {c['top3']:.0%} | {rand_sqnr:.1f}, {c['random3']:.0%} |")
    lines += ["", "Random draws: " + "; ".join(f"{r['backend']}: " + ", ".join("+".join(p) for p, _ in r["random"])
                                               for r in rows if "random" in r), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=128, help="Evaluation samples debug streams.")
    parser.add_argument("--draws", type=int, default=3, help="Random 3-layer draws to average.")
    args = parser.parse_args()
    source = load_model(MODEL, dynamic=["x:0=batch"])
    calibration = open_calibration(CALIB, source.inputs)
    evaluation = open_evaluation(EVAL, source.inputs)
    reference = np.concatenate([source.run(b)["output"] for b in evaluation.batches(64)]).astype(np.float64)
    debug_data = open_evaluation(EVAL, source.inputs, size=args.samples)
    rows = []
    with tempfile.TemporaryDirectory(prefix="modelport-debug-bench-") as tmp:
        for backend in RUNTIMES:
            rows.append(measure(backend, source, calibration, evaluation, debug_data, reference, Path(tmp),
                                args.draws))
            print(rows[-1]["backend"], rows[-1].get("closed"), f"{rows[-1]['seconds']:.2f}s", flush=True)
    slug = "-".join(re.sub(r"[^a-z0-9 ]", "", cpu_model().lower()).split()[:2]) or "machine"
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"debug-{slug}-{datetime.date.today().isoformat()}.md"
    path.write_text(markdown(rows, args))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
