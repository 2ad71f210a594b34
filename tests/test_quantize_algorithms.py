"""Cross-layer equalization, bias correction and AdaRound in the shared QDQ pass: each on a small model where it
provably helps, measured through ONNX Runtime's own quantized model; their options declared once (validated,
listed, recorded in the manifest)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from modelport.builder import build_artifact
from modelport.bundle import ModelBundle
from modelport.calibration import CalibrationSet, open_calibration
from modelport.cli import app
from modelport.errors import BadInput
from modelport.machine import cache_dir
from modelport.model import load_model
from modelport.ort_session import ort_session
from modelport.quantize import QdqSettings, write_qdq_model
from modelport.quantize.algorithms.adaround import AdaRoundOptions
from modelport.quantize.algorithms.bias_correction import BiasCorrectionOptions
from modelport.quantize.algorithms.cle import CleOptions
from modelport.similarity import array_sqnr_db

NONE = {"cle": CleOptions(mode="off"), "bias_correction": BiasCorrectionOptions(correct=False),
        "adaround": AdaRoundOptions(learn=False)}

MISMATCHED_CONVS = '''
class Mismatched(nn.Module):
    """Two convs whose channels carry wildly different scales that cancel: the float function is ordinary."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        scale = torch.tensor([100.0, 1.0, 0.01, 10.0, 0.1, 1.0, 30.0, 0.03])
        with torch.no_grad():
            self.a.weight *= scale[:, None, None, None]
            self.a.bias *= scale
            self.b.weight /= scale[None, :, None, None]

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def make():
    return Mismatched().eval(), (torch.randn(1, 3, 8, 8),)
'''

THROUGH_DEPTHWISE = '''
class Separable(nn.Module):
    """A conv, a depthwise conv and a pointwise conv, the middle one's channels scaled apart."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.pw = nn.Conv2d(4, 4, 1)
        scale = torch.tensor([50.0, 1.0, 0.02, 5.0])
        with torch.no_grad():
            self.dw.weight *= scale[:, None, None, None]
            self.dw.bias *= scale
            self.pw.weight /= scale[None, :, None, None]

    def forward(self, x):
        return self.pw(torch.relu(self.dw(torch.relu(self.a(x)))))


def make():
    return Separable().eval(), (torch.randn(1, 3, 8, 8),)
'''

OUTLIER_LINEAR = '''
class Outlier(nn.Module):
    """One linear layer whose per-tensor weight step is set by a single large weight: the rest round coarsely."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(64, 16)
        with torch.no_grad():
            self.fc.weight[0, 0] = 3.0

    def forward(self, x):
        return self.fc(x)


def make():
    return Outlier().eval(), (torch.rand(1, 64),)
