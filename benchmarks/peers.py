"""Peers measured in the same run as modelport's rows: what users write by hand, and PyTorch's compiler.

The harness loads these as `--runner NAME=benchmarks/peers.py:FACTORY` rows, so they are timed and
compared with exactly the same code, data and thread pinning as every modelport artifact. The files
they run are built once by `build_peers` before the run and named in the PEERS environment variable,
which the harness's worker processes inherit.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from modelport.ort_session import ort_session as quiet_session

PEERS = "MODELPORT_BENCH_PEERS"
OPTIMUM_PYTHON = "MODELPORT_OPTIMUM_PYTHON"  # the interpreter of the venv that holds optimum-onnx (make optimum-venv)
DEFAULT_OPTIMUM_VENV = Path(__file__).resolve().parent.parent / ".venv-optimum"


def _config() -> dict[str, Any]:
    return json.loads(os.environ[PEERS])


def build_ort_static_defaults(onnx_path: Path, calibration: Any, out: Path) -> Path:
    """`onnxruntime.quantization.quantize_static` at its defaults, fed the same calibration samples."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.samples = calibration.samples()

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.samples, None)

    quantize_static(str(onnx_path), str(out), Reader())
    return out


def build_ort_dynamic_defaults(onnx_path: Path, calibration: Any, out: Path) -> Path:
    """`onnxruntime.quantization.quantize_dynamic` at its defaults (it takes no calibration)."""
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(str(onnx_path), str(out))
    return out


def build_nncf_defaults(onnx_path: Path, calibration: Any, out: Path, **options: Any) -> Path:
    """`nncf.quantize` at its defaults (or `options`, e.g. model_type) on the IR converted from the same ONNX file."""
    import nncf
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    quantized = nncf.quantize(model, nncf.Dataset(list(calibration.samples())),
                              subset_size=len(calibration), **options)
    ov.save_model(quantized, str(out))
    return out


def build_nncf_transformer(onnx_path: Path, calibration: Any, out: Path) -> Path:
    """`nncf.quantize` with the preset NNCF documents for transformers (`model_type=ModelType.TRANSFORMER`)."""
    import nncf

    return build_nncf_defaults(onnx_path, calibration, out, model_type=nncf.ModelType.TRANSFORMER)


def build_optimum_avx2(onnx_path: Path, calibration: Any, out: Path) -> Path:
    """Optimum's `ORTQuantizer` with its avx2 static preset, run in its own venv (optimum-onnx pins
    transformers<4.58): the samples go over as an .npz, the quantized file comes back and is timed here."""
    import subprocess

    from modelport.harness.reference import stack

    python = Path(os.environ.get(OPTIMUM_PYTHON, DEFAULT_OPTIMUM_VENV / "bin" / "python"))
    if not python.is_file():
        raise FileNotFoundError(f"no Optimum venv at {python} (make optimum-venv, or set {OPTIMUM_PYTHON})")
    npz = out.with_suffix(".calib.npz")
    np.savez(npz, **stack(calibration))
    script = Path(__file__).resolve().parent / "optimum_peer.py"
    # -P: the script's folder is not put on sys.path, where benchmarks/transformers.py would shadow the package
    done = subprocess.run([str(python), "-P", str(script), str(onnx_path), str(npz), str(out)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the Optimum peer failed: {done.stderr.strip().splitlines()[-1:]}")
    return out


class _Session:
    def __init__(self, session: Any, names: list[str]) -> None:
        self.session = session
        self.names = names

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.names, self.session.run(self.names, dict(feeds)), strict=True))


def ort_session(path: str, threads: int) -> _Session:
    """An ONNX Runtime CPU session of `path` with pinned threads."""
    session = quiet_session(path, threads=threads)
    return _Session(session, [o.name for o in session.get_outputs()])


def ort_static_defaults(threads: int) -> _Session:
    return ort_session(_config()["ort_static_defaults"], threads)


def optimum_avx2(threads: int) -> _Session:
    return ort_session(_config()["optimum_avx2"], threads)


class _OpenVino:
    def __init__(self, compiled: Any) -> None:
        self.request = compiled.create_infer_request()
        self.names = [o.get_any_name() for o in compiled.outputs]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = self.request.infer(dict(feeds))
        return {n: np.asarray(v) for n, v in zip(self.names, result.values(), strict=True)}


def openvino_session(path: str, threads: int) -> _OpenVino:
    """An OpenVINO IR compiled for the CPU with pinned threads and the latency hint."""
    import openvino as ov

    compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"})
    return _OpenVino(compiled)


def nncf_defaults(threads: int) -> _OpenVino:
    return openvino_session(_config()["nncf_defaults"], threads)


class _Compiled:
    def __init__(self, module: Any, names: list[str], inputs: list[str]) -> None:
        self.module = module
        self.names = names
        self.inputs = inputs

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from modelport.model import flatten_outputs

        with torch.inference_mode():
            out = self.module(*(torch.from_numpy(np.asarray(feeds[n])) for n in self.inputs))
        return {n: t.numpy() for n, t in zip(self.names, flatten_outputs(out), strict=True)}


def torch_compile(threads: int) -> _Compiled:
    """`torch.compile` (inductor, CPU) of the same module; compilation happens in the harness's warm-up."""
    import torch

    from modelport.model import load_model

    torch.set_num_threads(threads)
    source = load_model(_config()["model"])
    compiled = torch.compile(source.module, dynamic=False)
    return _Compiled(compiled, source.output_names, source.input_names)
