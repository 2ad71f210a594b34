"""The Optimum peer (benchmarks/optimum_peer.py) on a tiny BERT encoder exported by modelport, with real
Optimum and ONNX Runtime. Skipped where optimum-onnx is not installed (the project's own venv)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from benchmarks.optimum_peer import INSTALL, build_optimum_avx2, main
from modelport.bundle import ModelBundle
from modelport.calibration import CalibrationSet
from modelport.model import load_model
from modelport.ort_session import ort_session
from modelport.similarity import row_cosines

SEQ, VOCAB = 16, 200

TINY_BERT = f'''
import torch
from torch import nn


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        from transformers import BertConfig, BertModel

        torch.manual_seed(0)
        config = BertConfig(vocab_size={VOCAB}, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=64)
        self.bert = BertModel(config, add_pooling_layer=False)

    def forward(self, input_ids, attention_mask):
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def encoder():
    return Encoder().eval(), (torch.randint(1, {VOCAB}, (1, {SEQ})), torch.ones(1, {SEQ}, dtype=torch.int64))
'''


def _tokens(n: int, seed: int) -> dict[str, np.ndarray]:
    """Random tokens with random real lengths; the padding is zeroed and masked out."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, SEQ + 1, n)
    mask = (np.arange(SEQ)[None, :] < lengths[:, None]).astype(np.int64)
    return {"input_ids": rng.integers(1, VOCAB, (n, SEQ)).astype(np.int64) * mask, "attention_mask": mask}


def _run(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return ort_session(path, threads=1).run(None, feeds)[0]


@pytest.fixture(scope="module")
def peer(tmp_path_factory):
    """(float ONNX path, calibration arrays, the peer's quantized model) for the tiny encoder."""
    pytest.importorskip("optimum.onnxruntime", reason=f"the Optimum peer needs `{INSTALL}`")
    pytest.importorskip("datasets", reason=f"the Optimum peer needs `{INSTALL}`")
    root = tmp_path_factory.mktemp("optimum")
    (root / "tiny_bert.py").write_text(TINY_BERT)
    source = load_model(f"{root / 'tiny_bert.py'}:encoder", dynamic=["input_ids:0=batch", "attention_mask:0=batch"])
    onnx_path = ModelBundle(source).onnx_path
    arrays = _tokens(32, seed=1)
    calibration = CalibrationSet.from_arrays(arrays, source.inputs)
    return onnx_path, arrays, build_optimum_avx2(onnx_path, calibration, root / "out" / "optimum_avx2.onnx")


def test_optimum_avx2_quantizes_every_matmul_in_qdq_with_symmetric_uint8_weights(peer):
    onnx_path, _, quantized = peer
    model = onnx.load(quantized)
    made_by = {out: node for node in model.graph.node for out in node.output}
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    assert len(matmuls) == sum(n.op_type == "MatMul" for n in onnx.load(onnx_path).graph.node) > 0
    for node in matmuls:
        assert all(made_by[i].op_type == "DequantizeLinear" for i in node.input), node.name
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    weight_points = [weights[made_by[n.input[1]].input[2]] for n in matmuls if made_by[n.input[1]].input[0] in weights]
    assert weight_points, "the MatMul weights are quantized initializers"
    assert all(z.dtype == np.uint8 and (z == 128).all() for z in weight_points)  # avx2: uint8, symmetric
    assert any(z.size > 1 for z in weight_points)  # per-channel by default


def test_optimum_avx2_model_runs_close_to_the_float_model(peer):
    onnx_path, _, quantized = peer
    feeds = _tokens(64, seed=2)
    cosine = row_cosines(*(_run(p, feeds) for p in (onnx_path, quantized)))
    assert cosine.min() >= 0.995 and cosine.mean() >= 0.999, (cosine.min(), cosine.mean())  # measured 0.9996, 0.9998


def test_command_line_builds_the_same_model_from_an_npz(peer, tmp_path, capsys):
    onnx_path, arrays, quantized = peer
    np.savez(tmp_path / "calib.npz", **arrays)
    assert main([str(onnx_path), str(tmp_path / "calib.npz"), str(tmp_path / "cli.onnx")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cli.onnx")
    feeds = _tokens(8, seed=3)
    np.testing.assert_array_equal(_run(tmp_path / "cli.onnx", feeds), _run(quantized, feeds))


def test_missing_optimum_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "optimum.onnxruntime", None)  # what Python does where it is not installed
    with pytest.raises(ImportError, match="pip install 'optimum-onnx\\[onnxruntime\\]' datasets"):
        build_optimum_avx2(tmp_path / "model.onnx", CalibrationSet.from_arrays(_tokens(2, 0), []), tmp_path / "q.onnx")
