"""The ONNX exporter: valid files that match PyTorch, at other sizes where axes are dynamic, written atomically."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from modelport.errors import BadInput, StepFailed
from modelport.exporters.onnx import export_onnx
from modelport.model import load_model
from modelport.ort_session import ort_session
from tests.models import CNN, ENCODER, MLP, TWO_OUTPUTS, UNSUPPORTED_OP


def _run(path, feeds):
    session = ort_session(path)
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))


@pytest.mark.parametrize("body", [CNN, MLP], ids=["cnn-batchnorm", "mlp"])
def test_export_matches_torch_within_tolerance(tmp_path, write_model, body):
    source = load_model(write_model(body))
    report = export_onnx(source, tmp_path / "m.onnx")
    onnx.checker.check_model(str(report.path))
    assert report.exporter == "dynamo" and report.fallback_reason is None
    assert report.cases[:4] == ["example", "random-0", "random-1", "random-2"]
    assert all(p.max_rel <= 1e-4 for p in report.parity)
    assert report.size_bytes == report.path.stat().st_size


def test_dynamic_batch_and_sequence_run_at_other_sizes(tmp_path, write_model):
    source = load_model(write_model(ENCODER), dynamic=["ids:0=batch", "ids:1=seq", "mask:0=batch", "mask:1=seq"])
    report = export_onnx(source, tmp_path / "enc.onnx")
    assert report.inputs[0].shape == ("batch", "seq")
    assert any("batch=" in c for c in report.cases)
    rng = np.random.default_rng(0)
    for batch, seq in [(1, 5), (7, 20)]:
        feeds = {"ids": rng.integers(0, 100, (batch, seq)), "mask": np.ones((batch, seq), np.int64)}
        feeds["mask"][0, seq // 2:] = 0
        np.testing.assert_allclose(_run(report.path, feeds)["output"], source.run(feeds)["output"],
                                   rtol=1e-4, atol=1e-5)


def test_two_outputs_keep_their_names_and_are_each_checked(tmp_path, write_model):
    source = load_model(write_model(TWO_OUTPUTS))
    report = export_onnx(source, tmp_path / "two.onnx")
    assert [s.name for s in report.outputs] == ["logits", "embedding"]
    assert [p.name for p in report.parity] == ["logits", "embedding"]


def test_parity_above_tolerance_fails_and_leaves_nothing_behind(tmp_path, write_model):
    source = load_model(write_model(CNN))
    target = tmp_path / "strict.onnx"
    with pytest.raises(StepFailed, match="does not match PyTorch above tolerance"):
        export_onnx(source, target, atol=1e-12)
    assert list(tmp_path.iterdir()) == [tmp_path / "user_model.py"]


def test_failed_export_keeps_the_previous_file(tmp_path, write_model):
    target = tmp_path / "m.onnx"
    export_onnx(load_model(write_model(CNN)), target)
    before = target.read_bytes()
    with pytest.raises(StepFailed):
        export_onnx(load_model(write_model(UNSUPPORTED_OP, name="bad.py")), target)
    assert target.read_bytes() == before


def test_unsupported_op_names_the_op_and_its_module(tmp_path, write_model):
    source = load_model(write_model(UNSUPPORTED_OP))
    with pytest.raises(StepFailed) as info:
        export_onnx(source, tmp_path / "bad.onnx")
    message = str(info.value)
    assert "modelport_test::twist" in message
    assert "block (Twister)" in message


def test_output_must_be_an_onnx_file(tmp_path, write_model):
    with pytest.raises(BadInput, match=r"must end in \.onnx"):
        export_onnx(load_model(write_model(MLP)), tmp_path / "model.bin")


def test_example_model_exports_and_keeps_its_accuracy(tmp_path, digits, digits_test_data):
    report = export_onnx(digits, tmp_path / "digits.onnx")
    images, labels = digits_test_data
    logits = _run(report.path, {"x": images})["output"]
    assert (logits.argmax(1) == labels).mean() > 0.95
