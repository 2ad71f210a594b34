"""QAT: `compress --qat` trains int8 fake quantization, and its ranges and weights reach the QDQ model as trained.

One QAT run of the trained digits CNN on its real training split (one epoch, one thread), then its ONNX
Runtime int8 build with the learned ranges (`--option ranges_file=`). Whether QAT beats PTQ where PTQ
misses is measured in benchmarks/qat.py; here only what is exact: the file covers every quantized
activation, the QDQ model carries those ranges and the trained weights, and a wrong file is refused.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from modelport.builder import build_artifact
from modelport.bundle import ModelBundle
from modelport.calibration import open_calibration
from modelport.cli import app
from modelport.model import load_model
from modelport.ort_session import ort_session
from modelport.quantize.graph import COMPUTE_OPS
from modelport.quantize.statistics import quant_params

TRAIN = "modelport.examples:digits_calibration"
EVAL = "modelport.examples:digits_evaluation"
ORT_OPTIONS = {"reduce_range": "false"}  # 8-bit weights, as QAT trained them (x86 without VNNI would take 7)


@pytest.fixture(scope="module")
def qat(tmp_path_factory):
    """(the CLI's output, the report, OUT.pt2 loaded as the builds load it) of one QAT run."""
    out = tmp_path_factory.mktemp("qat") / "digits-qat.pt2"
    result = CliRunner().invoke(app, ["compress", "modelport.examples:digits_cnn", "--train", TRAIN, "--eval", EVAL,
                                      "--qat", "--qat-epochs", "1", "--threads", "1", "-o", str(out)])
    assert result.exit_code == 0, result.output
    return result.output, json.loads(out.with_suffix(".json").read_text()), load_model(str(out))


@pytest.fixture(scope="module")
def ranges(qat):
    return json.loads(open(qat[1]["qat"]["ranges_file"]).read())["ranges"]


@pytest.fixture(scope="module")
def int8(qat, tmp_path_factory):
    """The ONNX Runtime int8 build of the QAT model with its learned ranges: (artifact, QDQ model)."""
    source = qat[2]
    options = {**ORT_OPTIONS, "ranges_file": qat[1]["qat"]["ranges_file"]}
    artifact, _ = build_artifact(ModelBundle(source), "onnxruntime", "int8", tmp_path_factory.mktemp("int8") / "a",
                                 options=options, calibration=open_calibration(TRAIN, source.inputs, size=128))
    return artifact, onnx.load(str(artifact.main_file))


def test_qat_folds_batch_norm_and_says_how_to_build_with_its_ranges(qat):
    output, report, _ = qat
    step = report["steps"][0]
    assert step["technique"] == "qat" and step["fine_tune"]["epochs"] == 1
    assert step["details"]["folded_batch_norms"] == ["features.1", "features.4"]
    assert step["details"]["quantized_layers"] == ["classifier.1", "classifier.3", "features.0", "features.3"]
    assert report["qat"]["unnamed_layers"] == []
    command = f"--calib {TRAIN} --option ranges_file={report['qat']['ranges_file']}"
    assert report["qat"]["build"].endswith(command) and command in " ".join(output.split())


def test_the_ranges_file_has_every_quantized_activation_of_the_exported_graph(qat, ranges):
    graph = onnx.load(str(ModelBundle(qat[2]).onnx_path)).graph
    weights = {i.name for i in graph.initializer}
    inputs = {i for n in graph.node if n.op_type in COMPUTE_OPS for i in n.input if i and i not in weights}
    assert set(ranges) == inputs == {"x", "relu", "_unsafe_view", "relu_2"}
    assert all(lo <= 0 <= hi and hi > lo for lo, hi in ranges.values())


def test_the_int8_build_carries_exactly_the_learned_ranges(int8, ranges):
    artifact, model = int8
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    quantizers = {n.input[0]: n for n in model.graph.node if n.op_type == "QuantizeLinear"}
    for tensor, (lo, hi) in ranges.items():
        scale, zero = (inits[name] for name in quantizers[tensor].input[1:3])
        want_scale, want_zero, _, _ = quant_params(lo, hi, str(zero.dtype), symmetric=False)
        np.testing.assert_allclose(scale, want_scale, rtol=1e-6, err_msg=tensor)
        assert int(zero) == want_zero, tensor
    given = artifact.manifest["details"]["calibration"]["given_ranges"]
    assert given["applied"] == sorted(ranges) and given["not_in_prepared_graph"] == []
    assert given["shared_upstream"] == ["max_pool2d", "relu_1"]  # the Reshape's range holds for what feeds it


def test_the_qdq_weights_dequantize_to_the_qat_weights(qat, int8):
    weights = {k: v.numpy() for k, v in qat[2].module.state_dict().items()}
    model = int8[1]
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    checked = []
    for node in model.graph.node:
        q = inits.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if q is None or q.dtype != np.int8:
            continue
        name = node.input[0].removesuffix("_quantized")
        scale = inits[node.input[1]].reshape(-1, *([1] * (q.ndim - 1)))
        np.testing.assert_allclose(q * scale, weights[name], rtol=0, atol=1e-6 * np.abs(weights[name]).max())
        checked.append(name)
    assert sorted(checked) == ["classifier.1.weight", "classifier.3.weight", "features.0.weight", "features.3.weight"]


def test_the_qdq_model_scores_what_qat_measured_with_fake_quantization(qat, int8, digits_test_data):
    """Run as its Q/DQ pairs define it (no int8 kernels: ORT's u8s8 kernels on x86 without VNNI saturate with
    8-bit weights, which is why reduce_range exists), the QDQ model is the fake-quantized model QAT trained."""
    images, labels = digits_test_data
    session = ort_session(int8[0].main_file, level="none")
    accuracy = 100 * float((session.run(None, {"x": images})[0].argmax(1) == labels).mean())
    assert abs(accuracy - qat[1]["steps"][0]["after"]["metric"]) <= 0.5  # bias and output rounding aside


def test_a_changed_ranges_file_is_a_new_build(qat, int8, ranges, tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"ranges": {**ranges, "x": [0.0, 2.0]}}))
    source = qat[2]
    artifact, reused = build_artifact(ModelBundle(source), "onnxruntime", "int8", int8[0].path,
                                      options={**ORT_OPTIONS, "ranges_file": str(path)},
                                      calibration=open_calibration(TRAIN, source.inputs, size=128))
    assert not reused
    model = onnx.load(str(artifact.main_file))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x")
    np.testing.assert_allclose(inits[q.input[1]], 2.0 / 255, rtol=1e-6)


@pytest.mark.parametrize(("content", "message"), [
    ({"ranges": {"x": [0, 1], "nope": [0, 1], "gone": [-1, 1]}}, "names tensor(s) gone, nope, which the ONNX model"),
    ({"ranges": {"x": [1, 0]}}, "gives tensor(s) x a range that is not finite min <= max"),
    ({"x": [0, 1]}, "is not a ranges file"),
])
def test_a_wrong_ranges_file_is_bad_input(qat, tmp_path, content, message):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(content))
    result = CliRunner().invoke(app, ["build", qat[2].origin, "-b", "onnxruntime", "-p", "int8", "--calib", TRAIN,
                                      "--calib-size", "16", "--option", f"ranges_file={path}",
                                      "-o", str(tmp_path / "a")])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())


def test_qat_without_epochs_is_bad_input(tmp_path):
    result = CliRunner().invoke(app, ["compress", "modelport.examples:digits_cnn", "--train", TRAIN, "--qat",
                                      "--qat-epochs", "0", "-o", str(tmp_path / "o.pt2")])
    assert result.exit_code == 2, result.output
    assert "needs --qat-epochs of at least 1" in " ".join(result.output.split())
