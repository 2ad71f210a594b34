"""The shared QDQ pass on real ONNX Runtime: every sample reaches the calibrator, ranges are cached, and
the tensors that wreck 8-bit ranges stay in float with their reasons."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from modelport.bundle import ModelBundle
from modelport.calibration import CalibrationSet
from modelport.errors import BadInput
from modelport.examples import digits_data
from modelport.machine import cache_dir
from modelport.model import load_model
from modelport.ort_session import ort_session
from modelport.quantize import write_qdq_model
from modelport.quantize.algorithms.bias_correction import BiasCorrectionOptions
from modelport.similarity import array_sqnr_db, mean_cosine

ATTENTION = '''
import math


class MaskedAttention(nn.Module):
    """One attention block with what trained encoders have: an additive float-min mask, outlier channels."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(100, 32)
        self.norm = nn.LayerNorm(32)
        self.qkv = nn.Linear(32, 96)
        self.out = nn.Linear(32, 32)
        with torch.no_grad():
            self.norm.weight[[1, 7]] *= 12.0
            self.qkv.weight *= 3.0

    def forward(self, ids, mask):
        h = self.norm(self.emb(ids))
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        scores = q @ k.transpose(-1, -2) / math.sqrt(32)
        scores = scores + (1.0 - mask[:, None, :].float()) * torch.finfo(torch.float32).min
        return self.out(scores.softmax(-1) @ v) + h


def make():
    ids = torch.randint(0, 100, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.int64)
    mask[1, 10:] = 0
    return MaskedAttention().eval(), (ids, mask)
'''

SPREAD = '''
class Squashed(nn.Module):
    """Eight like layers whose every activation is heavy-tailed: each adds about the same quantization noise."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList(nn.Linear(32, 32) for _ in range(8))

    def forward(self, x):
        for layer in self.layers[:-1]:
            x = torch.tanh(layer(x))
            x = x * torch.exp(3.0 * x)
        return self.layers[-1](x)


def make():
    return Squashed().eval(), (torch.randn(4, 32),)
'''


def _token_data(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 100, (n, 16)).astype(np.int64)
    lengths = rng.integers(3, 17, n)
    mask = (np.arange(16)[None, :] < lengths[:, None]).astype(np.int64)
    return {"ids": ids * mask, "mask": mask}


@pytest.fixture(scope="module")
def digits_onnx(digits):
    return ModelBundle(digits).onnx_path


@pytest.fixture(scope="module")
def digits_calib(digits):
    x, y = digits_data("train")
    return CalibrationSet.from_arrays({"x": x}, digits.inputs, labels=y, size=203, seed=1)


@pytest.fixture(scope="module")
def attention(tmp_path_factory):
    path = tmp_path_factory.mktemp("attention") / "attention.py"
    path.write_text("import torch\nfrom torch import nn\n" + ATTENTION)
    source = load_model(f"{path}:make", dynamic=["ids:0=batch", "mask:0=batch"])
    calibration = CalibrationSet.from_arrays(_token_data(160, 0), source.inputs)
    return ModelBundle(source).onnx_path, calibration


class CountingCalibrator:
    """Counts, inside ORT's own MinMax calibrator, the samples its collect_data pulled and ran."""

    def __init__(self, monkeypatch) -> None:
        from onnxruntime.quantization.calibrate import MinMaxCalibrater

        self.samples = 0
        self.calls = 0
        real = MinMaxCalibrater.collect_data
        counter = self

        def collect_data(calibrator, reader):
            counter.calls += 1

            class Counted:
                def get_next(self):
                    item = reader.get_next()
                    if item:
                        counter.samples += len(next(iter(item.values())))
                    return item

            return real(calibrator, Counted())

        monkeypatch.setattr(MinMaxCalibrater, "collect_data", collect_data)

SIGMOID_HEAD = '''
class Head(nn.Module):
    """A layer and the sigmoid that makes the model's output, as a multi-label or pitch head ends."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(32, 64)

    def forward(self, x):
        return torch.sigmoid(self.fc(x))


def make():
    return Head().eval(), (torch.randn(4, 32),)
'''


def _run(path, feeds):
    session = ort_session(path)
    names = [i.name for i in session.get_inputs()]
    return session.run(None, {n: feeds[n] for n in names})[0]


def test_every_calibration_sample_reaches_the_calibrator(digits_onnx, digits_calib, tmp_path, monkeypatch):
    spy = CountingCalibrator(monkeypatch)
    result = write_qdq_model(digits_onnx, digits_calib, tmp_path / "q.onnx", fidelity_target=None)
    assert len(digits_calib) == 203  # 25 batches of 8 and a last one of 3
    assert spy.samples == 203
    assert result.samples_seen == 203 and result.samples_available == 203
    assert spy.calls >= 2  # streamed in chunks, not held all at once
    assert not result.from_cache


