"""The ONNX Runtime backend through the whole path (build_artifact -> manifest -> load_artifact -> Runner) on
the example CNN, a BERT-style encoder and an MLP, with real ONNX Runtime."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from modelport.backends.onnxruntime import SLOWER_THAN_FP32, cpu_choice
from modelport.backends.probes import GUARD_MARGIN_DB
from modelport.builder import build_artifact
from modelport.bundle import ModelBundle
from modelport.calibration import CalibrationSet
from modelport.errors import BadInput
from modelport.examples import digits_data
from modelport.loading import load_artifact
from modelport.model import load_model
from modelport.ort_session import ort_session
from modelport.similarity import mean_cosine

SEQ, VOCAB = 32, 500

ENCODER = f'''
class Encoder(nn.Module):
    """A small BERT with what training leaves in real encoders: outlier LayerNorm channels, peaked attention."""

    def __init__(self):
        super().__init__()
        from transformers import BertConfig, BertModel

        torch.manual_seed(0)
        config = BertConfig(vocab_size={VOCAB}, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=512, max_position_embeddings=64, initializer_range=0.05)
        self.bert = BertModel(config, add_pooling_layer=False)
        with torch.no_grad():
            for module in self.bert.modules():
                if isinstance(module, nn.LayerNorm):
                    module.weight[[3, 77]] *= 8.0
                    module.bias.normal_(0, 0.05)
            for layer in self.bert.encoder.layer:
                layer.attention.self.query.weight *= 4.0
                layer.attention.self.key.weight *= 4.0
                layer.attention.self.value.weight *= 2.0
                layer.attention.output.dense.weight *= 2.0

    def forward(self, input_ids, attention_mask):
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def encoder():
    ids = torch.randint(0, {VOCAB}, (2, {SEQ}))
    mask = torch.ones(2, {SEQ}, dtype=torch.int64)
    mask[1, {SEQ // 2}:] = 0
    return Encoder().eval(), (ids, mask)


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 10))

    def forward(self, x):
        return self.layers(x)


def mlp():
    return MLP().eval(), (torch.randn(1, 32),)
'''


def _token_data(n: int, seed: int) -> dict[str, np.ndarray]:
    """Varied padded inputs: random tokens, random lengths, padding zeroed."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, SEQ + 1, n)
    mask = (np.arange(SEQ)[None, :] < lengths[:, None]).astype(np.int64)
    return {"input_ids": rng.integers(1, VOCAB, (n, SEQ)).astype(np.int64) * mask, "attention_mask": mask}


@pytest.fixture(scope="module")
def models(tmp_path_factory, digits):
    """name -> (SourceModel, bundle, calibration, evaluation feeds) for the CNN, the encoder and the MLP."""
    pytest.importorskip("transformers", reason="the BERT-style encoder is built from a transformers config")
    path = tmp_path_factory.mktemp("models") / "models.py"
    path.write_text("import torch\nfrom torch import nn\n" + ENCODER)
    enc = load_model(f"{path}:encoder", dynamic=["input_ids:0=batch", "attention_mask:0=batch"])
    mlp = load_model(f"{path}:mlp", dynamic=["x:0=batch"])
    rng = np.random.default_rng(0)
    x_train, y_train = digits_data("train")
    x_test, _ = digits_data("test")
    return {
        "digits": (digits, ModelBundle(digits),
                   CalibrationSet.from_arrays({"x": x_train}, digits.inputs, labels=y_train, size=300),
                   {"x": x_test}),
        "encoder": (enc, ModelBundle(enc), CalibrationSet.from_arrays(_token_data(300, 1), enc.inputs),
                    _token_data(64, 2)),
        "mlp": (mlp, ModelBundle(mlp),
                CalibrationSet.from_arrays({"x": rng.standard_normal((200, 32)).astype(np.float32)}, mlp.inputs),
                {"x": rng.standard_normal((64, 32)).astype(np.float32)}),
    }


@pytest.fixture(scope="module")
def built(models, tmp_path_factory):
    """Build each (model, precision, options) once per module; returns (artifact, reused)."""
    root = tmp_path_factory.mktemp("artifacts")
    done: dict = {}

    def build(model: str, precision: str, **options):
        key = (model, precision, json.dumps(options, sort_keys=True))
        if key not in done:
            _, bundle, calibration, _ = models[model]
            out = root / f"{model}-{precision}-{len(done)}"
            done[key] = build_artifact(bundle, "onnxruntime", precision, out, options={"measure": False, **options}
                                       if precision != "fp32" else options, calibration=calibration)
        return done[key]

    return build


MIN_COSINE = {"fp32": 0.99999, "fp16": 0.999, "int8": 0.99, "int8-dynamic": 0.98}


