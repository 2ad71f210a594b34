"""TFLite INT8 against TFLite FP32 (XNNPACK, 1 thread, batch 1), before and after the build's XNNPACK-aware choices.

    python -m benchmarks.tflite_int8

Models: CREPE tiny (`modelport.examples.crepe:crepe_tiny`), the digits encoder and the digits CNN, trained weights.
Rows per model, all from one float .tflite and one calibration set (256 samples):
- `fp32`: modelport's FP32 build;
- `int8 full-integer (before)`: every op int8 with ai-edge-quantizer's moving-average ranges, as the build made it
  before (today: `ops=all,ranges=moving-average,measure=false`);
- `int8 (after)`: the default build (min/max ranges), which times full-integer against a form with single-channel
  convs in FP32 and keeps the faster (its choice and build-time times are shown);
- `int8 ops=mixed`: the FULLY_CONNECTED layers dynamically quantized with float outputs, the rest as `int8 (after)`;
- `int8-dynamic dynamic_wi8_afp32 (before)`: ai-edge-quantizer's dynamic recipe on every op, convs included, as
  the build made it before;
- `int8-dynamic (after)`: the default build, convs left FP32 (XNNPACK has no dynamically-quantized conv).
Fidelity: mean per-sample cosine and SQNR of each row's outputs against PyTorch FP32 on held-out data. Latency:
every row of a model takes turns over 7 rounds (modelport.timing.interleaved_rounds); p50 is the median of the
round medians, the speed-up the median of per-round ratios to FP32. Results: benchmarks/results/tflite-int8-*.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.run_suite import write_dated_results
from benchmarks.trained import _digits, _fidelity, _outputs, _tones

THREADS = 1
CALIBRATION_SAMPLES = 256
ROUNDS = 7
BUDGET_S = 20.0
MODELS = (
    ("CREPE tiny", "modelport.examples.crepe:crepe_tiny", "modelport.examples.crepe:pitch_calibration", _tones),
    ("digits encoder", "modelport.examples:digits_transformer", "modelport.examples:digits_calibration", _digits),
    ("digits CNN", "modelport.examples:digits_cnn", "modelport.examples:digits_calibration", _digits),
)
ROWS = (("fp32", "fp32", {}),
        ("int8 full-integer (before)", "int8", {"ops": "all", "ranges": "moving-average", "measure": "false"}),
        ("int8 (after)", "int8", {}), ("int8 ops=mixed", "int8", {"ops": "mixed"}),
        ("int8-dynamic (after)", "int8-dynamic", {}))
BEFORE_DYNAMIC = "int8-dynamic dynamic_wi8_afp32 (before)"


def _before_dynamic(float_tflite: Path, out: Path) -> Path:
    """ai-edge-quantizer's dynamic recipe on every op it supports (convs too): the build's former int8-dynamic."""
    from ai_edge_quantizer import quantizer, recipe

    q = quantizer.Quantizer(str(float_tflite), recipe.dynamic_wi8_afp32())
    out.write_bytes(bytes(q.quantize(enable_progress_report=False).quantized_model))
    return out


def measure(name: str, factory: str, calib: str, data: Callable[[], tuple[np.ndarray, Any]],
            work: Path) -> list[dict[str, Any]]:
    import torch

    from modelport.backends.tflite import TFLiteRunner
    from modelport.builder import build_artifact
    from modelport.bundle import ModelBundle
    from modelport.calibration import open_calibration
    from modelport.exporters.litert import convert_to_tflite
    from modelport.model import load_model
    from modelport.timing import interleaved_rounds

    source = load_model(factory)
    calibration = open_calibration(calib, source.inputs, size=CALIBRATION_SAMPLES)
    x, _ = data()
    with torch.no_grad():
        reference = source.module(torch.from_numpy(x)).numpy()
    bundle = ModelBundle(source, onnx_dir=work / "onnx")
    rows, runs = [], {}
    for label, precision, options in ROWS:
        artifact, _ = build_artifact(bundle, "tflite", precision, work / f"row-{len(rows)}",
                                     options={"dynamic": "off", **options}, calibration=calibration, force=True)
        runner = TFLiteRunner(artifact.main_file, artifact.details, artifact.inputs, artifact.outputs, THREADS)
        details = artifact.details
        rows.append({"row": label, "latency_at_build": details.get("latency"),
                     "kept_float": [op["op"] for op in details.get("int8_op_set", {}).get("kept_float", [])],
                     "int8_ops": details.get("int8_ops"), "warning": details.get("warning")})
        runs[label] = runner
        if precision == "int8-dynamic":  # the former recipe, from the same float .tflite, run by the same runner
            path = _before_dynamic(convert_to_tflite(source, dynamic="off").path, work / "before-dynamic.tflite")
            runs[BEFORE_DYNAMIC] = TFLiteRunner(path, details, artifact.inputs, artifact.outputs, THREADS)
            rows.append({"row": BEFORE_DYNAMIC})
    for row in rows:
        row.update(_fidelity(reference, _outputs(runs[row["row"]].run, x)))
    rounds = interleaved_rounds({k: r.run for k, r in runs.items()}, {"x": x[:1]}, ROUNDS, BUDGET_S)
    for row in rows:
        row["p50_ms"] = round(float(np.median(rounds[row["row"]])), 4)
        row["speedup_vs_fp32"] = round(float(np.median(np.divide(rounds["fp32"], rounds[row["row"]]))), 3)
    return rows


def _table(name: str, factory: str, rows: list[dict[str, Any]]) -> str:
    out = [f"## {name} (`{factory}`)", "",
           "| row | cosine | SQNR dB | p50 ms | vs FP32 | build's choice (build-time check) |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        if "status" in r:
            out.append(f"| {r['row']} | {r['status']} | | | | |")
            continue
        check = r.get("latency_at_build") or {}
        choice = ""
        if check:
            choice = f"{check['chosen']}: {check['artifact_ms']:.3f} ms vs FP32 {check['fp32_ms']:.3f} ms"
            choice += "; warns: INT8 does not pay" if r.get("warning") else ""
        out.append(f"| {r['row']} | {r['cosine']:.5f} | {r['sqnr_db']:.1f} | {r['p50_ms']:.3f} | "
                   f"{r['speedup_vs_fp32']:.2f}x | {choice} |")
    return "\n".join(out)


def main() -> None:
    import torch

    from modelport.machine import machine_summary

    torch.set_num_threads(THREADS)
    results = {}
    with tempfile.TemporaryDirectory(prefix="tflite-int8-") as tmp:
        for name, factory, calib, data in MODELS:
            try:
                results[name] = measure(name, factory, calib, data, Path(tmp) / name.replace(" ", "-"))
            except Exception as exc:  # one model's failure (a missing package) leaves the others' figures
                results[name] = [{"row": "-", "status": f"failed: {type(exc).__name__}: {exc}"}]
    machine = machine_summary()
    intro = (f"Measured on {machine['cpu']} ({machine['cores']} cores, {', '.join(machine['flags'])}) with "
             f"`python -m benchmarks.tflite_int8`, LiteRT interpreter with XNNPACK, {THREADS} thread, batch 1. Trained "
             f"weights; {CALIBRATION_SAMPLES} calibration samples; cosine and SQNR against PyTorch FP32 on held-out "
             f"data. Latency: every row of a model took turns over {ROUNDS} rounds; p50 is the median of round "
             "medians, the speed-up the median of per-round ratios to FP32. The last column is what the build chose "
             "and timed itself (2 threads, example input). The machine was shared with other work while it ran: "
             "absolute times move, the ratios within one run hold.")
    tables = "\n\n".join(_table(name, factory, results[name]) for name, factory, _, _ in MODELS)
    path = write_dated_results("tflite-int8", "TFLite INT8 against TFLite FP32, before and after",
                               f"{intro}\n\n{tables}", machine, {"rows": results})
    print(path.read_text())


if __name__ == "__main__":
    main()
