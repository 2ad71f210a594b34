"""Hugging Face Optimum's ONNX Runtime quantizer as a benchmark peer: what a Hugging Face user gets from
`ORTQuantizer` with `AutoQuantizationConfig.avx2(is_static=True)` and min-max calibration, fed the same
calibration samples as modelport, on the same exported ONNX file.

Optimum only builds the file; it is timed in ONNX Runtime like every other ONNX artifact of the run.

Install: `pip install 'optimum-onnx[onnxruntime]' datasets`. optimum-onnx 0.1.0 pins `transformers<4.58`
(and with it `huggingface_hub<1.0`), so beside a project on transformers 5 it belongs in a venv of its
own; run from there, `python benchmarks/optimum_peer.py MODEL.onnx CALIB.npz OUT.onnx` builds the file.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

INSTALL = "pip install 'optimum-onnx[onnxruntime]' datasets"


class Samples(Protocol):
    """What the peer reads of a calibration set (modelport's CalibrationSet fits): samples with batch 1."""

    def __len__(self) -> int: ...

    def samples(self) -> Iterator[dict[str, np.ndarray]]: ...


def build_optimum_avx2(onnx_path: Path, calibration: Samples, out: Path, *, per_channel: bool = True) -> Path:
    """Quantize `onnx_path` as Optimum's static-quantization guide does, with its `avx2` preset, into `out`.

    The preset at its defaults (per-channel, full 8-bit range): QDQ format, uint8 activations (asymmetric)
    and uint8 weights (symmetric), every operator ONNX Runtime's QDQ quantizer knows. Calibration is
    `AutoCalibrationConfig.minmax` over a `datasets.Dataset` of the given samples, as Optimum expects; its
    reader adds the batch axis back to each row, so the rows are the samples without theirs.
    """
    try:
        from datasets import Dataset
        from optimum.onnxruntime import ORTQuantizer
        from optimum.onnxruntime.configuration import AutoCalibrationConfig, AutoQuantizationConfig
    except ImportError as exc:
        raise ImportError(f"The Optimum peer needs optimum-onnx and datasets ({exc}). Install them with `{INSTALL}`, "
                          "in a venv of their own where the project's transformers is 4.58 or newer.") from exc

    onnx_path, out = Path(onnx_path), Path(out)
    rows: dict[str, list[np.ndarray]] = {}
    for sample in calibration.samples():
        for name, value in sample.items():
            if value.shape[:1] != (1,):
                raise ValueError(f"Calibration input {name!r} has shape {value.shape}; the peer expects batch 1.")
            rows.setdefault(name, []).append(value[0])
    dataset = Dataset.from_dict({n: np.stack(v) for n, v in rows.items()}).with_format("numpy")

    qconfig = AutoQuantizationConfig.avx2(is_static=True, per_channel=per_channel)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".optimum-") as work:
        # Optimum reads a model directory; file_name picks the one file (a config.json is optional there)
        quantizer = ORTQuantizer.from_pretrained(onnx_path.parent, file_name=onnx_path.name)
        ranges = quantizer.fit(dataset=dataset, calibration_config=AutoCalibrationConfig.minmax(dataset),
                               onnx_augmented_model_name=Path(work) / "augmented_model.onnx",
                               operators_to_quantize=qconfig.operators_to_quantize)
        saved = quantizer.quantize(quantization_config=qconfig, save_dir=Path(work) / "quantized",
                                   calibration_tensors_range=ranges)
        (saved / f"{onnx_path.stem}_quantized.onnx").replace(out)
    return out


class _NpzSamples:
    """Samples stacked on axis 0 in an .npz keyed by input name, as another venv hands them over."""

    def __init__(self, path: Path) -> None:
        with np.load(path) as data:
            self.arrays = {name: data[name] for name in data.files}

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def samples(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(len(self)):
            yield {name: array[i:i + 1] for name, array in self.arrays.items()}


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python benchmarks/optimum_peer.py MODEL.onnx CALIB.npz OUT.onnx", file=sys.stderr)
        return 2
    model, calib, out = map(Path, argv)
    print(build_optimum_avx2(model, _NpzSamples(calib), out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
