"""Does QAT beat PTQ where PTQ misses? Top-1 of FP32, PTQ int8 and QAT int8 on three runtimes.

Models (trained weights, real data: the digits train/test splits):
- digits_cnn: the built-in digits CNN, where 8-bit PTQ is already close to lossless;
- outlier_digits_cnn: the same trained network with a few channels of its first block scaled up 128x and
  the next convolution's weights for them scaled down as much: the same function in float (checked), but
  those channels set the 8-bit range of the next layer's input, the outlier channels real networks grow.
  PTQ's min/max range then leaves the ordinary channels a few levels, and their 1/32 weights round away.

For each: FP32 (the torch model); PTQ int8 from the original (minmax calibration on the training split);
QAT int8 from `modelport compress --qat` (fine-tuned with fake quantization on the training split, built
with its learned ranges: `--option ranges_file=`). ONNX Runtime and OpenVINO (`source=qdq`) read the
shared QDQ model; TFLite quantizes the model with its own converter (QAT: the fine-tuned weights, its own
ranges). ONNX Runtime builds take `reduce_range=false`, the 8-bit weights QAT trained (CPUs with VNNI and
ARM choose that anyway; x86 without VNNI would take 7-bit weights), and `auto_exclude=false fidelity=0`:
every Conv/Gemm in int8, so that PTQ is not rescued by layers kept in float. OpenVINO's QDQ model keeps
the pass's defaults; the table counts the nodes each build kept in float.

    .venv/bin/python benchmarks/qat.py [--epochs 3] [--threads 1]

Writes benchmarks/results/qat-<machine>-<date>.md and .json. Goal, reported and not asserted: QAT within
0.5 points of FP32 where PTQ loses more than 1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.run_suite import write_dated_results  # noqa: E402

TRAIN = "modelport.examples:digits_calibration"
EVAL = "modelport.examples:digits_evaluation"
MODELS = {"digits_cnn": "modelport.examples:digits_cnn",
          "outlier_digits_cnn": f"{Path(__file__).resolve()}:outlier_digits_cnn"}
OUTLIER_CHANNELS, OUTLIER_SCALE = (0, 5, 11), 128.0
RUNTIMES = {"onnxruntime": {"reduce_range": "false", "auto_exclude": "false", "fidelity": "0"},
            "openvino": {"source": "qdq"}, "tflite": {}}
RANGED = ("onnxruntime", "openvino")  # the runtimes that read the shared QDQ model, and so the learned ranges


def outlier_digits_cnn() -> tuple[torch.nn.Module, tuple[torch.Tensor]]:
    """The trained digits CNN with outlier channels after its first block; the same function in float."""
    from modelport.examples import digits_cnn

    model, example = digits_cnn()
    bn, conv = model.features[1], model.features[3]
    with torch.no_grad():
        for c in OUTLIER_CHANNELS:  # relu(k * y) = k * relu(y): the first block's channel c grows k times ...
            bn.weight[c] *= OUTLIER_SCALE
            bn.bias[c] *= OUTLIER_SCALE
            conv.weight[:, c] /= OUTLIER_SCALE  # ... and the next convolution reads it k times weaker
    return model.eval(), example


def _accuracy(artifact: Path, images: Any, labels: Any) -> float:
    from modelport.loading import load_artifact

    with load_artifact(artifact, threads=1) as runner:
        return 100 * float((runner.run({"x": images})["output"].argmax(1) == labels).mean())


def run_model(name: str, ref: str, work: Path, epochs: int) -> dict[str, Any]:
    from modelport.builder import build_artifact
    from modelport.bundle import ModelBundle
    from modelport.calibration import open_calibration
    from modelport.compress import Settings, compress
    from modelport.examples import digits_data
    from modelport.model import load_model

    images, labels = digits_data("test")
    original = load_model(ref, dynamic=["x:0=batch"])
    result = compress(original, train=TRAIN, evaluation=EVAL, out=work / f"{name}-qat.pt2", threads=1,
                      settings=Settings(qat=True, qat_epochs=epochs))
    qat = load_model(str(result.path))
    ranges = result.report["qat"]["ranges_file"]
    calibration = open_calibration(TRAIN, original.inputs, size=1000)
    fp32 = 100 * float((original.run({"x": images})["output"].argmax(1) == labels).mean())
    row: dict[str, Any] = {"fp32": fp32, "qat_float": result.report["after"]["metric"],
                           "qat_fake_quant": result.report["steps"][-1]["after"]["metric"], "ptq": {}, "qat": {}}
    for runtime, options in RUNTIMES.items():
        for kind, source in (("ptq", original), ("qat", qat)):
            opts = {**options, **({"ranges_file": ranges} if kind == "qat" and runtime in RANGED else {})}
            artifact, _ = build_artifact(ModelBundle(source), runtime, "int8", work / f"{name}-{kind}-{runtime}",
                                         options=opts, calibration=calibration)
            row[kind][runtime] = _accuracy(artifact.path, images, labels)
            details = artifact.manifest["details"]
            row.setdefault("kept_float", {})[f"{kind} {runtime}"] = len(
                details.get("kept_float", details.get("qdq", {}).get("kept_float", [])))
    return row


def markdown(machine: dict[str, Any], results: dict[str, dict[str, Any]], args: argparse.Namespace,
             stamp: str) -> str:
    out = [f"Measured {stamp} on {machine['cpu']} ({machine['cores']} cores, {', '.join(machine['flags'])}). "
           "Top-1 accuracy (%) on the digits test split (497 images), trained weights. PTQ: minmax calibration "
           f"on 1,000 training images; QAT: {args.epochs} epochs of `modelport compress --qat` on the training "
           "split, built with its learned ranges on ONNX Runtime (reduce_range=false) and OpenVINO (source=qdq); "
           "TFLite quantizes with its own converter and calibration (QAT: the fine-tuned weights).", ""]
    head = ["model", "FP32", "QAT float", *(f"{kind} {r}" for r in RUNTIMES for kind in ("PTQ", "QAT"))]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    goals = []
    for model, row in results.items():
        cells = [model, f"{row['fp32']:.2f}", f"{row['qat_float']:.2f}"]
        cells += [f"{row[kind][r]:.2f}" + (f" ({kept} float)" if (kept := row["kept_float"][f"{kind} {r}"]) else "")
                  for r in RUNTIMES for kind in ("ptq", "qat")]
        out.append("| " + " | ".join(cells) + " |")
        for r in RANGED:
            ptq_loss, qat_loss = row["fp32"] - row["ptq"][r], row["fp32"] - row["qat"][r]
            verdict = ("goal met" if qat_loss <= 0.5 else "goal not met") if ptq_loss > 1 else "PTQ does not miss here"
            goals.append(f"- {model}, {r}: PTQ {-ptq_loss:+.2f}, QAT {-qat_loss:+.2f} points against FP32: {verdict}.")
    note = ("ONNX Runtime's u8s8 int8 kernels on x86 without VNNI (this machine when its flags lack avx512_vnni/"
            "avx_vnni) multiply with VPMADDUBSW, whose 16-bit pair sums saturate with full 8-bit weights: there the "
            "ONNX Runtime columns can lose to saturation what the QDQ model itself keeps (the one-epoch QAT digits "
            "CNN of tests/test_compress_qat.py: 98.99 with its Q/DQ run as float ops, 97.59 on ORT's int8 kernels).")
    return "\n".join([*out, "", note, "", "Goal (QAT within 0.5 points of FP32 where PTQ loses more than 1):",
                      *goals])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("qat-bench-out"))
    args = parser.parse_args()
    from modelport.machine import machine_summary

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    results = {name: run_model(name, ref, args.work, args.epochs) for name, ref in MODELS.items()}
    machine = machine_summary()
    stamp = dt.date.today().isoformat()
    table = markdown(machine, results, args, stamp)
    path = write_dated_results("qat", "modelport QAT benchmark", table, machine,
                               {"settings": vars(args) | {"work": str(args.work)}, "results": results})
    print(table)
    print(f"Wrote {path} and .json")


if __name__ == "__main__":
    main()
