"""TFLite's `exclude` and debug's TFLite mapping on ops no torch module made: a functional ReLU that XNNPACK-bound
TFLite fuses into its conv, a functional sigmoid ending the model (tests/models.py SIGMOID_HEAD), and functional
max-pools (POOLED).

The sigmoid's outputs lie near 0, where the int8 LOGISTIC kernel's fixed 1/256 output step is coarse: full INT8
loses the output there, and only keeping that op in float gets it back (ops=mixed keeps it float, as it reads a
dynamically-quantized FC's float output). None has a module of its own, so
litert-torch's module-location names cannot find their ops; debug's mapping (a model output by name, a fused
activation by the op's fused-activation field, a pass-through op by the op of its kind reading its input's tensor)
does, and the exclusion and the search use the same mapping.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from modelport.backends import get_backend
from modelport.builder import build_artifact
from modelport.bundle import ModelBundle
from modelport.calibration import CalibrationSet
from modelport.debug import debug_artifact
from modelport.errors import BadInput
from modelport.exporters.tensor_map import reference_layers
from modelport.loading import load_artifact
from modelport.model import load_model
from modelport.similarity import array_sqnr_db
from modelport.tune import parse_budget, search
from modelport.tune.exclude import layer_groups
from modelport.tune.search import Judge
from tests.models import POOLED, SIGMOID_HEAD

BUDGET = "cos>=0.9999"  # full INT8 reaches about 0.989 here, the sigmoid in float about 0.99998


def _normal(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 16, 16)).astype(np.float32)


def _model_data(tmp_path_factory, name: str, code: str) -> tuple[ModelBundle, CalibrationSet, CalibrationSet]:
    """tests/models.py's `code` as a model file, with 64 calibration and 16 held-out normal samples."""
    ok, reason = get_backend("tflite").available()
    if not ok:
        pytest.skip(reason)
    path = tmp_path_factory.mktemp(name) / f"{name}.py"
    path.write_text("import torch\nimport torch.nn.functional as F\nfrom torch import nn\n\n" + code)
    source = load_model(f"{path}:make", dynamic=["x:0=batch"])
    return (ModelBundle(source), CalibrationSet.from_arrays({"x": _normal(64, 0)}, source.inputs),
            CalibrationSet.from_arrays({"x": _normal(16, 1)}, source.inputs))


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    return _model_data(tmp_path_factory, "head", SIGMOID_HEAD)


@pytest.fixture(scope="module")
def full_int8(head, tmp_path_factory):
    bundle, calibration, _ = head
    return build_artifact(bundle, "tflite", "int8", tmp_path_factory.mktemp("int8") / "a",
                          calibration=calibration)[0]


def _op_dtypes(path, op_type: str) -> set[str]:
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(path))
    sg = model.subgraphs[0]
    return {flatbuffer_utils.type_to_name(sg.tensors[i].type) for op in sg.operators
            if flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) == op_type for i in [*op.inputs, *op.outputs]}


def test_excluding_a_functional_sigmoid_keeps_its_logistic_in_float_and_recovers_the_output(head, full_int8,
                                                                                            tmp_path):
    bundle, calibration, evaluation = head
    kept = build_artifact(bundle, "tflite", "int8", tmp_path / "kept", calibration=calibration,
                          options={"exclude": "node_sigmoid"})[0]
    assert kept.details["kept_in_float"] == {"onnx_nodes": ["node_sigmoid"], "tflite_ops": {
        "node_sigmoid": [{"op": "LOGISTIC", "scope": "serving_default_output_output;"}]}}
    assert _op_dtypes(kept.main_file, "LOGISTIC") == {"FLOAT32"}
    assert "INT8" in _op_dtypes(full_int8.main_file, "LOGISTIC")
    judge = Judge(bundle, evaluation, parse_budget(BUDGET))
    full, float_sigmoid = judge(full_int8.path), judge(kept.path)
    assert float_sigmoid["sqnr"] > full["sqnr"] + 15, (full, float_sigmoid)


def test_excluding_a_fused_functional_relu_keeps_its_conv_in_float(head, tmp_path):
    bundle, calibration, _ = head
    kept = build_artifact(bundle, "tflite", "int8", tmp_path / "kept", calibration=calibration,
                          options={"exclude": "node_relu", "measure": "off"})[0]
    assert [op["op"] for op in kept.details["kept_in_float"]["tflite_ops"]["node_relu"]] == ["CONV_2D"]
    assert _op_dtypes(kept.main_file, "CONV_2D") == {"FLOAT32"}


def test_a_functional_op_no_tflite_tensor_maps_to_is_bad_input(head, tmp_path):
    bundle, calibration, _ = head
    with pytest.raises(BadInput, match=re.escape("no TFLite op implements ONNX node(s) node_mean")):
        build_artifact(bundle, "tflite", "int8", tmp_path / "x", calibration=calibration,
                       options={"exclude": "node_mean"})
    assert not (tmp_path / "x").exists()


