"""Hugging Face Optimum's path for an encoder on ONNX Runtime, as its guides give it: Optimum's own ONNX export,
`ORTOptimizer` at O2 and O3, and the O3 model quantized by `ORTQuantizer` with its avx2 static preset.

Runs in the Optimum venv (`make optimum-venv`: optimum-onnx pins transformers<4.58), on a model directory that
`save_pretrained` wrote, so the weights are the ones modelport builds from:

    .venv-optimum/bin/python benchmarks/optimum_transformers.py MODEL_DIR CALIB.npz OUT_DIR

Writes OUT_DIR/{o2,o3,o3_avx2}.onnx and prints their paths as JSON. CALIB.npz holds the calibration samples
stacked on axis 0, one array per model input (Optimum's BERT export also takes token_type_ids).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

# the repository root instead of this script's directory, where benchmarks/transformers.py would shadow the package
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from benchmarks.optimum_peer import _NpzSamples, build_optimum_avx2  # noqa: E402

LEVELS = ("O2", "O3")


def optimum_builds(model_dir: Path, calib: Path, out: Path) -> dict[str, str]:
    """Export with Optimum, optimize at O2 and O3, quantize O3 with the avx2 preset: {row: path}."""
    from optimum.exporters.onnx import main_export
    from optimum.onnxruntime import ORTOptimizer
    from optimum.onnxruntime.configuration import AutoOptimizationConfig

    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}
    with tempfile.TemporaryDirectory(dir=out, prefix=".optimum-") as work:
        exported = Path(work) / "export"
        main_export(str(model_dir), output=exported, task="feature-extraction", device="cpu")
        for level in LEVELS:
            saved = Path(work) / level
            optimizer = ORTOptimizer.from_pretrained(exported, file_names=["model.onnx"])
            optimizer.optimize(save_dir=saved, optimization_config=getattr(AutoOptimizationConfig, level)())
            target = out / f"{level.lower()}.onnx"
            shutil.copy(saved / "model_optimized.onnx", target)
            shutil.copy(exported / "config.json", out / "config.json")  # the quantizer reads the directory
            paths[level.lower()] = str(target)
        paths["o3_avx2"] = str(build_optimum_avx2(out / "o3.onnx", _NpzSamples(calib), out / "o3_avx2.onnx"))
    return paths


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(optimum_builds(*map(Path, argv))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
