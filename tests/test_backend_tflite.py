"""The TFLite (LiteRT) backend end to end: build_artifact -> manifest -> load_artifact -> Runner, per precision.

Real litert-torch, ai-edge-quantizer and LiteRT interpreter on the trained digits CNN and a small MLP.
Artifacts are built once per module and shared: conversion and calibration are the slow parts.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("litert_torch", reason="litert-torch is not installed (pip install 'modelport[tflite]')")
pytest.importorskip("ai_edge_quantizer", reason="ai-edge-quantizer is not installed (pip install 'modelport[tflite]')")
pytest.importorskip("ai_edge_litert", reason="ai-edge-litert is not installed (pip install 'modelport[tflite]')")

from modelport.backends import tflite
from modelport.builder import build_artifact
from modelport.bundle import ModelBundle
from modelport.calibration import CalibrationSet
from modelport.errors import BadInput, StepFailed
from modelport.examples import digits_data
from modelport.exporters.litert import convert_to_tflite
from modelport.loading import load_artifact
from modelport.model import load_model
from tests.models import DETERMINANT

PRECISIONS = ("fp32", "fp16", "int8-dynamic", "int8")

MLP = """
def make():
    from modelport.examples import digits_data

    torch.manual_seed(0)
    x, y = (torch.from_numpy(a) for a in digits_data("train"))
    x = x.reshape(len(x), -1)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(80):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), {"pixels": x[:1]}
"""

# CREPE's first layer: a conv from one input channel over a long window (TFLite: DEPTHWISE_CONV_2D fed one channel)
SINGLE_CHANNEL_CONV = """
class Layer(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 128, (512, 1), (4, 1))

    def forward(self, x):
        return torch.relu(self.conv(nn.functional.pad(x[:, None, :, None], (0, 0, 254, 254))))


def make():
    return Layer().eval(), {"x": torch.randn(1, 1024)}