def test_ranges_are_cached_so_a_second_backend_does_not_calibrate(digits_onnx, digits_calib, tmp_path, monkeypatch):
    first = write_qdq_model(digits_onnx, digits_calib, tmp_path / "a.onnx", method="percentile",
                            fidelity_target=None)
    spy = CountingCalibrator(monkeypatch)
    # TensorRT's call: symmetric int8 activations from the same ranges
    second = write_qdq_model(digits_onnx, digits_calib, tmp_path / "b.onnx", method="percentile",
                             symmetric_activations=True, per_channel=True, fidelity_target=None)
    assert second.from_cache and not first.from_cache
    assert second.cache_key == first.cache_key
    assert spy.calls == 0
    assert second.samples_seen == 203  # the count behind the cached ranges
    other_data = CalibrationSet.from_arrays({"x": digits_data("train")[0]}, digits_calib.specs, size=50, seed=2)
    third = write_qdq_model(digits_onnx, other_data, tmp_path / "c.onnx", method="percentile",
                            fidelity_target=None)
    assert not third.from_cache and third.cache_key != first.cache_key


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_each_method_keeps_digits_accuracy(digits_onnx, digits_calib, tmp_path, method):
    result = write_qdq_model(digits_onnx, digits_calib, tmp_path / "q.onnx", method=method)
    x, y = digits_data("test")
    float_acc = (_run(digits_onnx, {"x": x}).argmax(1) == y).mean()
    int8_acc = (_run(result.path, {"x": x}).argmax(1) == y).mean()
    assert result.method == method
    assert int8_acc >= float_acc - 0.01
    assert result.quantized.get("Conv") == 2
    assert result.fidelity["met"] and result.fidelity["cosine"] >= 0.99


