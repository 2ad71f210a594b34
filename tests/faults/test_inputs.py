"""Bad user code, model files, calibration data and input specs: each is one exit-2 paragraph that names the
file and the cause, and nothing is written where the artifact would have been."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.models import CNN
from tests.test_cli import invoke

CALIBRATED = CNN + '''

def calib():
    return [torch.randn(1, 3, 16, 16) for _ in range(4)]


def calib_exits():
    import sys

    sys.exit(3)
'''


def squeezed(text: str) -> str:
    """Text without whitespace: rich wraps long paths anywhere, even inside a word."""
    return "".join(text.split())


def assert_refused(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    for fragment in fragments:
        assert squeezed(fragment) in squeezed(result.output)
    assert "Traceback" not in result.output and "internal error" not in result.output


def cnn_data(tmp_path, name: str = "calib.npz", compressed: bool = False, **arrays) -> str:
    path = tmp_path / name
    data = arrays or {"x": np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32)}
    (np.savez_compressed if compressed else np.savez)(path, **data)
    return str(path)


def build_int8(tmp_path, model: str, calib: str):
    out = tmp_path / "artifact"
    return invoke("build", model, "-b", "onnxruntime", "-p", "int8", "--calib", calib, "-o", str(out)), out


# user code


def test_a_factory_calling_sys_exit_is_exit_2_naming_it_and_writes_nothing(tmp_path, write_model):
    model = write_model(CNN + "\n\ndef quits():\n    import sys\n    sys.exit(0)\n", factory="quits")
    result = invoke("export", model, "-o", str(tmp_path / "m.onnx"))
    assert_refused(result, "called sys.exit(0) while calling", "user_model.py:quits", "__main__")
    assert not (tmp_path / "m.onnx").exists()


def test_a_model_file_parsing_arguments_at_import_is_exit_2_and_its_usage_names_the_file(tmp_path, write_model):
    model = write_model("import argparse\n"
                        "parser = argparse.ArgumentParser()\nparser.add_argument('--epochs', required=True)\n"
                        "parser.parse_args()\n" + CNN)
    result = invoke("--verbose", "export", model, "-o", str(tmp_path / "m.onnx"))
    assert_refused(result, "called sys.exit(2) while importing", "user_model.py", 'if __name__ == "__main__":')
    assert "usage: modelport" not in result.output and "usage: " in result.output  # argparse names the user's file
    assert not (tmp_path / "m.onnx").exists()


def test_a_calibration_callable_calling_sys_exit_is_exit_2_and_builds_nothing(tmp_path, write_model):
    model = write_model(CALIBRATED)
    result, out = build_int8(tmp_path, model, model.replace(":make", ":calib_exits"))
    assert_refused(result, "called sys.exit(3) while calling", "user_model.py:calib_exits")
    assert not out.exists()


def test_what_user_code_prints_stays_off_the_json_on_stdout(tmp_path, write_model):
    """The console shows user code's prints as it shows other packages' output: in the command's log, or on stderr
    under --verbose; never on stdout."""
    model = write_model("print('imported')\n" + CNN.replace("    torch.manual_seed(0)", "    print('made')\n"
                                                                                          "    torch.manual_seed(0)"))
    result = invoke("--verbose", "export", model, "-o", str(tmp_path / "m.onnx"), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["exporter"] == "dynamo"
    assert "imported" in result.stderr and "made" in result.stderr


# calibration data


@pytest.mark.parametrize("compressed", [False, True], ids=["stored", "compressed"])
def test_a_damaged_npz_member_is_exit_2_naming_the_file_and_member(tmp_path, write_model, compressed):
    path = cnn_data(tmp_path, compressed=compressed)
    data = bytearray(Path(path).read_bytes())
    data[len(data) // 2] ^= 0xFF  # a byte of the array data, well past the headers
    Path(path).write_bytes(bytes(data))
    result, out = build_int8(tmp_path, write_model(CNN), path)
    assert_refused(result, f"{path}[x] is damaged", "Bad CRC-32")
    assert not out.exists()


def test_a_truncated_npy_in_a_directory_is_exit_2_naming_the_file(tmp_path, write_model):
    folder = tmp_path / "samples"
    folder.mkdir()
    for i in range(3):
        np.save(folder / f"{i}.npy", np.zeros((3, 16, 16), np.float32))
    last = folder / "2.npy"
    last.write_bytes(last.read_bytes()[:-100])
    result, out = build_int8(tmp_path, write_model(CNN), str(folder))
    assert_refused(result, f"{last} is truncated")
    assert not out.exists()


def test_float64_data_beyond_float32_is_exit_2_naming_the_input_and_the_samples(tmp_path, write_model):
    x = np.ones((8, 3, 16, 16))
    x[2:5, 0, 0, 0] = 1e300
    path = cnn_data(tmp_path, x=x)
    model = write_model(CNN)
    result, out = build_int8(tmp_path, model, path)
    assert_refused(result, f"{path} sample 2: input 'x' is float64", "outside the range of float32")
    assert not out.exists()
    report = invoke("calib", "inspect", path, "--model", model, "--json")
    assert report.exit_code == 2, report.output
    dtype_check = next(c for c in json.loads(report.stdout)["checks"] if c["check"] == "dtype")
    assert dtype_check["failed_samples"] == 3 and "input 'x'" in dtype_check["messages"][0]


# input specs and options


@pytest.mark.parametrize(("spec", "differs"), [
    ("x:4x3x16x16", "(different shape)"),
    ("x:1x3x16x16:float16", "(different dtype)"),
])
def test_input_that_differs_from_the_factory_examples_is_exit_2(tmp_path, write_model, spec, differs):
    result = invoke("export", write_model(CNN), "-o", str(tmp_path / "m.onnx"), "--input", spec)
    assert_refused(result, f"--input {spec}", "example input x:1x3x16x16:float32", differs)
    assert not (tmp_path / "m.onnx").exists()


def test_an_input_named_twice_is_exit_2(tmp_path, write_model):
    result = invoke("export", write_model(CNN, factory="bare"), "-o", str(tmp_path / "m.onnx"),
                    "--input", "x:1x3x16x16", "--input", "x:2x3x16x16")
    assert_refused(result, "--input names 'x' more than once")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("opset", ["3", "99"])
def test_an_opset_outside_the_exporters_range_is_exit_2_naming_the_range(tmp_path, write_model, opset):
    import onnx

    result = invoke("export", write_model(CNN), "-o", str(tmp_path / "m.onnx"), "--opset", opset)
    assert_refused(result, f"--opset {opset} is outside", f"7 to {onnx.defs.onnx_opset_version()}")
    assert not (tmp_path / "m.onnx").exists()


def test_an_opset_the_exporter_cannot_convert_to_is_exit_2_not_another_opset(tmp_path, write_model):
    result = invoke("export", write_model(CNN), "-o", str(tmp_path / "m.onnx"), "--opset", "10")
    assert_refused(result, "wrote opset 18, not the 10 asked for")
    assert not (tmp_path / "m.onnx").exists()


def test_an_input_too_large_for_memory_is_exit_2_before_allocating(tmp_path, write_model):
    result = invoke("export", write_model(CNN, factory="bare"), "-o", str(tmp_path / "m.onnx"),
                    "--input", "x:100000x100000x100")
    assert_refused(result, "Input x:100000x100000x100:float32 would take 3725.3 GiB", "of memory free")
    assert not (tmp_path / "m.onnx").exists()


# model files


@pytest.mark.parametrize("damage", ["random bytes", "truncated"])
def test_a_corrupt_pt2_is_one_exit_2_paragraph(tmp_path, capfd, damage):
    path = tmp_path / "net.pt2"
    program = torch.export.export(torch.nn.Linear(3, 2), (torch.randn(1, 3),))
    torch.export.save(program, str(path))
    good = path.read_bytes()
    path.write_bytes(np.random.default_rng(0).bytes(len(good)) if damage == "random bytes" else good[:len(good) // 2])
    result = invoke("export", str(path), "-o", str(tmp_path / "m.onnx"))
    assert_refused(result, f"Cannot load '{path}' as a torch.export program", "torch.export.save")
    assert "PytorchStreamReader" in result.output  # torch's cause, not its logged traceback:
    assert "Traceback" not in capfd.readouterr().err  # torch's log handler writes to the process's stderr
    assert not (tmp_path / "m.onnx").exists()


def test_an_input_axis_named_twice_by_dynamic_is_exit_2(tmp_path, write_model):
    result = invoke("export", write_model(CNN), "-o", str(tmp_path / "m.onnx"), "-d", "x:0=batch", "-d", "x:0=n")
    assert_refused(result, "--dynamic names axis 0 of input 'x' twice, as 'batch' and 'n'")
    assert not (tmp_path / "m.onnx").exists()


def test_a_package_whose_import_raises_is_exit_2_naming_it(tmp_path, monkeypatch):
    (tmp_path / "broken_pkg").mkdir()
    (tmp_path / "broken_pkg" / "__init__.py").write_text("raise RuntimeError('no config file')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    result = invoke("export", "broken_pkg:make", "-o", str(tmp_path / "m.onnx"))
    assert_refused(result, "Importing 'broken_pkg' failed: RuntimeError: no config file")
    assert not (tmp_path / "m.onnx").exists()


def test_ctrl_c_in_user_code_still_interrupts(tmp_path, write_model):
    model = write_model(CNN + "\n\ndef stop():\n    raise KeyboardInterrupt\n", factory="stop")
    result = invoke("export", model, "-o", str(tmp_path / "m.onnx"))
    assert result.exit_code == 130 and "interrupted" in result.output
    assert not (tmp_path / "m.onnx").exists()