"""


def accuracy(runner, images: np.ndarray, labels: np.ndarray, name: str = "x") -> float:
    return float((runner.run({name: images})["output"].argmax(1) == labels).mean())


@pytest.fixture(scope="module")
def digits_calibration(digits):
    images, labels = digits_data("train")
    return CalibrationSet.from_arrays({"x": images}, digits.inputs, labels=labels)


@pytest.fixture(scope="module")
def digits_builds(digits, digits_calibration, tmp_path_factory):
    """Every precision of the digits CNN, plus INT8 with integer I/O, INT8 with ops=mixed and FP32 with NHWC
    inputs; INT8 unmeasured, so every conv int8 whatever the machine times (test_measure_* specify the measured
    choice)."""
    root = tmp_path_factory.mktemp("tflite-digits")
    bundle = ModelBundle(digits)
    plan = {p: (p, {"measure": "false"} if p.startswith("int8") else {}) for p in PRECISIONS}
    plan["int8-io"] = ("int8", {"io": "int8", "measure": "false"})
    plan["int8-mixed"] = ("int8", {"ops": "mixed", "measure": "false"})
    plan["fp32-nhwc"] = ("fp32", {"layout": "nhwc"})
    return {key: build_artifact(bundle, "tflite", precision, root / key, options=options,
                                calibration=digits_calibration)[0]
            for key, (precision, options) in plan.items()}


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    path = tmp_path_factory.mktemp("mlp") / "mlp.py"
    path.write_text("import torch\nfrom torch import nn\n" + MLP)
    return load_model(f"{path}:make", dynamic=["pixels:0=batch"])


@pytest.fixture(scope="module")
def mlp_builds(mlp, tmp_path_factory):
    """Every precision of an MLP trained on the flattened digits, calibrated on 200 training images."""
    root = tmp_path_factory.mktemp("tflite-mlp")
    images, _ = digits_data("train")
    calibration = CalibrationSet.from_arrays({"pixels": images.reshape(len(images), -1)}, mlp.inputs, size=200)
    return {p: build_artifact(ModelBundle(mlp), "tflite", p, root / p, calibration=calibration)[0] for p in PRECISIONS}


@pytest.mark.parametrize("precision", PRECISIONS)
def test_every_precision_classifies_held_out_digits(digits_builds, digits_test_data, precision):
    images, labels = digits_test_data
    artifact = digits_builds[precision]
    assert artifact.manifest["backend"] == "tflite" and artifact.precision == precision
    assert artifact.main_file.name == "model.tflite"
    with load_artifact(artifact.path, threads=2) as runner:
        assert accuracy(runner, images, labels) >= 0.95


def test_fp32_matches_torch_on_held_out_digits(digits, digits_builds, digits_test_data):
    images, _ = digits_test_data
    expected = digits.run({"x": images})["output"]
    got = load_artifact(digits_builds["fp32"].path, threads=2).run({"x": images})["output"]
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_int8_keeps_digits_accuracy_within_one_point_of_fp32(digits_builds, digits_test_data):
    images, labels = digits_test_data
    fp32 = accuracy(load_artifact(digits_builds["fp32"].path, threads=2), images, labels)
    int8 = accuracy(load_artifact(digits_builds["int8"].path, threads=2), images, labels)
    assert int8 >= fp32 - 0.01


def test_every_calibration_sample_reaches_the_quantizer(digits_builds, digits_calibration):
    artifact = digits_builds["int8"]
    assert artifact.details["samples_calibrated"] == len(digits_calibration) == 1300
    assert artifact.manifest["calibration"]["samples"] == 1300
    assert artifact.manifest["calibration"]["fingerprint"] == digits_calibration.fingerprint


def _op_types(artifact, op_type: str) -> list[list[str]]:
    """Each `op_type` op's input and output tensor types, in execution order."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(artifact.main_file))
    sg = model.subgraphs[0]
    return [[flatbuffer_utils.type_to_name(sg.tensors[i].type) for i in [*op.inputs, *op.outputs] if i >= 0]
            for op in sg.operators if flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) == op_type]


def test_int8_is_full_integer_with_float_io_by_default(digits_builds):
    details = digits_builds["int8"].details
    assert details["io"] == "float32"
    assert details["signature_inputs"]["args_0"]["dtype"] == "float32"
    assert details["signature_outputs"]["output"]["dtype"] == "float32"
    assert details["ops"]["QUANTIZE"] == 1 and details["ops"]["DEQUANTIZE"] == 1
    assert details["tensors_by_dtype"]["FLOAT32"] == 2  # the model's input and output; everything inside is int
    assert details["float_ops"] == {"QUANTIZE": 1}  # the float input's; every other op takes int8
    assert details["int8_op_set"]["chosen"] == "all" and details["int8_op_set"]["transformer_markers"] == {}
    assert "no attention or layer norm" in details["int8_op_set"]["reason"]
    assert details["ranges"]["chosen"] == "minmax" and "every calibration sample" in details["ranges"]["reason"]


def test_ops_mixed_runs_convs_in_int8_and_the_fcs_dynamically_quantized(digits_builds):
    details = digits_builds["int8-mixed"].details
    assert details["int8_op_set"]["chosen"] == "mixed" and details["int8_op_set"]["reason"] == "ops=mixed was asked for"
    assert details["int8_op_set"]["float_outputs"] == []  # the last FC writes the output itself
    assert _op_types(digits_builds["int8-mixed"], "CONV_2D") == [["INT8", "INT8", "INT32", "INT8"]]
    # float input, int8 weights, float bias, float output: XNNPACK's dynamically-quantized FC
    assert _op_types(digits_builds["int8-mixed"], "FULLY_CONNECTED") == [["FLOAT32", "INT8", "FLOAT32", "FLOAT32"]] * 2
    assert "quantized per row at run time" in details["compute"]


