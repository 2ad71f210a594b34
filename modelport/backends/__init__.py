"""The one table of backends: the CLI, the harness, the docs and the tests all read it.

Each entry says what the backend consumes, which precisions it builds, which extra installs it and
which modules must import for it to work. The backend classes are imported only when asked for.

To add a runtime: write `backends/NAME.py` with a `Backend` subclass (its `options` a tuple of keyword-built
`Option`s, `build` and `load`, runtime packages imported inside methods) and a `Runner` that implements `_run`
(`base.py` says the contract), then add one `BackendEntry` below. `tests/test_runner_contract.py` holds it to
the contract at once.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from modelport.backends.base import Backend, Recipe, Runner
from modelport.errors import BadInput
from modelport.options import PRECISIONS, Option


@dataclass(frozen=True, kw_only=True)
class BackendEntry:
    """One row of the table: a backend's name and class, what it consumes and builds, and what it needs."""

    name: str
    title: str
    module: str
    cls: str
    consumes: str  # "onnx" or "torch"
    precisions: tuple[str, ...]
    devices: tuple[str, ...]
    extra: str | None
    imports: tuple[str, ...]  # every one must import to build
    runtimes: tuple[str, ...]  # any one suffices to load and run an artifact
    packages: tuple[str, ...]
    artifact: str  # what a user gets, in words


BACKENDS: dict[str, BackendEntry] = {
    e.name: e
    for e in (
        BackendEntry(name="onnxruntime", title="ONNX Runtime", module="modelport.backends.onnxruntime",
                     cls="OnnxRuntimeBackend", consumes="onnx", precisions=PRECISIONS, devices=("cpu", "cuda"),
                     extra=None, imports=("onnxruntime",), runtimes=("onnxruntime",),
                     packages=("onnxruntime", "onnx"), artifact="model.onnx"),
        BackendEntry(name="openvino", title="OpenVINO", module="modelport.backends.openvino", cls="OpenVinoBackend",
                     consumes="onnx", precisions=PRECISIONS, devices=("cpu", "gpu", "npu"), extra="openvino",
                     imports=("openvino", "nncf"), runtimes=("openvino",), packages=("openvino", "nncf"),
                     artifact="model.xml + model.bin (IR)"),
        BackendEntry(name="tflite", title="TFLite (LiteRT)", module="modelport.backends.tflite", cls="TFLiteBackend",
                     consumes="torch", precisions=PRECISIONS, devices=("cpu",), extra="tflite",
                     imports=("litert_torch", "ai_edge_quantizer"), runtimes=("ai_edge_litert", "tflite_runtime"),
                     packages=("litert-torch", "ai-edge-quantizer", "ai-edge-litert"), artifact="model.tflite"),
        BackendEntry(name="tensorrt", title="TensorRT", module="modelport.backends.tensorrt", cls="TensorRTBackend",
                     consumes="onnx", precisions=("fp32", "fp16", "int8"), devices=("cuda",), extra="tensorrt",
                     imports=("tensorrt",), runtimes=("tensorrt",), packages=("tensorrt",), artifact="model.engine"),
    )
}


def get_backend(name: str) -> Backend:
    """The backend named `name`, its module imported now (runtime packages still load lazily)."""
    entry = BACKENDS.get(name)
    if entry is None:
        raise BadInput(f"Unknown backend {name!r}.", hint=f"Backends: {', '.join(BACKENDS)}.")
    module = importlib.import_module(entry.module)
    return getattr(module, entry.cls)()


def parse_backends(text: str) -> list[str]:
    """`all` or a comma-separated list of backend names, validated against the table."""
    names = list(BACKENDS) if text.strip() == "all" else [n.strip() for n in text.split(",") if n.strip()]
    for n in names:
        if n not in BACKENDS:
            raise BadInput(f"Unknown backend {n!r}.", hint=f"Backends: {', '.join(BACKENDS)}, or all.")
    return names


__all__ = ["BACKENDS", "PRECISIONS", "Backend", "BackendEntry", "Option", "Recipe", "Runner", "get_backend",
           "parse_backends"]