'''


def _model(write_model, body: str):
    source = load_model(write_model(body), dynamic=["x:0=batch"])
    return source, ModelBundle(source).onnx_path


def _run(path, x: np.ndarray) -> np.ndarray:
    return ort_session(path).run(None, {"x": x})[0]


def _quantize(onnx_path, calibration, tmp_path, name: str, weight_type: str = "int8", **algorithms):
    return write_qdq_model(onnx_path, calibration, tmp_path / f"{name}.onnx", per_channel=False, auto_exclude=False,
                           fidelity_target=None, weight_type=weight_type, algorithms={**NONE, **algorithms})


def test_cle_equalizes_mismatched_conv_channels_without_changing_the_float_function(write_model, tmp_path):
    source, onnx_path = _model(write_model, MISMATCHED_CONVS)
    rng = np.random.default_rng(0)
    calibration = CalibrationSet.from_arrays({"x": rng.standard_normal((64, 3, 8, 8)).astype(np.float32)},
                                             source.inputs)
    held_out = rng.standard_normal((32, 3, 8, 8)).astype(np.float32)
    plain = _quantize(onnx_path, calibration, tmp_path, "plain")
    equalized = _quantize(onnx_path, calibration, tmp_path, "cle", cle=CleOptions(mode="on"))
    ref = _run(onnx_path, held_out)
    assert array_sqnr_db(ref, _run(equalized.path, held_out)) >= array_sqnr_db(ref, _run(plain.path, held_out)) + 3
    [chain] = equalized.algorithms["cle"]
    assert chain["kept"] and chain["output_sqnr_db_after"] > chain["output_sqnr_db_before"]
    assert max(chain["range_spread_after"]) < max(chain["range_spread_before"]) / 10
    prepared = cache_dir() / "qdq" / equalized.cache_key / "prepared.onnx"
    np.testing.assert_allclose(_run(prepared, held_out), ref, rtol=1e-4, atol=1e-4)


def test_cle_equalizes_a_chain_through_a_depthwise_conv(write_model, tmp_path):
    source, onnx_path = _model(write_model, THROUGH_DEPTHWISE)
    rng = np.random.default_rng(0)
    calibration = CalibrationSet.from_arrays({"x": rng.standard_normal((32, 3, 8, 8)).astype(np.float32)},
                                             source.inputs)
    result = _quantize(onnx_path, calibration, tmp_path, "cle", cle=CleOptions(mode="on"))
    [chain] = result.algorithms["cle"]
    assert chain["kept"] and len(chain["layers"]) == 3
    held_out = rng.standard_normal((8, 3, 8, 8)).astype(np.float32)
    prepared = cache_dir() / "qdq" / result.cache_key / "prepared.onnx"
    np.testing.assert_allclose(_run(prepared, held_out), _run(onnx_path, held_out), rtol=1e-4, atol=1e-4)


def test_cle_by_default_equalizes_per_channel_weights_where_the_activation_between_needs_it(write_model,
                                                                                           tmp_path):
    """Per-channel weights give each of `a`'s channels its own step, but the activation between `a` and `b` has
    one per-tensor range for channels 10,000x apart: only equalizing the pair fixes that, and the default keeps
    the chain because its measure quantizes that activation."""
    from modelport.quantize.algorithms import enabled_algorithms

    source, onnx_path = _model(write_model, MISMATCHED_CONVS)
    rng = np.random.default_rng(0)
    calibration = CalibrationSet.from_arrays({"x": rng.standard_normal((64, 3, 8, 8)).astype(np.float32)},
                                             source.inputs)
    common = {"per_channel": True, "auto_exclude": False, "fidelity_target": None}
    default = write_qdq_model(onnx_path, calibration, tmp_path / "default.onnx", **common)
    off = write_qdq_model(onnx_path, calibration, tmp_path / "off.onnx", algorithms={"cle": CleOptions(mode="off")},
                          **common)
    [chain] = default.algorithms["cle"]
    assert chain["kept"] and chain["output_sqnr_db_after"] > chain["output_sqnr_db_before"] + 10
    held_out = rng.standard_normal((32, 3, 8, 8)).astype(np.float32)
    ref = _run(onnx_path, held_out)
    assert array_sqnr_db(ref, _run(default.path, held_out)) >= array_sqnr_db(ref, _run(off.path, held_out)) + 10
    assert "cle" not in [a.name for a, _ in enabled_algorithms(QdqSettings(algorithms={"cle": CleOptions(mode="off")}))]

def test_bias_correction_removes_the_mean_shift_that_weight_rounding_adds(write_model, tmp_path):
    source, onnx_path = _model(write_model, OUTLIER_LINEAR)
    rng = np.random.default_rng(0)
    x = (0.5 + 0.1 * rng.standard_normal((128, 64))).astype(np.float32)
    calibration = CalibrationSet.from_arrays({"x": x}, source.inputs)
    ref = _run(onnx_path, x)
    plain = _quantize(onnx_path, calibration, tmp_path, "plain")
    corrected = _quantize(onnx_path, calibration, tmp_path, "corrected",
                          bias_correction=BiasCorrectionOptions(correct=True))
    shift_before = np.abs((_run(plain.path, x) - ref).mean(axis=0))
    shift_after = np.abs((_run(corrected.path, x) - ref).mean(axis=0))
    assert shift_after.mean() < shift_before.mean() / 5
    changes = corrected.algorithms["bias_correction"]
    assert changes[0]["layer_sqnr_db_after"] > changes[0]["layer_sqnr_db_before"]
    model = changes[-1]
    assert model["kept"] and model["model_output_sqnr_db_after"] > model["model_output_sqnr_db_before"]


def test_a_corrected_layer_that_stays_float_gets_its_original_bias_back(write_model, tmp_path):
    from modelport.quantize import cache
    from modelport.quantize.algorithms.bias_correction import float_bias_quantizer
    from modelport.quantize.ort_tools import static_quantizer

    source, onnx_path = _model(write_model, OUTLIER_LINEAR)
    rng = np.random.default_rng(0)
    x = (0.5 + 0.1 * rng.standard_normal((128, 64))).astype(np.float32)
    calibration = CalibrationSet.from_arrays({"x": x}, source.inputs)
    settings = QdqSettings(per_channel=False, auto_exclude=False, fidelity_target=None,
                           algorithms={**NONE, "bias_correction": BiasCorrectionOptions(correct=True)})
    result = write_qdq_model(onnx_path, calibration, tmp_path / "corrected.onnx", settings)
    layer, bias = result.algorithms["bias_correction"][0]["layer"], result.algorithms["bias_correction"][0]["bias"]
    entry = cache.lookup(result.cache_key)
    quantize = float_bias_quantizer(entry.model_path, entry.algorithm_runs(),
                                    lambda model, out: static_quantizer(model, entry.ranges_path, settings, out),
                                    tmp_path)

    def bias_of(path) -> np.ndarray:
        return next(numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer if i.name == bias)

    original = bias_of(onnx_path)
    float_layer = quantize({layer: ("fidelity", "kept in float by the guard")})
    np.testing.assert_array_equal(bias_of(float_layer), original)  # no rounding to compensate: the float bias
    np.testing.assert_allclose(_run(float_layer, x), _run(onnx_path, x), rtol=1e-5, atol=1e-5)
    int8_layer = quantize({})
    assert {n.op_type for n in onnx.load(str(int8_layer)).graph.node} >= {"DequantizeLinear"}
    assert not np.array_equal(bias_of(entry.model_path), original)  # the int8 layer keeps its correction


@pytest.mark.parametrize("weight_type", ["int8", "uint8"])  # uint8: the u8u8 build x86 without VNNI gets
def test_adaround_beats_nearest_rounding_on_held_out_samples_and_ort_keeps_its_rounding(write_model, tmp_path,
                                                                                        weight_type):
    source, onnx_path = _model(write_model, OUTLIER_LINEAR)
    rng = np.random.default_rng(0)
    calibration = CalibrationSet.from_arrays({"x": rng.random((64, 64), dtype=np.float32)}, source.inputs)
    held_out = rng.random((256, 64), dtype=np.float32)
    nearest = _quantize(onnx_path, calibration, tmp_path, "nearest", weight_type=weight_type)
    learnt = _quantize(onnx_path, calibration, tmp_path, "adaround", weight_type=weight_type,
                       adaround=AdaRoundOptions(learn=True, steps=200))
    ref = _run(onnx_path, held_out)
    mse_nearest = np.square(_run(nearest.path, held_out) - ref).mean()
    mse_learnt = np.square(_run(learnt.path, held_out) - ref).mean()
    assert mse_learnt < 0.9 * mse_nearest  # measured 0.73 (int8)
    layer, model = learnt.algorithms["adaround"]
    assert layer["kept"] and layer["flipped"] > 0
    assert model["kept"] and model["model_output_sqnr_db_after"] > model["model_output_sqnr_db_before"]
    # ORT's quantizer rounds the written float weight to the learnt rounding: every weight but the largest-magnitude
    # one (kept as it was, so ORT's scale is unchanged) lies on its grid
    prepared = onnx.load(str(cache_dir() / "qdq" / learnt.cache_key / "prepared.onnx"))
    written = next(numpy_helper.to_array(i) for i in prepared.graph.initializer if i.name == "fc.weight")
    qdq = onnx.load(str(learnt.path))
    inits = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    dq = next(n for n in qdq.graph.node if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None
              and inits[n.input[0]].shape == written.shape)
    scale = inits[dq.input[1]]
    dequantized = (inits[dq.input[0]].astype(np.float32) - inits[dq.input[2]]) * scale
    largest = np.abs(written) == np.abs(written).max()
    np.testing.assert_allclose(dequantized[~largest], written[~largest], rtol=0, atol=1e-7)
    assert np.all(np.abs(dequantized[largest] - written[largest]) <= scale / 2 + 1e-7)
    assert np.isclose(scale, np.abs(written).max() / (127 if weight_type == "int8" else 127.5))  # ORT's own scale


def test_unknown_algorithms_and_bad_options_are_bad_input():
    with pytest.raises(BadInput, match="bogus") as caught:
        QdqSettings(algorithms={"bogus": CleOptions()})
    assert "adaround" in caught.value.hint and "cle" in caught.value.hint
    with pytest.raises(BadInput, match="steps"):
        AdaRoundOptions(steps=-1)
    with pytest.raises(BadInput, match="mode"):
        CleOptions(mode="sometimes")
    with pytest.raises(BadInput, match="CleOptions"):
        QdqSettings(algorithms={"adaround": CleOptions()})


def test_a_bad_adaround_option_on_the_command_line_exits_2(write_model, tmp_path):
    result = CliRunner().invoke(app, ["build", write_model(OUTLIER_LINEAR), "-b", "onnxruntime", "-p", "int8",
                                      "--option", "adaround_steps=-1", "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "adaround_steps" in " ".join(result.output.split()) and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("options", "name"), [({"cle": "on"}, "cle"), ({"bias_correction": "true"}, "bias_correction"),
                                               ({"adaround": "true", "adaround_steps": "30"}, "adaround")])
def test_an_ort_int8_build_of_digits_records_the_algorithm_that_ran(digits, tmp_path, options, name):
    calibration = open_calibration("modelport.examples:digits_calibration", digits.inputs, size=64)
    off = {"cle": "off", "bias_correction": "false", "adaround": "false"}
    artifact, _ = build_artifact(ModelBundle(digits), "onnxruntime", "int8", tmp_path / "out", calibration=calibration,
                                 options={**off, **options, "measure": "false"})
    ran = artifact.details["algorithms"]
    assert ran.get(name)
    assert not {"cle", "bias_correction", "adaround"} - {name} & set(ran)
    assert artifact.manifest["recipe"]["options"][name] in ("on", True)  # the option keys are the algorithms' names