@pytest.mark.parametrize("model", ["digits", "encoder", "mlp"])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8", "int8-dynamic"])
def test_every_precision_runs_close_to_torch(models, built, model, precision):
    source, _, _, feeds = models[model]
    artifact, _ = built(model, precision)
    assert (artifact.path / "model.onnx").is_file()
    assert artifact.details["main_file"] == "model.onnx" and artifact.details["ops"]
    runner = load_artifact(artifact.path, threads=2)
    assert [s.name for s in runner.inputs] == source.input_names
    got = runner.run(feeds)[source.output_names[0]]
    ref = source.run(feeds)[source.output_names[0]]
    assert got.shape == ref.shape and got.dtype == np.float32
    assert mean_cosine(ref, got) >= MIN_COSINE[precision]


def test_int8_keeps_digits_accuracy_within_one_point(models, built):
    _, _, _, feeds = models["digits"]
    _, labels = digits_data("test")
    accuracy = {}
    for precision in ("fp32", "int8"):
        artifact, _ = built("digits", precision)
        accuracy[precision] = (load_artifact(artifact.path).run(feeds)["output"].argmax(1) == labels).mean()
    assert accuracy["int8"] >= accuracy["fp32"] - 0.01
    details = built("digits", "int8")[0].details
    assert details["op_set"]["kind"] == "cnn" and details["int8_ops"]["Conv"] == 2
    assert details["calibration"]["samples_seen"] == 300


def test_fused_fp32_encoder_has_fewer_nodes_and_the_same_outputs(models, built):
    _, bundle, _, feeds = models["encoder"]
    artifact, _ = built("encoder", "fp32")
    plain, _ = built("encoder", "fp32", fusions="off", optimization="basic")
    fusions = artifact.details["fusions"]
    assert fusions["applied"] and fusions["ort"].get("SkipLayerNormalization", 0) > 0
    assert fusions["attention"]["op"] == "Attention" and fusions["attention"]["fused"] == 2
    fused_nodes = len(onnx.load(str(artifact.main_file)).graph.node)
    assert fused_nodes < len(onnx.load(str(bundle.onnx_path)).graph.node)
    assert fused_nodes < len(onnx.load(str(plain.main_file)).graph.node)
    fused_out = load_artifact(artifact.path).run(feeds)["output"]
    plain_out = load_artifact(plain.path).run(feeds)["output"]
    np.testing.assert_allclose(fused_out, plain_out, rtol=1e-4, atol=1e-4 * np.abs(plain_out).max())


def test_static_int8_encoder_keeps_cosine_where_by_hand_quantize_static_collapses(models, built, tmp_path):
    from benchmarks.peers import build_ort_static_defaults

    source, bundle, calibration, feeds = models["encoder"]
    artifact, _ = built("encoder", "int8")
    ref = source.run(feeds)["output"]
    ours = mean_cosine(ref, load_artifact(artifact.path).run(feeds)["output"])
    by_hand = build_ort_static_defaults(bundle.onnx_path, calibration, tmp_path / "by_hand.onnx")
    theirs = mean_cosine(ref, ort_session(by_hand).run(None, feeds)[0])
    assert ours >= 0.99
    assert theirs < ours - 0.02
    details = artifact.details
    assert details["op_set"]["kind"] == "transformer"
    assert details["smoothed"], "the outlier LayerNorm channels should have been smoothed"
    assert "smoothing-scale" in details["kept_float_summary"]
    # the attention MatMuls of two runtime operands are inside the fused MultiHeadAttention, in float
    assert details["fusions"]["attention"]["op"] == "MultiHeadAttention" and "MatMul" in details["int8_ops"]
    assert details["fidelity_on_calibration"]["met"]
    assert any(cpu in details["cpu_choice"]["reason"].upper() for cpu in ("VNNI", "ARM"))


def test_analysis_samples_bounds_the_int8_checks_but_not_the_ranges(models, built, tmp_path):
    _, bundle, calibration, _ = models["mlp"]
    details = built("mlp", "int8", analysis_samples=16)[0].details
    assert details["fidelity_on_calibration"]["samples"] == 16
    assert details["calibration"]["samples_seen"] == len(calibration)
    with pytest.raises(BadInput, match="analysis_samples"):
        build_artifact(bundle, "onnxruntime", "int8", tmp_path / "none", options={"analysis_samples": 0},
                       calibration=calibration)


def test_int8_latency_is_measured_and_a_slower_artifact_warns(models, tmp_path):
    _, bundle, calibration, _ = models["mlp"]
    artifact, _ = build_artifact(bundle, "onnxruntime", "int8", tmp_path / "timed-int8", calibration=calibration)
    latency = artifact.details["latency"]
    assert latency["threads"] >= 1 and latency["fp32_ms"] > 0 and latency["artifact_ms"] > 0
    assert (latency["speedup"] < SLOWER_THAN_FP32) == bool(latency["warning"]) == ("warning" in artifact.details)


def test_unknown_and_misplaced_options_are_rejected(models, tmp_path):
    _, bundle, calibration, _ = models["mlp"]
    with pytest.raises(BadInput, match="colour"):
        build_artifact(bundle, "onnxruntime", "fp32", tmp_path / "a", options={"colour": "blue"})
    with pytest.raises(BadInput, match="method"):
        build_artifact(bundle, "onnxruntime", "fp32", tmp_path / "b", options={"method": "entropy"})
    with pytest.raises(BadInput, match="mse"):
        build_artifact(bundle, "onnxruntime", "int8", tmp_path / "c", options={"method": "mse"},
                       calibration=calibration)
    assert not (tmp_path / "a").exists()


