"""TensorRT: serialized engines from the validated ONNX file, for NVIDIA GPUs.

Precision lives in the graph, not in builder flags: TensorRT 10.12 deprecated weak typing and 11.x removed
it (BuilderFlag.FP16/INT8 and implicit INT8 calibration are gone). So fp16 parses an ONNX file converted to
float16 (float32 I/O kept), and int8 parses the explicit Q/DQ model that `modelport/quantize/` writes from
the shared calibration set, with symmetric activations and per-channel weights as TensorRT's explicit
quantization expects; the network is always created strongly typed.

Nothing here imports tensorrt or touches CUDA at module import: without a GPU or without TensorRT,
`available()` says which is missing and nothing else runs.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from modelport.backends.base import Backend, Recipe, Runner
from modelport.errors import BadInput, StepFailed, Unavailable
from modelport.machine import cache_dir
from modelport.options import Option, parse_list
from modelport.quantize import QdqSettings, write_qdq_model
from modelport.specs import TensorSpec

ProfileShapes = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]
DEFAULT_MAX_BATCH = 32


def parse_profile(text: str | Mapping[str, Sequence[int]]) -> dict[str, tuple[int, int, int]]:
    """`batch=1:8:32,seq=16:128:256` -> {dim: (min, opt, max)}."""
    if isinstance(text, Mapping):
        items = {k: tuple(int(x) for x in v) for k, v in text.items()}
    else:
        items = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            m = re.fullmatch(r"([A-Za-z_]\w*)=(\d+):(\d+):(\d+)", part)
            if not m:
                raise ValueError(f"cannot read {part!r}; write DIM=MIN:OPT:MAX, e.g. batch=1:8:32")
            items[m.group(1)] = (int(m.group(2)), int(m.group(3)), int(m.group(4)))
    for dim, (lo, opt, hi) in items.items():
        if not 1 <= lo <= opt <= hi:
            raise ValueError(f"{dim} needs 1 <= min <= opt <= max, got {lo}:{opt}:{hi}")
    return items  # type: ignore[return-value]


def profile_shapes(specs: Sequence[TensorSpec], example_shapes: Mapping[str, Sequence[int]],
                   overrides: Mapping[str, tuple[int, int, int]] | None = None) -> ProfileShapes:
    """Min/opt/max shapes per input for one optimization profile.

    A symbolic dim takes the user's range where given. Otherwise a batch axis (axis 0) spans 1 to
    max(32, example) with the example size as optimum, and any other symbolic dim spans 1 to its example
    size: a longer sequence than the example was never seen, and a generous max costs memory on every layer.
    """
    overrides = dict(overrides or {})
    known = {d for s in specs for d in s.dynamic_axes.values()}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise BadInput(f"profile names dims {unknown} the model does not have.",
                       hint=f"The model's symbolic dims are {sorted(known) or 'none'}.")
    ranges: dict[str, tuple[int, int, int]] = dict(overrides)
    for spec in specs:
        for axis, dim in spec.dynamic_axes.items():
            if dim in ranges:
                continue
            example = int(example_shapes[spec.name][axis])
            ranges[dim] = (1, example, max(DEFAULT_MAX_BATCH, example)) if axis == 0 else (1, example, example)
    out: ProfileShapes = {}
    for spec in specs:
        shapes = []
        for i in range(3):
            shapes.append(tuple(d if isinstance(d, int) else ranges[d][i] for d in spec.shape))
        out[spec.name] = (shapes[0], shapes[1], shapes[2])
    return out


def gpu_status() -> tuple[bool, str]:
    """Whether an NVIDIA GPU is usable from this process (TensorRT's runner takes CUDA memory from torch)."""
    import torch

    if torch.version.cuda is None:
        return False, f"no NVIDIA GPU usable: this torch build ({torch.__version__}) has no CUDA support"
    if not torch.cuda.is_available():
        return False, "no NVIDIA GPU found (torch.cuda.is_available() is False)"
    return True, torch.cuda.get_device_name(0)


def prepare_network_onnx(onnx_path: Path, recipe: Recipe, calibration: Any, workdir: Path) -> tuple[Path, dict]:
    """The ONNX file the parser reads for this precision, and what was done to make it."""
    precision, opts = recipe.precision, recipe.options
    if precision == "fp32":
        return onnx_path, {"graph": "float32 as exported"}
    if precision == "fp16":
        from modelport.onnx_fp16 import convert_to_fp16

        out = workdir / "model_fp16.onnx"
        result = convert_to_fp16(onnx_path, out, exclude=opts.get("exclude") or ())
        return out, {"graph": "float16 with float32 I/O", "kept_fp32": result.kept_float,
                     "kept_fp32_nodes": result.kept_nodes}
    out = workdir / "model_qdq.onnx"
    settings = QdqSettings(method=opts["calibration_method"], per_channel=True, symmetric_activations=True,
                           exclude=opts.get("exclude") or (), ranges_file=opts.get("ranges_file"))
    result = write_qdq_model(onnx_path, calibration, out, settings)
    return out, {"graph": "explicit Q/DQ (symmetric int8 activations, per-channel int8 weights)",
                 "calibration_method": result.method, "calibration_samples": result.samples_seen,
                 "algorithms": result.algorithms}


class TensorRTBackend(Backend):
    name = "tensorrt"
    options = (
        Option(name="workspace_mb", help="Builder workspace limit in MiB (default: TensorRT's, the GPU's memory).",
               parse=int),
        Option(name="profile", help="Optimization profile per symbolic dim: DIM=MIN:OPT:MAX,... (e.g. batch=1:8:32).",
               parse=parse_profile),
        Option(name="optimization_level", help="Builder optimization level 0-5: higher searches longer for faster "
               "kernels.", default=3, parse=int, choices=(0, 1, 2, 3, 4, 5)),
        Option(name="exclude", help="Comma-separated node names or op types kept in higher precision.", default=(),
               parse=parse_list, precisions=("fp16", "int8")),
        QdqSettings.as_option("method", name="calibration_method"),
        QdqSettings.as_option("ranges_file"),
    )

    def available(self) -> tuple[bool, str]:
        missing = []
        ok, why = super().available()
        if not ok:
            missing.append(why)
        gpu_ok, gpu_why = gpu_status()
        if not gpu_ok:
            missing.append(gpu_why)
        return (False, "; ".join(missing)) if missing else (True, f"ok ({gpu_why})")

    def runnable(self) -> tuple[bool, str]:
        return self.available()

    def build(self, bundle: Any, recipe: Recipe, calibration: Any, out_dir: Path) -> dict[str, Any]:
        import tensorrt as trt
        import torch

        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        with tempfile.TemporaryDirectory(prefix="modelport-trt-") as work:
            onnx_file, graph_details = prepare_network_onnx(bundle.onnx_path, recipe, calibration, Path(work))
            if not parser.parse_from_file(str(onnx_file)):
                errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
                raise StepFailed(f"TensorRT's ONNX parser rejected the model: {'; '.join(errors)[:1500]}",
                                 hint="Exclude the failing node, or check the op against TensorRT's ONNX support.")
        config = builder.create_builder_config()
        if recipe.options.get("workspace_mb"):
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, recipe.options["workspace_mb"] << 20)
        config.builder_optimization_level = recipe.options["optimization_level"]
        source = bundle.source
        shapes = profile_shapes(source.inputs, {k: tuple(v.shape) for k, v in source.example_inputs.items()},
                                recipe.options.get("profile"))
        if any(s.dynamic_axes for s in source.inputs):
            profile = builder.create_optimization_profile()
            for name, (lo, opt, hi) in shapes.items():
                profile.set_shape(name, lo, opt, hi)
            config.add_optimization_profile(profile)
        gpu = torch.cuda.get_device_name(0)
        capability = _capability()
        cache_file = cache_dir() / "tensorrt" / f"timing-{trt.__version__}-sm{capability.replace('.', '')}.cache"
        cache = config.create_timing_cache(cache_file.read_bytes() if cache_file.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise StepFailed("TensorRT could not build an engine for this model (see its log above).")
        (out_dir / "model.engine").write_bytes(bytes(serialized))
        timing = bytes(config.get_timing_cache().serialize())
        (out_dir / "timing.cache").write_bytes(timing)
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp")
        tmp.write_bytes(timing)
        tmp.replace(cache_file)
        return {"main_file": "model.engine", "tensorrt": trt.__version__, "gpu": gpu,
                "compute_capability": capability, "strongly_typed": True,
                "profile": {k: [list(s) for s in v] for k, v in shapes.items()}, **graph_details}

    def load(self, artifact: Any, threads: int | None = None) -> Runner:
        return TensorRTRunner(artifact)


class TensorRTRunner(Runner):
    """One engine, one execution context, I/O in torch CUDA tensors; `run` returns after the stream syncs."""

    name = "tensorrt"

    def __init__(self, artifact: Any) -> None:
        import tensorrt as trt
        import torch

        details = artifact.details
        capability = _capability()
        if details.get("tensorrt") != trt.__version__ or details.get("compute_capability") != capability:
            raise Unavailable(
                f"This engine was built with TensorRT {details.get('tensorrt')} for compute capability "
                f"{details.get('compute_capability')}; this machine has TensorRT {trt.__version__} on "
                f"{torch.cuda.get_device_name(0)} ({capability}). Engines are not portable.",
                hint="Rebuild it here with `modelport build ... --backend tensorrt`.")
        self._torch = torch
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = runtime.deserialize_cuda_engine(artifact.main_file.read_bytes())
        if self._engine is None:
            raise StepFailed(f"TensorRT could not deserialize {artifact.main_file}.")
        self._context = self._engine.create_execution_context()
        self._stream = torch.cuda.Stream()
        self.inputs = artifact.inputs
        self.outputs = artifact.outputs
        self._profile = details["profile"]
        self._dtypes = {name: _torch_dtype(self._engine.get_tensor_dtype(name), trt)
                        for name in [s.name for s in self.inputs + self.outputs]}

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        keep = []
        for spec in self.inputs:
            t = torch.from_numpy(feeds[spec.name]).to("cuda", self._dtypes[spec.name])
            keep.append(t)
            if not self._context.set_input_shape(spec.name, tuple(t.shape)):
                lo, _, hi = self._profile[spec.name]
                raise BadInput(f"Input {spec.name!r} of shape {tuple(t.shape)} is outside the engine's profile "
                               f"(from {tuple(lo)} to {tuple(hi)}).",
                               hint="Rebuild with --option profile=DIM=MIN:OPT:MAX covering the shapes you feed.")
            self._context.set_tensor_address(spec.name, t.data_ptr())
        outs = {}
        for spec in self.outputs:
            shape = tuple(self._context.get_tensor_shape(spec.name))
            outs[spec.name] = torch.empty(shape, dtype=self._dtypes[spec.name], device="cuda")
            self._context.set_tensor_address(spec.name, outs[spec.name].data_ptr())
        self._stream.wait_stream(torch.cuda.current_stream())  # inputs were copied on the current stream
        with torch.cuda.stream(self._stream):
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise StepFailed("TensorRT execution failed.")
        self._stream.synchronize()
        return {name: t.float().cpu().numpy() if t.dtype == torch.float16 else t.cpu().numpy()
                for name, t in outs.items()}

    def _release(self) -> None:
        self._context = None
        self._engine = None


def _capability() -> str:
    import torch

    major, minor = torch.cuda.get_device_capability(0)
    return f"{major}.{minor}"


def _torch_dtype(dtype: Any, trt: Any) -> Any:
    import torch

    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
             trt.int64: torch.int64, trt.int8: torch.int8, trt.bool: torch.bool}
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    if dtype not in table:
        raise StepFailed(f"TensorRT tensor dtype {dtype} has no torch equivalent.")
    return table[dtype]
