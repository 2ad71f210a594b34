"""OpenVINO INT8 on the trained models: modelport's default before and after the route guard, beside NNCF's peer.

    python -m benchmarks.openvino_int8

Per model (the digits encoder and CREPE tiny, as in benchmarks/trained.py: same calibration samples, held-out
data and metrics): OpenVINO FP32; modelport int8 at today's defaults (source=auto: the closest to FP32 on probe
inputs of modelport's NNCF settings, NNCF's defaults and, with attention, the QDQ model; 7-bit weights where the
CPU saturates); the old default, rebuilt with explicit options (source=nncf overflow_fix=first_layer); source=qdq;
and `nncf.quantize` as a user calls it (benchmarks/peers.py). Cosine and SQNR against PyTorch FP32; latency at
batch 1 and 1 thread, every row taking turns (modelport.timing.interleaved_rounds), each set against FP32 round by
round. Results: benchmarks/results/openvino-int8-<machine>-<date>.{md,json}.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.peers import openvino_session
from benchmarks.run_suite import write_dated_results
from benchmarks.trained import CALIBRATION_SAMPLES, MODELS, ROUNDS, THREADS, Trained, prepare, score_and_time

ROWS = {  # label -> (precision, options); measure=false: this script times every row itself
    "modelport fp32": ("fp32", {}),
    "modelport int8 (default now)": ("int8", {"measure": "false"}),
    "modelport int8 (old default: source=nncf overflow_fix=first_layer)": (
        "int8", {"measure": "false", "source": "nncf", "overflow_fix": "first_layer"}),
    "modelport int8 source=qdq": ("int8", {"measure": "false", "source": "qdq"}),
}
FP32 = "modelport fp32"


def measure(model: Trained, work: Path) -> list[dict[str, Any]]:
    from modelport.backends import get_backend
    from modelport.builder import build_artifact

    data = prepare(model, work)
    rows: list[dict[str, Any]] = [{"row": "pytorch fp32 (reference)",
                                   "metric": model.metric(data.reference, data.truth)}]
    runs: dict[str, Callable] = {}
    for label, (precision, options) in ROWS.items():
        artifact, _ = build_artifact(data.bundle, "openvino", precision, work / str(len(runs)), options=options,
                                     calibration=data.calibration, force=True)
        runs[label] = get_backend("openvino").load(artifact, threads=THREADS).run
        details = artifact.manifest["details"]
        rows.append({"row": label, "label": label, "build_s": artifact.manifest["build_seconds"],
                     "route": details.get("route"), "quantizer": details.get("quantizer"),
                     "overflow_fix": details.get("overflow_fix"),
                     **{k: details["runtime"].get(k) for k in ("int8_kernels", "fused_attention_kernels")}})
    name, build_peer = model.nncf_peer
    label = f"nncf.quantize ({name.removeprefix('nncf_')}, benchmarks/peers.py)"
    peer = build_peer(data.bundle.onnx_path, data.calibration, work / "peer.xml")
    runs[label] = openvino_session(str(peer), THREADS).run
    rows.append({"row": label, "label": label})
    score_and_time(model, data, rows, runs, lambda row: FP32)
    return rows


def _route(row: dict[str, Any]) -> str:
    route = row.get("route")
    if not route:
        return "-"
    scores = ", ".join(f"{k} {v:.1f}" for k, v in route.get("sqnr_db", {}).items())
    return f"{route['chosen']}" + (f" (probe SQNR dB: {scores})" if scores else "")


def _table(model: Trained, rows: list[dict[str, Any]]) -> str:
    out = [f"## {model.name} (`{model.factory}`)", "",
           f"| row | {model.metric_name} | cosine | SQNR dB | p50 ms | vs FP32 | route chosen |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        cos = f"{r['cosine']:.5f}" if "cosine" in r else "1 (itself)"
        sqnr = f"{r['sqnr_db']:.1f}" if "sqnr_db" in r else "-"
        p50 = f"{r['p50_ms']:.3f}" if "p50_ms" in r else "-"
        speed = f"{r['speedup_vs_runtime_fp32']:.2f}x" if "speedup_vs_runtime_fp32" in r else "-"
        out.append(f"| {r['row']} | {r['metric']:.2f} | {cos} | {sqnr} | {p50} | {speed} | {_route(r)} |")
    return "\n".join(out)


def main() -> None:
    import torch

    from modelport.machine import machine_summary

    torch.set_num_threads(THREADS)
    results = {}
    with tempfile.TemporaryDirectory(prefix="ov-int8-") as tmp:
        for model in MODELS:
            results[model.name] = measure(model, Path(tmp) / model.name.replace(" ", "-"))
    machine = machine_summary()
    intro = (f"Measured on {machine['cpu']} ({machine['cores']} cores, {', '.join(machine['flags'])}) with "
             f"`python -m benchmarks.openvino_int8`, {THREADS} thread per row, batch 1. Trained weights, real task "
             f"metrics; {CALIBRATION_SAMPLES} calibration samples shared by every row, disjoint from the scored ones. "
             f"Cosine and SQNR against PyTorch FP32. Latency: every row took turns over {ROUNDS} rounds; p50 is the "
             "median of round medians, the speed-up the median of per-round ratios to OpenVINO FP32. The machine was "
             "shared with other work, so absolute times move; the ratios within one run hold.")
    tables = "\n\n".join(_table(m, results[m.name]) for m in MODELS)
    path = write_dated_results("openvino-int8", "OpenVINO INT8: modelport's default before and after, beside NNCF",
                               f"{intro}\n\n{tables}", machine, {"rows": results})
    print(path.read_text())


if __name__ == "__main__":
    main()