def test_ops_mixed_keeps_closer_to_torch_than_full_integer_on_the_digits(digits, digits_builds, digits_test_data):
    """The FCs' 8-bit outputs (logits) are full-integer's loss here: about 41 dB SQNR against about 44."""
    from modelport.similarity import array_sqnr_db

    images, _ = digits_test_data
    reference = digits.run({"x": images})["output"]
    runs = {key: load_artifact(digits_builds[key].path, threads=2).run({"x": images}) for key in ("int8", "int8-mixed")}
    sqnr = {key: array_sqnr_db(reference, out["output"]) for key, out in runs.items()}
    assert sqnr["int8-mixed"] > sqnr["int8"] + 1.5, sqnr


def test_int8_io_round_trips_through_the_tensor_scale_and_zero_point(digits_builds, digits_test_data):
    images, labels = digits_test_data
    integer, floating = digits_builds["int8-io"], digits_builds["int8"]
    signature = integer.details["signature_inputs"]["args_0"]
    assert signature["dtype"] == "int8" and signature["scale"] > 0
    assert integer.details["signature_outputs"]["output"]["dtype"] == "int8"
    assert "QUANTIZE" not in integer.details["ops"]
    out = load_artifact(integer.path, threads=2).run({"x": images})["output"]
    assert out.dtype == np.float32
    reference = load_artifact(floating.path, threads=2).run({"x": images})["output"]
    step = integer.details["signature_outputs"]["output"]["scale"]
    np.testing.assert_allclose(out, reference, atol=step * 1.01)
    assert (out.argmax(1) == labels).mean() >= 0.95


def test_fp16_stores_weights_in_fp16_and_says_how_it_computes(digits_builds):
    fp16, fp32 = digits_builds["fp16"], digits_builds["fp32"]
    assert fp16.details["tensors_by_dtype"]["FLOAT16"] == 4  # two conv and two linear weights
    assert fp16.details["ops"]["DEQUANTIZE"] == 4
    assert "computes in FP32" in fp16.details["compute"]
    assert fp16.size_bytes < 0.6 * fp32.size_bytes


def test_int8_dynamic_quantizes_the_linear_weights_and_keeps_float_activations(digits_builds):
    details = digits_builds["int8-dynamic"].details
    assert details["tensors_by_dtype"]["INT8"] == 2  # the two linear weights
    assert details["int8_ops"] == {"FULLY_CONNECTED": 2}
    assert "QUANTIZE" not in details["ops"]
    assert details["signature_inputs"]["args_0"]["dtype"] == "float32"


def delegates(artifact) -> int:
    runner = load_artifact(artifact.path, threads=1)
    return sum(op["op_name"] == "DELEGATE" for op in runner._main.interpreter._get_ops_details())


def test_int8_dynamic_convs_stay_float_so_xnnpack_runs_the_whole_model(digits_builds):
    details = digits_builds["int8-dynamic"].details
    assert details["float_ops"]["CONV_2D"] == 1 and details["float_ops"]["DEPTHWISE_CONV_2D"] == 1
    assert "convolutions stay FP32" in details["compute"]
    assert delegates(digits_builds["int8-dynamic"]) == 1  # int8-weight convs would leave XNNPACK: two partitions
    assert delegates(digits_builds["int8"]) == 1


@pytest.fixture(scope="module")
def single_channel(tmp_path_factory):
    """CREPE's first layer as INT8, measured (the default) and not (full-integer), from one calibration set."""
    path = tmp_path_factory.mktemp("single") / "layer.py"
    path.write_text("import torch\nfrom torch import nn\n" + SINGLE_CHANNEL_CONV)
    source = load_model(f"{path}:make")
    calibration = CalibrationSet.from_arrays(
        {"x": np.random.default_rng(0).standard_normal((100, 1024)).astype(np.float32)}, source.inputs)
    root = tmp_path_factory.mktemp("tflite-single")
    builds = {key: build_artifact(ModelBundle(source), "tflite", "int8", root / key, options=options,
                                  calibration=calibration)[0]
              for key, options in (("measured", {}), ("unmeasured", {"measure": "false"}))}
    return source, builds