def test_rebuild_with_the_same_key_is_reused(models, tmp_path):
    _, bundle, _, _ = models["mlp"]
    first, reused_first = build_artifact(bundle, "onnxruntime", "fp32", tmp_path / "art")
    stamp = (first.path / "model.onnx").stat().st_mtime_ns
    second, reused_second = build_artifact(bundle, "onnxruntime", "fp32", tmp_path / "art")
    assert not reused_first and reused_second
    assert (second.path / "model.onnx").stat().st_mtime_ns == stamp
    third, reused_third = build_artifact(bundle, "onnxruntime", "fp32", tmp_path / "art",
                                         options={"optimization": "basic"})
    assert not reused_third and third.manifest["recipe"]["options"]["optimization"] == "basic"


def test_int8_without_calibration_is_bad_input_naming_calib(models, tmp_path):
    _, bundle, _, _ = models["mlp"]
    with pytest.raises(BadInput) as info:
        build_artifact(bundle, "onnxruntime", "int8", tmp_path / "x")
    assert "--calib" in str(info.value) and "synthetic" in str(info.value)


def test_runner_uses_the_thread_count_and_the_manifest_specs(models, built):
    source, _, _, _ = models["digits"]
    artifact, _ = built("digits", "fp32")
    runner = load_artifact(artifact.path, threads=1)
    assert runner.session.get_session_options().intra_op_num_threads == 1
    assert "CPUExecutionProvider" in runner.providers
    assert runner.inputs == source.inputs and runner.outputs == source.outputs
    with pytest.raises(BadInput, match="x"):
        runner.run({})


def test_int8_choices_follow_the_cpu_features():
    avx2 = cpu_choice(frozenset({"avx", "avx2", "fma"}), "x86_64")
    assert (avx2.label, avx2.reduce_range) == ("u8s8", True) and "VPMADDUBSW" in avx2.reason
    vnni = cpu_choice(frozenset({"avx2", "avx512f", "avx512_vnni"}), "x86_64")
    assert (vnni.label, vnni.reduce_range) == ("u8s8", False)
    arm = cpu_choice(frozenset(), "aarch64")
    assert arm.label == "s8s8" and not arm.reduce_range


def test_fp16_keeps_float32_io_and_lists_what_stayed_fp32(models, built):
    artifact, _ = built("encoder", "fp16")
    details = artifact.details
    assert details["kept_fp32"]["Softmax"].startswith("accuracy")
    assert details["fp16_ops"]
    model = onnx.load(str(artifact.main_file))
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for i in model.graph.output)


def test_cli_builds_an_onnxruntime_artifact(tmp_path):
    from typer.testing import CliRunner

    from modelport.cli import app

    out = tmp_path / "cli-int8"
    result = CliRunner().invoke(app, [
        "build", "modelport.examples:digits_cnn", "--backend", "onnxruntime", "--precision", "int8",
        "--calib", "modelport.examples:digits_calibration", "--calib-size", "120", "--dynamic", "x:0=batch",
        "--option", "method=entropy", "--option", "measure=false", "-o", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["backend"] == "onnxruntime" and manifest["recipe"]["options"]["method"] == "entropy"
    assert manifest["details"]["calibration"]["samples_seen"] == 120
    assert (out / "model.onnx").is_file() and "onnxruntime int8" in result.output


def test_static_int8_keeps_the_closer_of_7_bit_u8s8_and_8_bit_u8u8_where_the_cpu_saturates(models, built):
    import onnx.numpy_helper

    artifact, _ = built("digits", "int8")
    details = artifact.details
    weights = {onnx.numpy_helper.to_array(i).dtype for i in onnx.load(str(artifact.main_file)).graph.initializer
               if i.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) and len(i.dims) > 1}
    if not cpu_choice().reduce_range:  # VNNI or ARM: 8-bit weights do not saturate, nothing to weigh
        assert "fidelity_guard" not in details and weights == {np.dtype(np.int8)}
        return
    guard = details["fidelity_guard"]
    scores = guard["sqnr_db"]
    assert set(scores) == {"cpu_choice", "full_range"} and guard["samples"] == 64
    expected = "full_range" if scores["full_range"] > scores["cpu_choice"] + GUARD_MARGIN_DB else "cpu_choice"
    assert guard["chosen"] == expected
    chosen = {"full_range": ("u8u8", False, np.uint8), "cpu_choice": ("u8s8", True, np.int8)}[expected]
    assert (details["cpu_choice"]["quant_type"], details["cpu_choice"]["reduce_range"]) == chosen[:2]
    assert weights == {np.dtype(chosen[2])}
    user = built("digits", "int8", reduce_range="true")[0].details
    assert "fidelity_guard" not in user and "reduce_range=True chosen by the user" in user["cpu_choice"]["reason"]
