"""The litert-torch conversion on its own: parity with PyTorch, dynamic axes, the cache, unconvertible ops."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

pytest.importorskip("litert_torch", reason="litert-torch is not installed (pip install 'modelport[tflite]')")
pytest.importorskip("ai_edge_litert", reason="ai-edge-litert is not installed (pip install 'modelport[tflite]')")

from modelport.errors import StepFailed
from modelport.exporters.litert import PARITY_RTOL, convert_to_tflite, run_signature
from modelport.model import load_model
from tests.models import DETERMINANT

FULLY_CONV = """
def make():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    return model, {"x": torch.randn(1, 3, 6, 6)}
"""


def test_digits_cnn_converts_within_tolerance_of_torch(digits):
    export = convert_to_tflite(digits)
    assert export.path.is_file()
    assert export.inputs == {"x": "args_0"} and export.outputs == {"output": "output"}
    assert export.parity and all(p["max_rel"] < PARITY_RTOL for p in export.parity)


def test_dynamic_batch_falls_back_to_static_batch_one_with_the_reason(digits):
    export = convert_to_tflite(digits)
    assert export.dynamic["requested"] == ["batch"]
    assert export.dynamic["kept"] is False
    assert "dynamic axes" in export.dynamic["reason"]
    assert export.shapes == {"x": [1, 1, 8, 8]}


def test_fully_convolutional_model_keeps_its_dynamic_batch(write_model):
    source = load_model(write_model(FULLY_CONV), dynamic=["x:0=batch"])
    export = convert_to_tflite(source)
    assert export.dynamic["kept"] is True and export.dynamic["reason"] is None
    assert export.shapes["x"][0] == -1
    x = np.random.default_rng(0).standard_normal((5, 3, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(run_signature(export.path, {"x": x}, export)["output"], source.run({"x": x})["output"],
                               atol=1e-4)


def test_dynamic_off_converts_static_shapes_directly(write_model):
    source = load_model(write_model(FULLY_CONV), dynamic=["x:0=batch"])
    export = convert_to_tflite(source, dynamic="off")
    assert export.dynamic == {"requested": ["batch"], "kept": False, "reason": "dynamic=off"}
    assert export.shapes["x"] == [1, 3, 6, 6]


def test_nhwc_layout_moves_the_channel_axis_of_image_inputs(digits):
    export = convert_to_tflite(digits, layout="nhwc")
    assert export.layouts == {"x": "NHWC"}
    assert export.shapes == {"x": [1, 8, 8, 1]}
    assert all(p["max_rel"] < PARITY_RTOL for p in export.parity)


def test_second_conversion_comes_from_the_cache(digits):
    first = convert_to_tflite(digits)
    start = time.perf_counter()
    again = convert_to_tflite(digits)
    assert time.perf_counter() - start < 1.0
    assert again.path == first.path and again.to_json() == first.to_json()


def test_unconvertible_op_is_a_step_failure_naming_the_op_and_where(write_model):
    source = load_model(write_model(DETERMINANT))
    with pytest.raises(StepFailed) as info:
        convert_to_tflite(source)
    message = str(info.value)
    assert "aten._linalg_det" in message
    assert "user_model.py:7 in forward" in message  # the torch.linalg.det line
    assert "onnxruntime or openvino" in message


BN_AFTER_RELU = """
def make():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1))
    model[2].running_mean.uniform_(0.0, 1.0)
    model[2].running_var.uniform_(0.01, 2.0)
    return model.eval(), {"x": torch.randn(1, 3, 6, 6)}
"""


def _op_types(path) -> list[str]:
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(path))
    return [flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) for op in model.subgraphs[0].operators]


def test_a_batchnorm_no_conv_folds_converts_as_one_scale_and_shift(write_model):
    source = load_model(write_model(BN_AFTER_RELU))
    export = convert_to_tflite(source)
    ops = _op_types(export.path)
    assert ops.count("MUL") == 1 and ops.count("ADD") == 1 and "SUB" not in ops, ops  # not SUB, MUL, MUL, ADD
    assert export.rewrites["batchnorm_as_scale_shift"] == ["2"] and "MUL and ADD" in export.rewrites["why"]
    assert all(p["max_rel"] < PARITY_RTOL for p in export.parity), export.parity
    assert isinstance(source.module[2], torch.nn.BatchNorm2d)  # the user's module is left as it was


def test_a_batchnorm_after_a_conv_still_folds_into_it(write_model):
    from tests.models import CNN

    export = convert_to_tflite(load_model(write_model(CNN)))
    assert export.rewrites["batchnorm_as_scale_shift"] == ["bn"]
    assert sorted(_op_types(export.path)) == ["CONV_2D", "FULLY_CONNECTED", "MEAN", "TRANSPOSE", "TRANSPOSE"]