def test_measure_times_both_int8_forms_and_keeps_a_single_channel_conv_fp32_where_faster(single_channel):
    _, builds = single_channel
    latency, plan = builds["measured"].details["latency"], builds["measured"].details["int8_op_set"]
    times = latency["candidates_ms"]
    assert set(times) == {tflite.FULL, tflite.KEPT}
    # the faster form ships: on x86 without VNNI XNNPACK's int8 kernel for it took 2-4x the float one's time; on
    # a CPU with AVX512-VNNI 1.9x (timings are the build's own, which is all this test reads)
    faster = min(times, key=times.__getitem__)
    assert latency["chosen"] == faster and latency["artifact_ms"] == times[faster]
    kept = ["DEPTHWISE_CONV_2D"] if faster == tflite.KEPT else []
    assert [op["op"] for op in plan["kept_float"]] == kept
    assert builds["measured"].details["float_ops"].get("DEPTHWISE_CONV_2D", 0) == len(kept)
    assert latency["speedup"] == pytest.approx(latency["fp32_ms"] / latency["artifact_ms"], rel=1e-2)
    assert (latency["warning"] is not None) == (latency["speedup"] < tflite.SLOWER_THAN_FP32)
    assert builds["measured"].details.get("warning") == latency["warning"]


def test_unmeasured_int8_stays_full_integer(single_channel):
    details = single_channel[1]["unmeasured"].details
    assert "latency" not in details and details["int8_op_set"]["kept_float"] == []
    assert details["float_ops"] == {"QUANTIZE": 1}