def test_symmetric_activations_have_zero_zero_points(digits_onnx, digits_calib, tmp_path):
    result = write_qdq_model(digits_onnx, digits_calib, tmp_path / "q.onnx", symmetric_activations=True,
                             fidelity_target=None)
    model = onnx.load(str(result.path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    points = [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert points and all(p.dtype == np.int8 and not p.any() for p in points)
    assert result.settings["activation_type"] == "int8"


def test_exclude_takes_node_names_and_op_types(digits_onnx, digits_calib, tmp_path):
    model = onnx.load(str(digits_onnx))
    first_conv = next(n.name for n in model.graph.node if n.op_type == "Conv")
    result = write_qdq_model(digits_onnx, digits_calib, tmp_path / "q.onnx", exclude=["Gemm", first_conv],
                             fidelity_target=None)
    kept = {k["node"]: k for k in result.kept_float}
    assert first_conv in kept and kept[first_conv]["rule"] == "user"
    assert {k["op_type"] for k in result.kept_float} == {"Conv", "Gemm"}
    assert "Gemm" not in result.quantized and result.quantized.get("Conv") == 1
    with pytest.raises(BadInput, match="no_such_node"):
        write_qdq_model(digits_onnx, digits_calib, tmp_path / "r.onnx", exclude=["no_such_node"])
    assert not (tmp_path / "r.onnx").exists()


def test_unknown_options_are_rejected(digits_onnx, digits_calib, tmp_path):
    with pytest.raises(BadInput, match="colour"):
        write_qdq_model(digits_onnx, digits_calib, tmp_path / "q.onnx", colour="blue")
    with pytest.raises(BadInput, match="method"):
        write_qdq_model(digits_onnx, digits_calib, tmp_path / "q.onnx", method="mse")


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_mask_add_and_softmax_stay_float_and_attention_holds(attention, tmp_path, method):
    onnx_path, calibration = attention
    # ORT's full op set (what TensorRT consumes): the mask add and softmax would be quantized by default;
    # histogram methods must also survive a float-min mask, which no histogram can bin
    result = write_qdq_model(onnx_path, calibration, tmp_path / "q.onnx", method=method)
    rules = {k["rule"]: k for k in result.kept_float}
    assert rules["softmax"]["op_type"] == "Softmax"
    assert rules["mask-add"]["op_type"] in ("Add", "Where") and "softmax" in rules["mask-add"]["reason"]
    assert "-3.4e+38" in rules["extreme-range"]["reason"]  # the float-min mask itself
    assert result.kept_summary["softmax"] == 1
    assert result.quantized.get("MatMul", 0) >= 2
    feeds = _token_data(48, 7)
    ref, got = _run(onnx_path, feeds), _run(result.path, feeds)
    assert mean_cosine(ref, got) >= 0.99


def test_by_hand_quantize_static_collapses_on_the_same_attention(attention, tmp_path):
    """The failure this module exists for: ORT's defaults put the float-min mask and logits in one range."""
    from benchmarks.peers import build_ort_static_defaults

    onnx_path, calibration = attention
    build_ort_static_defaults(onnx_path, calibration, tmp_path / "by_hand.onnx")
    feeds = _token_data(48, 7)
    ref = _run(onnx_path, feeds)
    ours = write_qdq_model(onnx_path, calibration, tmp_path / "ours.onnx").path
    by_hand, ours_cos = mean_cosine(ref, _run(tmp_path / "by_hand.onnx", feeds)), mean_cosine(ref, _run(ours, feeds))
    assert ours_cos >= 0.99
    assert by_hand < ours_cos - 0.01


def test_smoothing_moves_outlier_channels_into_weights_without_changing_the_function(attention, tmp_path):
    onnx_path, calibration = attention
    # bias correction changes the float biases on purpose; without it the prepared model is the float function
    result = write_qdq_model(onnx_path, calibration, tmp_path / "q.onnx", op_types=["MatMul", "Gemm"],
                             algorithms={"bias_correction": BiasCorrectionOptions(correct=False)})
    assert result.smoothed and result.smoothed[0]["spread"] >= 4
    prepared = cache_dir() / "qdq" / result.cache_key / "prepared.onnx"
    feeds = _token_data(16, 3)
    np.testing.assert_allclose(_run(prepared, feeds), _run(onnx_path, feeds), rtol=1e-4, atol=1e-4)


def test_float_fallback_that_does_not_pay_for_its_speed_is_dropped(write_model, tmp_path):
    source = load_model(write_model(SPREAD), dynamic=["x:0=batch"])
    data = np.random.default_rng(0).standard_normal((200, 32)).astype(np.float32)
    result = write_qdq_model(ModelBundle(source).onnx_path, CalibrationSet.from_arrays({"x": data}, source.inputs),
                             tmp_path / "q.onnx", auto_exclude=False, fidelity_target=0.9999)
    rounds = result.fidelity["rounds"]
    assert len(rounds) > 1 and rounds[-1]["cosine"] > rounds[0]["cosine"]  # float ops did help, a little
    assert not any(r["kept"] for r in rounds[1:])  # each round closed under 2x its share of the compute
    assert result.fidelity["cosine"] == rounds[0]["cosine"] and not result.fidelity["met"]
    assert result.kept_float == [] and result.quantized["Gemm"] == 8
    assert "spread across the network" in result.fidelity["why_unmet"]


def test_the_op_making_a_graph_output_stays_float_so_the_output_is_not_rounded_to_8_bits(write_model, tmp_path):
    source = load_model(write_model(SIGMOID_HEAD), dynamic=["x:0=batch"])
    rng = np.random.default_rng(0)
    calibration = CalibrationSet.from_arrays({"x": rng.standard_normal((64, 32)).astype(np.float32)}, source.inputs)
    onnx_path = ModelBundle(source).onnx_path
    result = write_qdq_model(onnx_path, calibration, tmp_path / "q.onnx", fidelity_target=None)
    assert [(k["op_type"], k["rule"]) for k in result.kept_float] == [("Sigmoid", "graph-output")]
    assert {"Gemm", "MatMul"} & set(result.quantized)  # the layer before it still runs in int8
    graph = onnx.load(str(result.path)).graph
    assert next(n.op_type for n in graph.node if n.output[0] == graph.output[0].name) == "Sigmoid"
    rounded = write_qdq_model(onnx_path, calibration, tmp_path / "r.onnx", fidelity_target=None, auto_exclude=False)
    x = {"x": rng.standard_normal((64, 32)).astype(np.float32)}
    ref = _run(onnx_path, x)
    assert array_sqnr_db(ref, _run(result.path, x)) > array_sqnr_db(ref, _run(rounded.path, x))


def test_an_entry_whose_algorithms_leave_the_model_as_another_did_takes_its_ranges(write_model, tmp_path, monkeypatch):
    source = load_model(write_model(SIGMOID_HEAD), dynamic=["x:0=batch"])
    data = np.random.default_rng(1).standard_normal((48, 32)).astype(np.float32)
    calibration = CalibrationSet.from_arrays({"x": data}, source.inputs)
    onnx_path = ModelBundle(source).onnx_path
    first = write_qdq_model(onnx_path, calibration, tmp_path / "a.onnx", fidelity_target=None)
    spy = CountingCalibrator(monkeypatch)
    # CLE (auto) reads the weight settings, so 7-bit weights are another entry; with no chain to equalize, the
    # prepared model is the same and so are its ranges
    second = write_qdq_model(onnx_path, calibration, tmp_path / "b.onnx", reduce_range=True, fidelity_target=None)
    assert second.cache_key != first.cache_key and second.from_cache and not first.from_cache
    assert spy.calls == 0 and second.samples_seen == 48
    entries = [cache_dir() / "qdq" / r.cache_key / "ranges.json" for r in (first, second)]
    assert entries[0].read_text() == entries[1].read_text()
