"""The QDQ pass's default cross-layer equalization on per-channel weights, against it off, on trained models.

    python -m benchmarks.cle_default

Until this stop `cle=auto` did not run on per-channel weights (ONNX Runtime's default), which is what `cle=off`
builds now. Models: the trained digits CNN, its planted-outlier variant (benchmarks/qat.py: a few channels of
the first block 128x wider, the next layer's weights on them 128x smaller, the same float function), the
depthwise-separable digits CNN (benchmarks/ptq_algorithms.py) and the digits encoder. ONNX Runtime int8 at its
defaults but `measure=false`, 256 calibration images; top-1 and mean cosine to PyTorch FP32 on the 497 held-out
digits; what CLE kept. Results: benchmarks/results/cle-default-<machine>-<date>.{md,json}.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.run_suite import write_dated_results

HERE = Path(__file__).resolve().parent
MODELS = {"digits CNN": "modelport.examples:digits_cnn",
          "planted-outlier digits CNN": f"{HERE}/qat.py:outlier_digits_cnn",
          "depthwise digits CNN": f"{HERE}/ptq_algorithms.py:depthwise_cnn",
          "digits encoder": "modelport.examples:digits_transformer"}
MODES = {"cle=off (the old per-channel default)": "off", "cle=auto (the default now)": "auto"}


def measure(factory: str, mode: str, work: Path) -> dict[str, Any]:
    import torch

    from modelport.builder import build_artifact
    from modelport.bundle import ModelBundle
    from modelport.calibration import open_calibration
    from modelport.examples import digits_data
    from modelport.loading import load_artifact
    from modelport.machine import cache_dir
    from modelport.model import load_model

    x, y = digits_data("test")
    source = load_model(factory, dynamic=["x:0=batch"])
    calibration = open_calibration("modelport.examples:digits_calibration", source.inputs, size=256)
    bundle = ModelBundle(source, onnx_dir=work / "onnx")
    assert bundle.onnx_path.is_file()  # exported before the clock starts: build seconds are the quantization's
    shutil.rmtree(cache_dir() / "qdq", ignore_errors=True)  # and no build reuses another's ranges and algorithms
    start = time.perf_counter()
    artifact, _ = build_artifact(bundle, "onnxruntime", "int8", work / mode,
                                 options={"measure": "false", "cle": mode}, calibration=calibration, force=True)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        ref = source.module(torch.from_numpy(x)).numpy()
    with load_artifact(work / mode) as runner:
        got = np.concatenate([next(iter(runner.run({"x": x[i:i + 64]}).values())) for i in range(0, len(x), 64)])
    cos = np.sum(ref * got, 1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
    chains = _cle_record(artifact.manifest["details"])
    return {"top1": round(float((got.argmax(1) == y).mean() * 100), 2), "cosine": round(float(cos.mean()), 5),
            "build_s": round(seconds, 1), "chains_kept": sum(c["kept"] for c in chains), "chains": len(chains)}


def _cle_record(node: Any) -> list[dict[str, Any]]:
    """The chains CLE measured, wherever the backend's details nest the QDQ pass's `algorithms` record."""
    if isinstance(node, dict):
        algorithms = node.get("algorithms")
        if isinstance(algorithms, dict) and isinstance(algorithms.get("cle"), list):
            return algorithms["cle"]
        return next((found for v in node.values() if (found := _cle_record(v))), [])
    return []


def main() -> None:
    import torch

    from modelport.machine import machine_summary

    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="cle-default-") as tmp:
        for name, factory in MODELS.items():
            for label, mode in MODES.items():
                work = Path(tmp) / name.replace(" ", "-")
                rows.append({"model": name, "cle": label, **measure(factory, mode, work)})
                print(rows[-1], flush=True)
    machine = machine_summary()
    table = [f"Measured on {machine['cpu']} ({machine['cores']} cores, {', '.join(machine['flags'])}) with "
             "`python -m benchmarks.cle_default`: ONNX Runtime int8, per-channel weights (its default here), "
             "256 calibration images, scored on the 497 held-out digits against PyTorch FP32.", "",
             "| model | CLE | top-1 % | cosine | chains kept | build s |", "|---|---|---|---|---|---|"]
    table += [f"| {r['model']} | {r['cle']} | {r['top1']:.2f} | {r['cosine']:.5f} | {r['chains_kept']} of "
              f"{r['chains']} | {r['build_s']} |" for r in rows]
    path = write_dated_results("cle-default", "Cross-layer equalization by default on per-channel weights",
                               "\n".join(table), machine, {"rows": rows})
    print(path.read_text())


if __name__ == "__main__":
    main()