def _input_range(artifact) -> tuple[float, float]:
    """The float range the int8 tensor the model's QUANTIZE writes from its input can hold."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(artifact.main_file))
    sg = model.subgraphs[0]
    op = next(op for op in sg.operators if flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) == "QUANTIZE")
    q = sg.tensors[op.outputs[0]].quantization
    scale, zero = float(q.scale[0]), int(q.zeroPoint[0])
    return (-128 - zero) * scale, (127 - zero) * scale


def test_activation_ranges_are_the_min_and_max_over_every_calibration_sample(single_channel, tmp_path):
    source, builds = single_channel
    x = np.random.default_rng(0).standard_normal((100, 1024)).astype(np.float32)  # the fixture's calibration
    average = build_artifact(ModelBundle(source), "tflite", "int8", tmp_path / "average",
                             calibration=CalibrationSet.from_arrays({"x": x}, source.inputs),
                             options={"measure": "false", "ranges": "moving-average"})[0]
    low, high = _input_range(builds["unmeasured"])
    assert builds["unmeasured"].details["ranges"]["chosen"] == "minmax"
    assert low <= x.min() + 0.05 and high >= x.max() - 0.05, (low, high, x.min(), x.max())
    low, high = _input_range(average)  # a moving average of per-sample ranges ends near a typical sample's
    assert high < x.max() - 0.3 and low > x.min() + 0.3, (low, high, x.min(), x.max())
    assert average.details["ranges"]["chosen"] == "moving-average"


def test_measure_warns_when_int8_does_not_pay(single_channel, tmp_path):
    source, builds = single_channel
    export = convert_to_tflite(source)  # the cached conversion the builds used
    full = builds["unmeasured"].main_file.read_bytes()
    latency = tflite._latency_vs_fp32(export, {"int8": full}, source, "int8", tmp_path)
    assert latency["chosen"] == "int8" and latency["speedup"] < tflite.SLOWER_THAN_FP32
    assert "does not pay" in latency["warning"] and "build fp32" in latency["warning"]
    assert list(tmp_path.iterdir()) == []  # the timed copies are gone


def test_nhwc_artifact_records_its_layout_and_takes_nchw_feeds(digits, digits_builds, digits_test_data):
    images, _ = digits_test_data
    artifact = digits_builds["fp32-nhwc"]
    assert artifact.details["layouts"] == {"x": "NHWC"}
    assert artifact.details["signature_inputs"]["args_0"]["shape"] == [1, 8, 8, 1]
    assert artifact.manifest["recipe"]["options"]["layout"] == "nhwc"
    got = load_artifact(artifact.path, threads=2).run({"x": images[:20]})["output"]
    np.testing.assert_allclose(got, digits.run({"x": images[:20]})["output"], atol=1e-4, rtol=1e-4)


def test_static_batch_model_runs_any_batch_one_sample_at_a_time(digits_builds, digits_test_data):
    images, _ = digits_test_data
    artifact = digits_builds["fp32"]
    assert artifact.details["dynamic"]["kept"] is False
    assert artifact.details["batching"].startswith("static batch 1")
    runner = load_artifact(artifact.path, threads=2)
    batch = runner.run({"x": images[:7]})["output"]
    singles = np.concatenate([runner.run({"x": images[i:i + 1]})["output"] for i in range(7)])
    assert batch.shape == (7, 10)
    np.testing.assert_array_equal(batch, singles)


def test_runner_rejects_wrong_names_and_shapes(digits_builds):
    runner = load_artifact(digits_builds["fp32"].path, threads=1)
    with pytest.raises(BadInput, match="takes inputs"):
        runner.run({"image": np.zeros((1, 1, 8, 8), np.float32)})
    with pytest.raises(BadInput, match="does not fit"):
        runner.run({"x": np.zeros((1, 1, 9, 9), np.float32)})


def test_unchanged_build_is_reused(digits, digits_builds, digits_calibration):
    artifact, reused = build_artifact(ModelBundle(digits), "tflite", "int8", digits_builds["int8"].path,
                                      options={"measure": "false"}, calibration=digits_calibration)
    assert reused and artifact.manifest["key"] == digits_builds["int8"].manifest["key"]


def test_mlp_fp32_matches_torch(mlp, mlp_builds, digits_test_data):
    pixels = digits_test_data[0].reshape(-1, 64)
    got = load_artifact(mlp_builds["fp32"].path, threads=2).run({"pixels": pixels})["output"]
    np.testing.assert_allclose(got, mlp.run({"pixels": pixels})["output"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("precision", PRECISIONS[1:])
def test_mlp_keeps_its_accuracy_within_one_point_at_every_precision(mlp_builds, digits_test_data, precision):
    images, labels = digits_test_data
    pixels = images.reshape(len(images), -1)
    fp32 = accuracy(load_artifact(mlp_builds["fp32"].path, threads=2), pixels, labels, "pixels")
    assert fp32 >= 0.9
    other = accuracy(load_artifact(mlp_builds[precision].path, threads=2), pixels, labels, "pixels")
    assert other >= fp32 - 0.01
    if precision == "int8":
        assert mlp_builds["int8"].details["samples_calibrated"] == 200


def test_unconvertible_model_is_a_step_failure_naming_the_op(write_model, tmp_path):
    source = load_model(write_model(DETERMINANT))
    out = tmp_path / "det"
    with pytest.raises(StepFailed, match=r"aten\._linalg_det"):
        build_artifact(ModelBundle(source), "tflite", "fp32", out)
    assert not out.exists()


def test_options_are_validated(digits, tmp_path):
    bundle = ModelBundle(digits)
    with pytest.raises(BadInput, match="Unknown option"):
        build_artifact(bundle, "tflite", "fp32", tmp_path / "a", options={"io": "int8"})
    with pytest.raises(BadInput, match="not one of"):
        build_artifact(bundle, "tflite", "fp32", tmp_path / "b", options={"layout": "chwn"})
