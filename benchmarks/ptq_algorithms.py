"""The QDQ pass's post-training algorithms (cross-layer equalization, bias correction, AdaRound) measured on
trained models with real data: scikit-learn's digits, the example CNN and a depthwise-separable CNN (the hard
case for INT8: a depthwise conv's few weights per channel give per-tensor quantization its widest spread).

    python -m benchmarks.ptq_algorithms

Each ONNX Runtime INT8 build (per-tensor and per-channel weights, each algorithm off and on) is scored on the
497 held-out digits: top-1 accuracy, and SQNR and cosine of its logits against PyTorch FP32. The fidelity
guard is off (fidelity=0) so that no layer stays float and the figures are the algorithms' alone. Results
land in benchmarks/results/ptq-algorithms-<machine>-<date>.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks.run_suite import RESULTS, machine_slug, write_dated_results
from modelport.examples.digits import cached_digits_model, fit_digits
from modelport.similarity import array_sqnr_db, mean_cosine

OFF = {"cle": "off", "bias_correction": "false", "adaround": "false"}
CONFIGS: dict[str, dict[str, str]] = {
    "none": OFF,
    "cle": {**OFF, "cle": "on"},
    "bias correction": {**OFF, "bias_correction": "true"},
    "adaround": {**OFF, "adaround": "true"},
    "cle + adaround + bias correction": {"cle": "on", "bias_correction": "true", "adaround": "true"},
}
COMMON = {"fidelity": "0", "measure": "false"}
CALIBRATION_SAMPLES = 256


class DepthwiseCNN(nn.Module):
    """MobileNet-style: depthwise 3x3 and pointwise 1x1 convs, BatchNorm folded at export."""

    def __init__(self) -> None:
        super().__init__()

        def block(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False), nn.BatchNorm2d(c_in), nn.ReLU(),
                    nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

        self.features = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                      *block(16, 32, 1), *block(32, 64, 2), *block(64, 64, 1))
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _train() -> DepthwiseCNN:
    torch.manual_seed(0)
    return fit_digits(DepthwiseCNN(), epochs=30)


def depthwise_cnn() -> tuple[nn.Module, tuple[torch.Tensor]]:
    """The trained depthwise-separable digits CNN (weights cached as the example CNN's are)."""
    return cached_digits_model("digits_dwcnn", DepthwiseCNN, _train)


@contextlib.contextmanager
def _fresh_cache(folder: Path) -> Iterator[None]:
    previous = os.environ.get("MODELPORT_CACHE")
    os.environ["MODELPORT_CACHE"] = str(folder)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("MODELPORT_CACHE")
        else:
            os.environ["MODELPORT_CACHE"] = previous


def _scores(ref: np.ndarray, got: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {"top1": round(100 * float((got.argmax(1) == labels).mean()), 2), "cosine": round(mean_cosine(ref, got), 5),
            "sqnr_db": round(array_sqnr_db(ref, got), 1)}


def measure(factory: str, configs: dict[str, dict[str, str]] = CONFIGS, common: dict[str, str] = COMMON,
            weights: tuple[str | None, ...] = ("false", "true")) -> list[dict[str, Any]]:
    """Every configuration of one model (per weights setting; None: the backend's default): its scores, build
    seconds and what each algorithm changed."""
    from modelport.backends import get_backend
    from modelport.builder import build_artifact
    from modelport.bundle import ModelBundle
    from modelport.calibration import open_calibration
    from modelport.examples import digits_data
    from modelport.model import load_model

    source = load_model(factory, dynamic=["x:0=batch"])
    calibration = open_calibration("modelport.examples:digits_calibration", source.inputs, size=CALIBRATION_SAMPLES)
    x, labels = digits_data("test")
    with torch.no_grad():
        ref = source.module(torch.from_numpy(x)).numpy()
    rows = [{"weights": "fp32", "config": "-", **_scores(ref, ref, labels), "build_s": None, "changes": {}}]
    with tempfile.TemporaryDirectory(prefix="ptq-algorithms-") as tmp:
        bundle = ModelBundle(source, onnx_dir=Path(tmp) / "exports")
        _ = bundle.onnx_path  # exported once, outside the build times
        for per_channel in weights:
            for name, options in configs.items():
                out = Path(tmp) / f"{per_channel}-{len(rows)}"
                with _fresh_cache(Path(tmp) / f"cache-{len(rows)}"):  # no build reuses another's ranges
                    chosen = {} if per_channel is None else {"per_channel": per_channel}
                    artifact, _ = build_artifact(bundle, "onnxruntime", "int8", out, calibration=calibration,
                                                 force=True, options={**common, **options, **chosen})
                runner = get_backend("onnxruntime").load(artifact, threads=2)
                got = runner.run({"x": x})[runner.outputs[0].name]
                label = {None: "default", "true": "per-channel", "false": "per-tensor"}[per_channel]
                rows.append({"weights": label, "config": name, "kept_float": len(artifact.details["kept_float"]),
                             **_scores(ref, got, labels), "build_s": artifact.manifest["build_seconds"],
                             "changes": artifact.details["algorithms"]})
    return rows


def _summary(changes: dict[str, list[dict[str, Any]]]) -> str:
    """How many layers (or chains, for CLE) each algorithm changed, of those it measured."""
    parts = []
    for name, items in changes.items():
        units = [c for c in items if "layer" in c or "layers" in c]
        if name == "smoothquant" or not items:
            continue
        if any(c.get("kept") is False for c in items if c not in units):
            parts.append(f"{name} measured, dropped: model output no closer to float")
        else:
            parts.append(f"{name} kept {sum(c.get('kept', True) for c in units)} of {len(units)}")
    return "; ".join(parts) or "-"


def markdown(results: dict[str, list[dict[str, Any]]], machine: dict[str, Any], stamp: str) -> str:
    out = ["# Post-training algorithms of the QDQ pass (ONNX Runtime INT8)", "",
           f"Measured {stamp} on {machine['cpu']} ({machine['cores']} cores, {', '.join(machine['flags'])}) with "
           "`python -m benchmarks.ptq_algorithms`. Trained weights, real data: scikit-learn's digits, "
           f"{CALIBRATION_SAMPLES} training images for calibration (the algorithms use the first 64), scored on "
           "the 497 held-out images against PyTorch FP32. Options: "
           f"`{' '.join(f'{k}={v}' for k, v in COMMON.items())}` (no layer kept float, so the figures are the "
           "algorithms' alone); activations as ONNX Runtime chooses for this CPU. Every build calibrates afresh (no "
           "range cache), so build seconds include the algorithms; this 2-core machine was shared while it ran.",
           ""]
    for model, rows in results.items():
        out += [f"## {model}", "", "| weights | algorithms | top-1 % | cosine | SQNR dB | build s | what ran |",
                "|---|---|---|---|---|---|---|"]
        for r in rows:
            build = "-" if r["build_s"] is None else f"{r['build_s']:.1f}"
            out.append(f"| {r['weights']} | {r['config']} | {r['top1']:.2f} | {r['cosine']:.5f} | {r['sqnr_db']:.1f} "
                       f"| {build} | {_summary(r['changes'])} |")
        out.append("")
    return "\n".join(out)


TRAINED = {"digits CNN": "modelport.examples:digits_cnn", "depthwise-separable digits CNN":
           "benchmarks.ptq_algorithms:depthwise_cnn", "digits encoder": "modelport.examples:digits_transformer"}


def bias_correction_by_default(machine: dict[str, Any]) -> Path:
    """Whether bias correction can be on by default: ORT INT8 at every default (the keep-in-float rules and the
    fidelity guard on, so layers do fall back) with it off and on, on the trained digits models."""
    configs = {"defaults": {}, "defaults + bias correction": {"bias_correction": "true"}}
    results = {name: measure(factory, configs, {"measure": "false"}, (None,)) for name, factory in TRAINED.items()}
    lines = [f"Measured on {machine['cpu']} ({machine['cores']} cores), `python -m benchmarks.ptq_algorithms "
             "--bias-default`: ONNX Runtime INT8 with every default option (keep-in-float rules, fidelity guard at "
             f"0.99), {CALIBRATION_SAMPLES} training digits for calibration, scored on the 497 held-out digits against "
             "PyTorch FP32. Trained weights. The machine was shared while it ran.", "",
             "| model | build | top-1 % | cosine | SQNR dB | nodes kept float | what ran |",
             "|---|---|---|---|---|---|---|"]
    for model, rows in results.items():
        lines += [f"| {model} | {r['config']} | {r['top1']:.2f} | {r['cosine']:.5f} | {r['sqnr_db']:.1f} | "
                  f"{r.get('kept_float', '-')} | {_summary(r['changes'])} |" for r in rows]
    return write_dated_results("bias-correction-default", "Bias correction on by default? (ONNX Runtime INT8)",
                               "\n".join(lines), machine, {"results": results})


def main() -> None:
    from modelport.machine import machine_summary

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bias-default", action="store_true",
                        help="only ORT INT8 at its defaults (fidelity guard on) with bias correction off and on")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.bias_default:
        print(bias_correction_by_default(machine_summary()).read_text())
        return
    results = {"digits CNN (modelport.examples:digits_cnn)": measure("modelport.examples:digits_cnn"),
               "depthwise-separable digits CNN": measure("benchmarks.ptq_algorithms:depthwise_cnn")}
    machine = machine_summary()
    stamp = dt.date.today().isoformat()
    path = RESULTS / f"ptq-algorithms-{machine_slug(machine['cpu'])}-{stamp}.md"
    path.write_text(markdown(results, machine, stamp))
    print(path.read_text())


if __name__ == "__main__":
    main()
