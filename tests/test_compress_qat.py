"""QAT: `compress --qat` trains int8 fake quantization, and its ranges and weights reach the QDQ model as trained.

One QAT run of the trained digits CNN on its real training split (one epoch, one thread), then its ONNX
Runtime int8 build, which picks up the learned ranges from beside OUT.pt2. Whether QAT beats PTQ where PTQ
misses is measured in benchmarks/qat.py; here only what is exact: the file covers every quantized
activation, the QDQ model carries those ranges and the trained weights on the grid the build uses, layers
are equalized without changing the float function, and a wrong or stale file is refused.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn
from typer.testing import CliRunner

from modelport.artifact import Artifact
from modelport.backends import get_backend
from modelport.backends.onnxruntime import cpu_choice
from modelport.builder import build_artifact
from modelport.bundle import ModelBundle
from modelport.calibration import open_calibration
from modelport.cli import app
from modelport.compress import equalize
from modelport.compress import qat as qat_module
from modelport.model import load_model
from modelport.ort_session import ort_session
from modelport.quantize.graph import COMPUTE_OPS
from modelport.quantize.statistics import quant_params

TRAIN = "modelport.examples:digits_calibration"
EVAL = "modelport.examples:digits_evaluation"
BUILD = ["-b", "onnxruntime", "-p", "int8", "--calib", TRAIN, "--calib-size", "128"]


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
    """The ONNX Runtime int8 build of OUT.pt2 as the printed command runs it, with ORT's defaults for this CPU
    (the ranges file is not named: it is picked up from beside the model): (artifact, QDQ model, CLI output)."""
    out = tmp_path_factory.mktemp("int8") / "a"
    result = CliRunner().invoke(app, ["build", qat[2].origin, *BUILD, "-o", str(out)])
    assert result.exit_code == 0, result.output
    artifact = Artifact.open(out)
    return artifact, onnx.load(str(artifact.main_file)), result.output


def test_qat_folds_batch_norm_equalizes_and_says_how_to_build(qat):
    output, report, _ = qat
    step = report["steps"][0]
    assert step["technique"] == "qat" and step["fine_tune"]["epochs"] == 1
    assert step["details"]["folded_batch_norms"] == ["features.1", "features.4"]
    assert [e["layers"] for e in step["details"]["equalized"]] == [["features.0", "features.3"],
                                                                   ["classifier.1", "classifier.3"]]
    assert step["details"]["quantized_layers"] == ["classifier.1", "classifier.3", "features.0", "features.3"]
    assert step["details"]["weight_qmax"] == (64 if cpu_choice().reduce_range else 127)  # the grid ORT builds here
    assert report["qat"]["unnamed_layers"] == []
    assert report["qat"]["build"].endswith(f"-p int8 --calib {TRAIN}") and report["qat"]["build"] in output


def test_the_int8_build_picks_up_the_ranges_beside_the_model_and_says_so(int8, qat):
    artifact, _, output = int8
    path = qat[1]["qat"]["ranges_file"]
    assert artifact.manifest["details"]["ranges_file_beside"] == {
        "path": path, "used": True, "why": "beside the model (--option ranges_file= overrides)"}
    assert artifact.manifest["recipe"]["options"]["ranges_file"].startswith(path)
    assert f"Activation ranges from {path}, found beside the model" in " ".join(output.split())


def test_ranges_file_none_builds_with_calibrated_ranges(qat, tmp_path):
    result = CliRunner().invoke(app, ["build", qat[2].origin, *BUILD, "--calib-size", "16", "--option",
                                      "ranges_file=none", "-o", str(tmp_path / "a"), "--json"])
    assert result.exit_code == 0, result.output
    details = json.loads(result.stdout)["manifest"]["details"]
    assert details["calibration"]["given_ranges"] is None and "ranges_file_beside" not in details


def test_a_stale_ranges_file_beside_the_model_is_refused(qat, tmp_path):
    """Ranges learned for other weights would quantize this model wrongly without a sign: build and bench stop."""
    model = tmp_path / "m.pt2"
    shutil.copy(qat[2].origin, model)
    ranges = json.loads(Path(qat[1]["qat"]["ranges_file"]).read_text())
    (tmp_path / "m.pt2.ranges.json").write_text(json.dumps({**ranges, "model_sha256": "0" * 64}))
    for command in (["build", str(model), *BUILD, "-o", str(tmp_path / "a")],
                    ["bench", str(model), "--calib", TRAIN, "-o", str(tmp_path / "b")]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 2, result.output
        text = " ".join(result.output.split())
        assert "m.pt2.ranges.json sits beside" in text and "was not learned for it" in text
        assert "--option ranges_file=none" in text
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize(("backend", "precision", "options", "reads"), [
    ("onnxruntime", "int8", {}, True), ("onnxruntime", "fp32", {}, False), ("tensorrt", "int8", {}, True),
    ("openvino", "int8", {}, False), ("openvino", "int8", {"source": "qdq"}, True), ("tflite", "int8", {}, False),
])
def test_only_builds_that_read_given_ranges_pick_them_up(backend, precision, options, reads):
    impl = get_backend(backend)
    assert impl.reads_ranges_file(impl.recipe(precision, options)) is reads


def test_the_ranges_file_has_every_quantized_activation_of_the_exported_graph(qat, ranges):
    graph = onnx.load(str(ModelBundle(qat[2]).onnx_path)).graph
    weights = {i.name for i in graph.initializer}
    inputs = {i for n in graph.node if n.op_type in COMPUTE_OPS for i in n.input if i and i not in weights}
    assert set(ranges) == inputs == {"x", "relu", "_unsafe_view", "relu_2"}
    assert all(lo <= 0 <= hi and hi > lo for lo, hi in ranges.values())


def test_the_int8_build_carries_exactly_the_learned_ranges(int8, ranges):
    artifact, model, _ = int8
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
                                      options={"ranges_file": str(path)},
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


def test_equalization_evens_out_an_outlier_channel_and_keeps_the_float_function(outlier_source):
    """`wide`'s channel 0 is 100x the others and `head` reads it 100x weaker: equalized, every channel is alike."""
    module = outlier_source.module
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = module(x)
    done = equalize.equalize(module, {"x": x[:1]})
    assert [e["layers"] for e in done] == [["wide", "head"]]  # stem -> wide has no ReLU between: not a pair
    assert done[0]["range_spread_before"][0] > 100 and done[0]["range_spread_after"][0] < 5
    with torch.no_grad():
        torch.testing.assert_close(module(x), before, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("reduce_range", "qmax"), [(True, 64), (False, 127)])
def test_qat_weights_end_on_the_grid_of_the_int8_build(reduce_range, qmax):
    """ORT's reduce_range weights are [-64, 64] with scale max|w| / 64 per channel, else [-127, 127]."""
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    x = torch.randn(8, 1, 8, 8)
    details = qat_module.prepare(module, {"x": x[:1]}, [({"x": x}, None)], reduce_range=reduce_range)
    assert details["weight_qmax"] == qmax
    qat_module.freeze(module)
    for layer in (module[0], module[3]):
        w = layer.weight.detach().reshape(len(layer.weight), -1)
        q = w / (w.abs().amax(1, keepdim=True) / qmax)
        torch.testing.assert_close(q, q.round(), rtol=0, atol=1e-4)
        assert q.abs().amax() == pytest.approx(qmax)
