"""Pre-processing before anything is measured: shape inference and ORT's basic graph optimization
(`quant_pre_process`), falling back step by step, and unique node names."""

from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path

from modelport.quantize.graph import name_nodes


def pre_process(src: Path, dst: Path, **flags: bool) -> None:
    """ORT's `quant_pre_process` in a scratch working directory: when its symbolic shape inference fails it writes
    sym_shape_infer_temp.onnx (and the model's weights) into the current one."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, dst = Path(src).resolve(), Path(dst).resolve()
    with tempfile.TemporaryDirectory(prefix="modelport-prepare-") as scratch, contextlib.chdir(scratch):
        quant_pre_process(str(src), str(dst), **flags)


def prepare(src: Path, dst: Path, preprocess: bool) -> str:
    """Write the float model the pass measures and quantizes at `dst`; return how it was prepared."""
    import onnx

    attempts: list[tuple[str, dict[str, bool]]] = [
        ("symbolic shape inference + optimization + ONNX shape inference", {}),
        ("optimization + ONNX shape inference", {"skip_symbolic_shape": True}),
    ] if preprocess else []
    for label, flags in attempts:
        try:
            pre_process(src, dst, **flags)
            how = label
            break
        except Exception as exc:  # symbolic shape inference does not know every op; try the next level down
            logging.getLogger(__name__).debug("pre-processing (%s) failed: %s", label, exc)
    else:
        model = onnx.shape_inference.infer_shapes(onnx.load(str(src)))
        onnx.save(model, str(dst))
        how = "ONNX shape inference"
    model = onnx.load(str(dst))
    name_nodes(model)
    onnx.save(model, str(dst))
    return how
