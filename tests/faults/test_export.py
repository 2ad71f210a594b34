"""Exports that would be silently wrong or wrongly rejected: frozen control flow, eager's attention fast path,
NaN in PyTorch's own output."""

from __future__ import annotations

import numpy as np
import pytest

from modelport.exporters.onnx import export_onnx
from modelport.exporters.parity import output_error
from modelport.model import load_model
from modelport.ort_session import ort_session
from modelport.similarity import row_cosines
from tests.test_cli import invoke

DATA_DEPENDENT_IF = '''
class Branchy(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x - 1


def make():
    return Branchy(), (torch.rand(2, 4),)
'''

BATCH_SIZE_IF = '''
class BatchBranch(nn.Module):
    def forward(self, x):
        if x.shape[0] > 1:
            return x * 2
        return x - 1


def make():
    return BatchBranch(), (torch.randn(2, 4),)
'''

PADDED_ENCODER = '''
class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True), 2)

    def forward(self, x, mask):
        return self.enc(x, src_key_padding_mask=mask)


def make():
    torch.manual_seed(0)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, 4:] = True
    return Encoder().eval(), (torch.randn(2, 6, 16), mask)
'''

LOG = '''
class Log(nn.Module):
    def forward(self, x):
        return torch.log(x)


def make():
    return Log(), (torch.randn(2, 4),)
'''

ALL_NAN = '''
class AllNaN(nn.Module):
    def forward(self, x):
        return x * float("nan")


def make():
    return AllNaN(), (torch.randn(2, 4),)
'''


def _text(result) -> str:
    return " ".join(result.output.split())


def _line_of(ref: str, code: str) -> str:
    path = ref.rpartition(":")[0]
    with open(path) as f:
        number = next(i for i, line in enumerate(f, 1) if code in line)
    return f"{path}:{number}"


def test_a_data_dependent_if_fails_export_naming_the_exporters_reason_and_the_users_line(tmp_path, write_model):
    ref = write_model(DATA_DEPENDENT_IF)
    result = invoke("export", ref, "-o", str(tmp_path / "m.onnx"))
    assert result.exit_code == 1, result.output
    text = _text(result)
    assert "GuardOnDataDependentSymNode" in text and "froze the model's Python control flow" in text
    assert f"{_line_of(ref, 'if x.sum() > 0')} `if x.sum() > 0:`" in text
    assert "torch.where" in text and "--allow-frozen-trace" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["user_model.py"]


def test_an_allowed_frozen_trace_is_still_checked_and_the_negated_case_catches_the_other_branch(tmp_path,
                                                                                                write_model):
    ref = write_model(DATA_DEPENDENT_IF)
    result = invoke("export", ref, "-o", str(tmp_path / "m.onnx"), "--allow-frozen-trace")
    assert result.exit_code == 1, result.output
    text = _text(result)
    assert "does not match PyTorch" in text and "on 'negated' inputs" in text
    assert _line_of(ref, "if x.sum() > 0") in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["user_model.py"]


def test_an_allowed_unchecked_frozen_trace_is_written_with_its_fallback_reason_and_a_note(tmp_path, write_model):
    ref = write_model(DATA_DEPENDENT_IF)
    out = tmp_path / "m.onnx"
    result = invoke("export", ref, "-o", str(out), "--allow-frozen-trace", "--no-check")
    assert result.exit_code == 0, result.output
    text = _text(result)
    assert "torchscript (fallback: GuardOnDataDependentSymNode" in text
    assert "note: The TorchScript trace froze Python control flow" in text and _line_of(ref, "if x.sum()") in text
    assert out.is_file()


