"""TensorRT: what runs everywhere (availability, profiles, options, the graphs handed to the parser), and
engines built and run for real where an NVIDIA GPU and TensorRT are present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from modelport.backends import get_backend
from modelport.backends.tensorrt import parse_profile, prepare_network_onnx, profile_shapes
from modelport.bundle import ModelBundle
from modelport.calibration import CalibrationSet
from modelport.cli import app
from modelport.errors import BadInput
from modelport.examples import digits_data
from modelport.ort_session import ort_session
from modelport.specs import TensorSpec

backend = get_backend("tensorrt")
AVAILABLE, REASON = backend.available()
gpu = pytest.mark.skipif(not AVAILABLE, reason=f"TensorRT backend unavailable: {REASON}")


def _session_outputs(path: Path, feeds: dict) -> np.ndarray:
    return ort_session(path).run(None, feeds)[0]


@pytest.mark.skipif(AVAILABLE, reason="this machine has a GPU and TensorRT")
def test_unavailable_says_what_is_missing():
    assert not AVAILABLE
    assert "tensorrt" in REASON or "GPU" in REASON or "CUDA" in REASON
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert "modelport[tensorrt]" in REASON


@pytest.mark.skipif(AVAILABLE, reason="this machine has a GPU and TensorRT")
def test_build_without_gpu_fails_with_the_reason_and_exit_code_2(tmp_path):
    result = CliRunner().invoke(app, ["build", "modelport.examples:digits_cnn", "--backend", "tensorrt",
                                      "--precision", "fp16", "-o", str(tmp_path / "engine")])
    assert result.exit_code == 2, result.output
    assert "tensorrt backend is not available" in " ".join(result.output.split())
    assert not (tmp_path / "engine").exists()


def test_profile_defaults_span_batch_one_to_32_and_other_dims_to_their_example():
    specs = [TensorSpec("ids", ("batch", "seq"), "int64"), TensorSpec("mask", ("batch", "seq"), "int64")]
    shapes = profile_shapes(specs, {"ids": (2, 64), "mask": (2, 64)})
    assert shapes["ids"] == ((1, 1), (2, 64), (32, 64))
    assert shapes["mask"] == shapes["ids"]


def test_profile_overrides_apply_to_every_input_sharing_the_dim():
    specs = [TensorSpec("x", ("batch", 3, 224, 224))]
    shapes = profile_shapes(specs, {"x": (1, 3, 224, 224)}, parse_profile("batch=1:8:64"))
    assert shapes["x"] == ((1, 3, 224, 224), (8, 3, 224, 224), (64, 3, 224, 224))


def test_profile_for_a_dim_the_model_lacks_is_bad_input():
    with pytest.raises(BadInput, match="does not have"):
        profile_shapes([TensorSpec("x", ("batch", 4))], {"x": (1, 4)}, {"seq": (1, 2, 3)})


@pytest.mark.parametrize("text", ["batch=8:1:32", "batch=0:1:2", "batch:1:2:3", "batch=1:2"])
def test_malformed_profiles_are_rejected_as_options(text):
    with pytest.raises(BadInput, match="profile"):
        backend.recipe("fp16", {"profile": text})


def test_options_are_validated():
    with pytest.raises(BadInput, match="Unknown option"):
        backend.recipe("fp32", {"per_channel": "true"})
    with pytest.raises(BadInput, match="not one of"):
        backend.recipe("fp32", {"optimization_level": "9"})
    with pytest.raises(BadInput, match="does not build 'int8-dynamic'"):
        backend.recipe("int8-dynamic")
    recipe = backend.recipe("int8", {"exclude": "Gemm,conv1", "workspace_mb": "512"})
    assert recipe.options["exclude"] == ("Gemm", "conv1") and recipe.options["workspace_mb"] == 512


def test_fp16_graph_keeps_float32_io_and_matches_the_float_model(tmp_path, digits):
    bundle = ModelBundle(digits)
    path, details = prepare_network_onnx(bundle.onnx_path, backend.recipe("fp16"), None, tmp_path)
    model = onnx.load(str(path))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    images, _ = digits_data("test")
    feeds = {"x": images[:16]}
    np.testing.assert_allclose(_session_outputs(path, feeds), _session_outputs(bundle.onnx_path, feeds),
                               atol=2e-2, rtol=2e-2)
    assert details["graph"] == "float16 with float32 I/O"


def test_int8_graph_is_the_shared_qdq_model_symmetric_and_per_channel(tmp_path, digits):
    bundle = ModelBundle(digits)
    images, labels = digits_data("train")
    calibration = CalibrationSet.from_arrays({"x": images}, digits.inputs, labels=labels, size=128)
    path, details = prepare_network_onnx(bundle.onnx_path, backend.recipe("int8"), calibration, tmp_path)
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    quant = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert quant, "no Q/DQ nodes in the graph handed to TensorRT"
    for node in quant:  # activations: int8 with zero point 0 (symmetric)
        zero_point = inits[node.input[2]]
        assert zero_point.dtype == np.int8 and not zero_point.any()
    per_channel = [n for n in model.graph.node if n.op_type == "DequantizeLinear"
                   and n.input[0] in inits and inits[n.input[1]].size > 1]
    assert per_channel, "weights are not quantized per channel"
    assert details["calibration_samples"] == 128


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_engines_keep_the_digits_accuracy(tmp_path, digits, precision):
    from modelport.builder import build_artifact
    from modelport.loading import load_artifact

    train_x, train_y = digits_data("train")
    calibration = CalibrationSet.from_arrays({"x": train_x}, digits.inputs, labels=train_y, size=256)
    artifact, _ = build_artifact(ModelBundle(digits), "tensorrt", precision, tmp_path / precision,
                                 calibration=calibration)
    assert (artifact.path / "timing.cache").is_file()
    images, labels = digits_data("test")
    reference = digits.run({"x": images})["output"]
    with load_artifact(artifact.path) as runner:
        got = np.concatenate([runner.run({"x": images[i:i + 32]})["output"] for i in range(0, len(images), 32)])
    ref_acc = (reference.argmax(1) == labels).mean()
    assert (got.argmax(1) == labels).mean() >= ref_acc - 0.01
    if precision == "fp32":
        np.testing.assert_allclose(got, reference, rtol=1e-3, atol=1e-3)
