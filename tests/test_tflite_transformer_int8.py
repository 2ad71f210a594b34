"""TFLite INT8 on a transformer: only the weight matmuls go int8, the rest stays float, and fidelity holds.

A 2-layer ViT (hidden 64, 32x32 images, random weights) built with `transformers` from a config. Full-integer
INT8 (ops=all) puts softmax, layer norms, GELU and the attention matmuls on 8-bit activations, which on such
graphs loses most of the output's signal; `ops=auto` detects the graph and keeps those ops in FP32.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("litert_torch", reason="litert-torch is not installed (pip install 'modelport[tflite]')")
pytest.importorskip("ai_edge_quantizer", reason="ai-edge-quantizer is not installed (pip install 'modelport[tflite]')")
pytest.importorskip("ai_edge_litert", reason="ai-edge-litert is not installed (pip install 'modelport[tflite]')")
pytest.importorskip("transformers", reason="transformers is not installed")

from modelport.builder import build_artifact
from modelport.bundle import ModelBundle
from modelport.calibration import CalibrationSet
from modelport.errors import BadInput
from modelport.loading import load_artifact
from modelport.model import load_model
from modelport.similarity import array_sqnr_db

TINY_VIT = """
class Logits(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).logits


def make():
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                       image_size=32, patch_size=8, num_labels=10)
    return Logits(ViTForImageClassification(config).eval()).eval(), (torch.randn(1, 3, 32, 32),)
"""

FLOAT_IN_TRANSFORMER = ("SOFTMAX", "GELU", "MEAN", "SQUARED_DIFFERENCE", "RSQRT", "BATCH_MATMUL", "ADD", "MUL")


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
    path = tmp_path_factory.mktemp("vit") / "tiny_vit.py"
    path.write_text("import torch\nfrom torch import nn\n" + TINY_VIT)
    return load_model(f"{path}:make", dynamic=["x:0=batch"])


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return {"calibration": rng.standard_normal((100, 3, 32, 32)).astype(np.float32),
            "held_out": rng.standard_normal((16, 3, 32, 32)).astype(np.float32)}


@pytest.fixture(scope="module")
def vit_builds(tiny_vit, images, tmp_path_factory):
    """INT8 with the automatic op set, and full-integer INT8 asked for explicitly (one conversion, cached)."""
    root = tmp_path_factory.mktemp("tflite-vit")
    calibration = CalibrationSet.from_arrays({"x": images["calibration"]}, tiny_vit.inputs)
    return {ops: build_artifact(ModelBundle(tiny_vit), "tflite", "int8", root / ops, options={"ops": ops},
                                calibration=calibration)[0] for ops in ("auto", "all")}


def test_auto_detects_the_transformer_and_records_why(vit_builds):
    plan = vit_builds["auto"].details["int8_op_set"]
    assert plan["requested"] == "auto" and plan["chosen"] == "matmul"
    assert plan["transformer_markers"] == {"attention_matmuls": 4, "layer_norms": 5}
    assert "transformer-like" in plan["reason"] and "run time" in plan["activations"]
    assert vit_builds["auto"].details["samples_calibrated"] == 0
    assert "quantized per row at run time" in vit_builds["auto"].details["compute"]


def test_only_weight_matmuls_run_in_int8_on_a_transformer(vit_builds):
    details = vit_builds["auto"].details
    assert details["int8_ops"] == {"FULLY_CONNECTED": 13}  # 2x6 block FCs, classifier
    assert details["float_ops"]["CONV_2D"] == 1  # the patch embedding: XNNPACK has no dynamically-quantized conv
    for op in FLOAT_IN_TRANSFORMER:
        assert op in details["float_ops"] and op not in details["int8_ops"]
    assert "QUANTIZE" not in details["ops"] and "DEQUANTIZE" not in details["ops"]
    assert details["tensors_by_dtype"]["INT8"] == 13  # one weight per int8 op
    assert details["signature_inputs"]["args_0"]["dtype"] == "float32"


def test_transformer_int8_stays_close_to_torch_where_full_integer_does_not(tiny_vit, vit_builds, images):
    x = images["held_out"]
    ref = tiny_vit.run({"x": x})["output"]
    matmul = load_artifact(vit_builds["auto"].path, threads=2).run({"x": x})["output"]
    full = load_artifact(vit_builds["all"].path, threads=2).run({"x": x})["output"]
    assert array_sqnr_db(ref, matmul) >= 30.0
    assert array_sqnr_db(ref, full) < array_sqnr_db(ref, matmul) - 10.0


def test_ops_all_keeps_the_full_integer_model_on_request(vit_builds):
    details = vit_builds["all"].details
    assert details["int8_op_set"]["chosen"] == "all" and details["int8_op_set"]["reason"] == "ops=all was asked for"
    assert details["samples_calibrated"] == 100
    assert set(details["float_ops"]) == {"QUANTIZE", "BROADCAST_TO"}  # the float input's quantize; int32 shapes
    assert details["int8_ops"]["SOFTMAX"] == 2


def test_integer_io_needs_the_full_integer_op_set(tiny_vit, images, tmp_path):
    calibration = CalibrationSet.from_arrays({"x": images["calibration"]}, tiny_vit.inputs)
    with pytest.raises(BadInput, match="ops=matmul"):
        build_artifact(ModelBundle(tiny_vit), "tflite", "int8", tmp_path / "io",
                       options={"ops": "matmul", "io": "int8"}, calibration=calibration)
    assert not (tmp_path / "io").exists()