def test_a_branch_on_a_dynamic_batch_size_is_caught_at_batch_one(tmp_path, write_model):
    result = invoke("export", write_model(BATCH_SIZE_IF), "-o", str(tmp_path / "m.onnx"), "--dynamic", "x:0=batch")
    assert result.exit_code == 1, result.output
    assert "does not match PyTorch" in _text(result) and "on 'batch=1' inputs" in _text(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["user_model.py"]


def test_a_transformer_encoder_with_a_padding_mask_exports_and_matches_eager_at_every_real_token(tmp_path,
                                                                                               write_model):
    source = load_model(write_model(PADDED_ENCODER))
    report = export_onnx(source, tmp_path / "enc.onnx")
    assert report.exporter == "dynamo" and all(p.max_rel <= 1e-4 for p in report.parity)
    assert any("zero-fills the padded positions of output 'output'" in n for n in report.notes)
    feeds = source.example_feeds()
    got = ort_session(report.path).run(None, feeds)[0]
    eager = source.run(feeds, fast_path=True)["output"]
    real = ~feeds["mask"]
    np.testing.assert_allclose(got[real], eager[real], atol=1e-5)
    assert np.all(eager[~real] == 0) and not np.allclose(got[~real], 0)


def test_a_transformer_encoder_with_a_padding_mask_builds_int8_for_onnxruntime(tmp_path, write_model):
    from modelport.builder import build_artifact
    from modelport.bundle import ModelBundle
    from modelport.calibration import CalibrationSet
    from modelport.loading import load_artifact

    source = load_model(write_model(PADDED_ENCODER))
    rng = np.random.default_rng(0)
    mask = np.zeros((100, 6), bool)
    mask[::2, 4:] = True
    calibration = CalibrationSet.from_arrays(
        {"x": rng.standard_normal((100, 6, 16)).astype(np.float32), "mask": mask}, source.inputs)
    artifact, _ = build_artifact(ModelBundle(source, onnx_dir=tmp_path / "exports"), "onnxruntime", "int8",
                                 tmp_path / "int8", options={"measure": False}, calibration=calibration)
    feeds = source.example_feeds()
    got = load_artifact(artifact.path).run(feeds)["output"]
    ref = source.run(feeds)["output"]
    assert got.shape == ref.shape and np.all(np.isfinite(got))
    cosine = float(row_cosines(got.reshape(1, -1), ref.reshape(1, -1))[0])
    assert cosine > 0.95


def test_a_transformer_encoder_with_a_padding_mask_converts_to_tflite(write_model):
    pytest.importorskip("litert_torch", reason="litert-torch is not installed (pip install 'modelport[tflite]')")
    from modelport.exporters.litert import PARITY_RTOL, convert_to_tflite

    export = convert_to_tflite(load_model(write_model(PADDED_ENCODER)))
    assert export.path.is_file() and all(p["max_rel"] < PARITY_RTOL for p in export.parity)


def test_nan_in_pytorchs_own_output_is_named_with_its_cases_not_reported_as_a_mismatch(tmp_path, write_model):
    out = tmp_path / "log.onnx"
    result = invoke("export", write_model(LOG), "-o", str(out))
    assert result.exit_code == 0, result.output
    text = _text(result)
    assert "PyTorch's own output 'output' is NaN or inf on the check inputs" in text
    assert "values on 'example'" in text and "not compared" in text and "does not match" not in text
    assert out.is_file()


def test_an_output_nan_everywhere_in_pytorch_cannot_be_checked_and_is_not_written(tmp_path, write_model):
    result = invoke("export", write_model(ALL_NAN), "-o", str(tmp_path / "m.onnx"))
    assert result.exit_code == 1, result.output
    assert "Cannot check output 'output'" in _text(result) and "--no-check" in _text(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["user_model.py"]


def test_nan_matches_only_where_pytorch_is_not_finite():
    nan = float("nan")
    same = output_error(np.array([nan, 1.0, np.inf]), np.array([nan, 1.0, np.inf]))
    assert (same.max_abs, same.torch_nonfinite) == (0.0, 2)
    assert output_error(np.array([nan, 1.0]), np.array([3.0, 1.0])).max_abs == 0.0
    assert output_error(np.array([2.0, 1.0]), np.array([nan, 1.0])).max_rel == np.inf
