"""Does QAT beat PTQ where PTQ misses? Top-1 of FP32, PTQ int8 and QAT int8 on three runtimes.

Models (trained weights, real data: the digits train/test splits):
- digits_cnn: the built-in digits CNN, where 8-bit PTQ is already close to lossless;
- outlier_digits_cnn: the same trained network with a few channels of its first block scaled up 128x and
  the next convolution's weights for them scaled down as much: the same function in float (checked), but
  those channels set the 8-bit range of the next layer's input, the outlier channels real networks grow.
  PTQ's min/max range then leaves the ordinary channels a few levels, and their 1/32 weights round away.

For each: FP32 (the torch model); PTQ int8 from the original (minmax calibration on the training split);
on ONNX Runtime also PTQ with the QDQ pass's cross-layer equalization forced on (`cle=on`; its default,
auto, runs only on per-tensor weights); QAT int8 from `modelport compress --qat` (BatchNorm folded,
consecutive layers equalized, fine-tuned with fake quantization on the training split, built with its
learned ranges: `--option ranges_file=`), and two ablations of QAT, each with one of its fixes undone (no
equalization; 8-bit weights where the build takes 7). ONNX Runtime and OpenVINO (`source=qdq`) read the shared QDQ
model; TFLite quantizes the model with its own converter (QAT: the fine-tuned weights, its own ranges).
ONNX Runtime builds choose reduce_range from the CPU as they do by default (7-bit weights on x86 without
VNNI, whose u8s8 kernels saturate with full 8-bit weights), and QAT trains on the same grid
(`--qat-reduce-range auto`); they take `auto_exclude=false fidelity=0`: every Conv/Gemm in int8, so that
PTQ is not rescued by layers kept in float. OpenVINO's QDQ model keeps the pass's defaults (8-bit
weights); the table counts the nodes each build kept in float.

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
RUNTIMES = {"onnxruntime": {"auto_exclude": "false", "fidelity": "0"},
            "openvino": {"source": "qdq"}, "tflite": {}}
RANGED = ("onnxruntime", "openvino")  # the runtimes that read the shared QDQ model, and so the learned ranges
KINDS = {"ptq": "PTQ", "ptq_cle": "PTQ+CLE", "qat": "QAT", "qat_no_cle": "QAT without CLE",
         "qat_8bit": "QAT 8-bit weights"}
QAT_VARIANTS = {"qat": {}, "qat_no_cle": {"qat_equalize": False}, "qat_8bit": {"qat_reduce_range": "false"}}
ABLATIONS = ("qat_no_cle", "qat_8bit")  # QAT with one of its two fixes undone: built where the ranges are read
EQUALIZED = "onnxruntime"  # the runtime whose options hold the QDQ pass's algorithms (cle=on)


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


def _kinds(runtime: str) -> list[str]:
    return [k for k in KINDS if (k != "ptq_cle" or runtime == EQUALIZED) and (k not in ABLATIONS or runtime in RANGED)]


def run_model(name: str, ref: str, work: Path, epochs: int) -> dict[str, Any]:
    from modelport.builder import build_artifact
    from modelport.bundle import ModelBundle
    from modelport.calibration import open_calibration
    from modelport.compress import Settings, compress
    from modelport.examples import digits_data
    from modelport.model import load_model

    images, labels = digits_data("test")
    original = load_model(ref, dynamic=["x:0=batch"])
    fp32 = 100 * float((original.run({"x": images})["output"].argmax(1) == labels).mean())
    trained, row = {}, {"fp32": fp32, "qat_runs": {}, **{kind: {} for kind in KINDS}}
    for variant, changes in QAT_VARIANTS.items():
        result = compress(original, train=TRAIN, evaluation=EVAL, out=work / f"{name}-{variant}.pt2", threads=1,
                          settings=Settings(qat=True, qat_epochs=epochs, **changes))
        step = result.report["steps"][-1]
        trained[variant] = (load_model(str(result.path)), result.report["qat"]["ranges_file"])
        row["qat_runs"][variant] = {"float": result.report["after"]["metric"], "weights": step["settings"]["weights"],
                                    "fake_quant_per_epoch": [e["metric"] for e in step["epochs"]],
                                    "equalized": step["details"]["equalized"], "seconds": result.report["seconds"]}
    calibration = open_calibration(TRAIN, original.inputs, size=1000)
    for runtime, options in RUNTIMES.items():
        for kind in _kinds(runtime):
            source, ranges = trained.get(kind, (original, None))
            opts = {**options, **({"ranges_file": ranges} if ranges and runtime in RANGED else {}),
                    **({"cle": "on"} if kind == "ptq_cle" else {})}
            artifact, _ = build_artifact(ModelBundle(source), runtime, "int8", work / f"{name}-{kind}-{runtime}",
                                         options=opts, calibration=calibration)
            row[kind][runtime] = _accuracy(artifact.path, images, labels)
            details = artifact.manifest["details"]
            row.setdefault("kept_float", {})[f"{kind} {runtime}"] = len(
                details.get("kept_float", details.get("qdq", {}).get("kept_float", [])))
    return row


def markdown(machine: dict[str, Any], results: dict[str, dict[str, Any]], args: argparse.Namespace,
             stamp: str) -> str:
    runs = next(iter(results.values()))["qat_runs"]
    out = [f"Measured {stamp} on {machine['cpu']} ({machine['cores']} cores, {', '.join(machine['flags'])}). "
           "Top-1 accuracy (%) on the digits test split (497 images: one image is 0.20 points), trained weights. "
           "PTQ: minmax calibration on 1,000 training images; PTQ+CLE: the same with `cle=on`; QAT: "
           f"{args.epochs} epochs of `modelport compress --qat` on the training split (weights: "
           f"{runs['qat']['weights']}), built with its learned ranges on ONNX Runtime (reduce_range from the CPU) "
           "and OpenVINO (source=qdq); TFLite quantizes with its own converter and calibration (QAT: the "
           "fine-tuned weights). Two ablations undo one of QAT's fixes each: without CLE (`--no-qat-equalize`), "
           f"and 8-bit weights (`--qat-reduce-range false`: {runs['qat_8bit']['weights']}).", ""]
    columns = [(kind, r) for r in RUNTIMES for kind in _kinds(r)]
    head = ["model", "FP32", "QAT float", *(f"{KINDS[kind]} {r}" for kind, r in columns)]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    goals = []
    for model, row in results.items():
        cells = [model, f"{row['fp32']:.2f}", f"{row['qat_runs']['qat']['float']:.2f}"]
        cells += [f"{row[kind][r]:.2f}" + (f" ({kept} float)" if (kept := row["kept_float"][f"{kind} {r}"]) else "")
                  for kind, r in columns]
        out.append("| " + " | ".join(cells) + " |")
        for r in RANGED:
            ptq_loss, qat_loss = row["fp32"] - row["ptq"][r], row["fp32"] - row["qat"][r]
            verdict = ("goal met" if qat_loss <= 0.5 else "goal not met") if ptq_loss > 1 else "PTQ does not miss here"
            others = ", ".join(f"{KINDS[k]} {row[k][r] - row['fp32']:+.2f}" for k in _kinds(r)
                               if k not in ("ptq", "qat"))
            goals.append(f"- {model}, {r}: PTQ {-ptq_loss:+.2f}, QAT {-qat_loss:+.2f} points against FP32: {verdict} "
                         f"({others}).")
        equalized = "; ".join(f"{' -> '.join(e['layers'])} {e['range_spread_before']} -> {e['range_spread_after']}"
                              for e in row["qat_runs"]["qat"]["equalized"])
        epochs = "; ".join(f"{KINDS[v]} {', '.join(f'{m:.2f}' for m in run['fake_quant_per_epoch'])}"
                           for v, run in row["qat_runs"].items())
        goals.append(f"  {model}: weight range spread (largest / smallest channel) equalized: {equalized or 'none'}. "
                     f"Fake-quantized accuracy per epoch: {epochs}.")
    notes = [
        "What QAT fixes, by the ablations: the outlier channels' weights in the next convolution are 1/128 of "
        "the others and round to zero on its per-output-channel grid, and their activations set that "
        "convolution's input range, leaving the ordinary channels two or three levels; Adam at QAT's learning "
        "rate cannot move a factor of 128 in a few epochs (a tenfold rate, tried while fixing this, broke "
        "training). QAT folds BatchNorm and cross-layer equalizes consecutive layers (the same float function) "
        "before it fake-quantizes, which removes both effects (QAT without CLE: the column without it).",
        "The weight grid: ONNX Runtime's build on x86 without VNNI reduces weights to 7 bits (its u8s8 kernels "
        "multiply with VPMADDUBSW, whose 16-bit pair sums saturate with full 8-bit weights), so 8-bit QAT "
        "weights are rounded again onto the 7-bit grid there; QAT trains on the grid the build will use "
        "(`--qat-reduce-range auto`), so that the QDQ model's weights are QAT's own (the 8-bit column is the "
        "other choice: where it scores the same, the re-rounding cost nothing on that model).",
        "Where PTQ+CLE scores as QAT does, QAT's fine-tuning adds nothing measurable beyond the equalization on "
        "that model; the QDQ pass's default `cle=auto` does not run on per-channel weights, so its PTQ misses.",
    ]
    return "\n".join([*out, "", *(f"{n}\n" for n in notes),
                      "Goal (QAT within 0.5 points of FP32 where PTQ loses more than 1):", *goals])


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