def test_debug_reads_a_fused_activation_as_the_activation_not_the_conv_before_it(head, full_int8):
    bundle, _, evaluation = head
    record = debug_artifact(full_int8.path, bundle.source, evaluation)
    by_tensor = {e["tensor"]: e for e in record["layers"]}
    assert by_tensor["conv2d"]["status"] == "fused"  # the CONV_2D's output is after its fused RELU
    assert by_tensor["relu"]["status"] == "ok" and "Conv2d_conv" in by_tensor["relu"]["runtime_tensor"]
    assert by_tensor["relu"]["sqnr_db"] > 25  # pre-ReLU against post-ReLU would compare far worse
    assert record["culprits"][0]["onnx_node"] == "node_sigmoid"


def test_the_search_on_tflite_keeps_the_functional_sigmoid_in_float(head, tmp_path):
    bundle, calibration, evaluation = head
    # full-integer: with float-output FCs (ops=mixed, the search's alternative) the sigmoid reads a float input
    # and that build meets the budget alone
    outcome = search(bundle, "tflite", tmp_path / "tuned", parse_budget(BUDGET), calibration, evaluation=evaluation,
                     options={"ops": "all"})
    record = outcome.record
    assert not record["candidates"][0]["met"], record["candidates"][0]
    assert record["ranked_groups"][0] == ["node_sigmoid"]
    chosen = record["candidates"][record["chosen"]]
    assert outcome.met and chosen["kept_in_float"] == ["node_sigmoid"], record["candidates"]
    assert outcome.artifact.details["kept_in_float"]["onnx_nodes"] == ["node_sigmoid"]


def test_ops_mixed_keeps_the_sigmoid_after_a_dynamic_fc_in_float(head, full_int8, tmp_path):
    bundle, calibration, evaluation = head
    mixed = build_artifact(bundle, "tflite", "int8", tmp_path / "mixed", calibration=calibration,
                           options={"ops": "mixed", "measure": "off"})[0]
    plan = mixed.details["int8_op_set"]
    assert plan["chosen"] == "mixed" and [op["op"] for op in plan["float_outputs"]] == ["LOGISTIC"]
    assert _op_dtypes(mixed.main_file, "LOGISTIC") == {"FLOAT32"}
    assert "INT8" in _op_dtypes(mixed.main_file, "FULLY_CONNECTED")  # its weights: a dynamically-quantized FC
    judge = Judge(bundle, evaluation, parse_budget(BUDGET))
    assert judge(mixed.path)["sqnr"] > judge(full_int8.path)["sqnr"] + 15


@pytest.fixture(scope="module")
def pooled(tmp_path_factory):
    bundle, calibration, evaluation = _model_data(tmp_path_factory, "pooled", POOLED)
    full = build_artifact(bundle, "tflite", "int8", tmp_path_factory.mktemp("pooled-int8") / "a",
                          calibration=calibration, options={"measure": "off"})[0]
    return bundle, calibration, evaluation, full


def _max_pool_dtypes(path) -> list[set[str]]:
    """Each MAX_POOL_2D's input and output types, in execution order."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(path))
    sg = model.subgraphs[0]
    return [{flatbuffer_utils.type_to_name(sg.tensors[i].type) for i in [*op.inputs, *op.outputs]}
            for op in sg.operators if flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) == "MAX_POOL_2D"]


def test_debug_maps_a_functional_max_pool_to_its_max_pool_2d_and_the_search_can_keep_it(pooled):
    bundle, _, evaluation, full = pooled
    record = debug_artifact(full.path, bundle.source, evaluation)
    by_node = {e["onnx_node"]: e for e in record["layers"]}
    for node in ("node_max_pool2d", "node_max_pool2d_1"):
        assert by_node[node]["module"] is None and by_node[node]["status"] == "ok", by_node[node]
    assert by_node["node_max_pool2d"]["runtime_tensor"] != by_node["node_max_pool2d_1"]["runtime_tensor"]
    mapped = {e["onnx_node"] for e in record["layers"] if e["runtime_tensor"]}
    groups = layer_groups(reference_layers(bundle.onnx_path), "tflite", mapped)
    assert groups["node_max_pool2d"] == ("node_max_pool2d",)


def test_excluding_a_functional_max_pool_keeps_that_max_pool_2d_in_float(pooled, tmp_path):
    bundle, calibration, evaluation, full = pooled
    kept = build_artifact(bundle, "tflite", "int8", tmp_path / "kept", calibration=calibration,
                          options={"exclude": "node_max_pool2d_1", "measure": "off"})[0]
    ops = kept.details["kept_in_float"]["tflite_ops"]["node_max_pool2d_1"]
    assert [op["op"] for op in ops] == ["MAX_POOL_2D"]
    assert _max_pool_dtypes(kept.main_file) == [{"INT8"}, {"FLOAT32"}]
    assert _max_pool_dtypes(full.main_file) == [{"INT8"}, {"INT8"}]
    feeds = next(evaluation.batches(16))
    reference = next(iter(bundle.source.run(feeds).values()))
    outputs = [next(iter(load_artifact(a.path, threads=2).run(feeds).values())) for a in (full, kept)]
    assert array_sqnr_db(reference, outputs[0]) != array_sqnr_db(reference, outputs[1])  # a build of its own


def test_ops_mixed_with_integer_io_is_bad_input(head, tmp_path):
    bundle, calibration, _ = head
    with pytest.raises(BadInput, match=re.escape("ops=mixed keeps the FULLY_CONNECTED outputs in float")):
        build_artifact(bundle, "tflite", "int8", tmp_path / "x", calibration=calibration,
                       options={"ops": "mixed", "io": "int8"})
