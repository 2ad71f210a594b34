"""The command line: summaries, JSON, and one paragraph with the right exit code for every bad input."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from modelport import __version__
from modelport.cli import app
from tests.models import CNN, UNSUPPORTED_OP

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def test_version_and_help():
    assert invoke("--version").output.strip() == f"modelport {__version__}"
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("export", "build", "backends", "inspect"):
        assert command in result.output


def test_export_prints_a_summary_and_writes_the_file(tmp_path, write_model):
    out = tmp_path / "m.onnx"
    result = invoke("export", write_model(CNN), "-o", str(out), "--dynamic", "x:0=batch")
    assert result.exit_code == 0, result.output
    assert out.is_file()
    for field in ("inputs", "x:batchx3x16x16:float32", "opset", "parity vs torch", "dynamo", "seconds"):
        assert field in result.output


def test_export_json_is_machine_readable(tmp_path, write_model):
    result = invoke("export", write_model(CNN), "-o", str(tmp_path / "m.onnx"), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["exporter"] == "dynamo" and data["parity"][0]["name"] == "output"


@pytest.mark.parametrize(("model", "extra", "message"), [
    ("missing.py:make", [], "does not exist"),
    ("{dir}/user_model.py:NOT_CALLABLE", [], "not a callable factory"),
    ("{dir}/user_model.py:raises", [], "raised RuntimeError: no weights here"),
    ("{dir}/user_model.py:wrong_type", [], "returned a str"),
    ("{dir}/user_model.py:bare", ["--input", "x:1xAx3"], "Cannot parse the shape"),
    ("{dir}/user_model.py:bare", ["--input", "x:1x7x16x16"], "does not accept inputs"),
    ("{dir}/user_model.py:make", ["--dynamic", "y:0=batch"], "names input 'y'"),
    ("no_such_package.mod:make", [], "Cannot import module"),
])
def test_bad_input_is_one_paragraph_and_exit_code_2(tmp_path, write_model, model, extra, message):
    write_model(CNN + "\nNOT_CALLABLE = 3\n\ndef raises():\n    raise RuntimeError('no weights here')\n"
                "\n\ndef wrong_type():\n    return 'a model'\n")
    result = invoke("export", model.format(dir=tmp_path), "-o", str(tmp_path / "m.onnx"), *extra)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_an_unknown_flag_is_a_usage_error_not_an_internal_one():
    result = invoke("inspect", "--no-such-flag", "model.onnx")
    assert result.exit_code == 2
    assert "No such option" in result.output and "internal error" not in result.output


def test_an_op_the_exporters_cannot_handle_is_a_failed_step_naming_it(tmp_path, write_model):
    result = invoke("export", write_model(UNSUPPORTED_OP), "-o", str(tmp_path / "m.onnx"))
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "modelport_test::twist" in text and "Twister" in text
    assert "Traceback" not in result.output


def test_debug_shows_the_traceback(tmp_path):
    result = invoke("--debug", "export", "missing.py:make", "-o", str(tmp_path / "m.onnx"))
    assert result.exit_code == 2
    assert "Traceback" in result.output


def test_inspect_an_onnx_file(tmp_path, write_model):
    out = tmp_path / "m.onnx"
    assert invoke("export", write_model(CNN), "-o", str(out)).exit_code == 0
    result = invoke("inspect", str(out), "--json")
    data = json.loads(result.stdout)
    assert data["inputs"] == ["x:1x3x16x16:float32"] and data["ops"]["Conv"] == 1
