"""`modelport debug`: per-layer divergence read in each runtime, mapped to torch modules, culprits ranked.

The model plants an outlier: `wide`'s output has one channel 100x wider than the others, and `head`'s
weights on that channel are scaled down by as much, so the function is unchanged. One per-tensor INT8
range for that activation leaves the seven ordinary channels a handful of levels: the error appears where
`wide`'s output is quantized (`wide`, or `act` where the ReLU is fused into it) and shows in what `head`
computes from it. Every INT8 artifact is built once, on synthetic normal calibration data.
"""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
from typer.testing import CliRunner

from modelport.backends import get_backend
from modelport.backends.base import Runner
from modelport.backends.onnxruntime import OnnxRuntimeRunner
from modelport.builder import build_artifact
from modelport.bundle import ModelBundle
from modelport.calibration import CalibrationSet
from modelport.cli import app
from modelport.debug import rank_layers
from modelport.debug.compare import jumps
from modelport.debug.run import debug_artifact
from modelport.exporters.tensor_map import Layer, map_tensors
from tests.outlier import NO_CLE, normal

OUTLIER_MODULES = {"wide", "act", "head"}
BACKENDS = ("onnxruntime", "openvino", "tflite")
cli = CliRunner()


@pytest.fixture(scope="module")
def int8(outlier_source, tmp_path_factory):
    """The INT8 artifact of a backend, built on first use; a backend unavailable here is skipped with its reason."""
    out, built = tmp_path_factory.mktemp("artifacts"), {}
    calibration = CalibrationSet.from_arrays({"x": normal(128, 0)}, outlier_source.inputs)

    def get(backend: str):
        ok, reason = get_backend(backend).available()
        if not ok:
            pytest.skip(reason)
        if backend not in built:
            built[backend] = build_artifact(ModelBundle(outlier_source), backend, "int8", out / f"{backend}-int8",
                                            calibration=calibration,
                                            options=NO_CLE if backend == "onnxruntime" else {})[0].path
        return built[backend]

    return get


@pytest.fixture(scope="module")
def eval_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "eval.npz"
    np.savez(path, x=normal(16, 1))
    return path


def evaluation(outlier_source, n: int) -> CalibrationSet:
    return CalibrationSet.from_arrays({"x": normal(n, 1)}, outlier_source.inputs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_planted_outlier_ranks_first_with_its_torch_module(backend, int8, outlier_source):
    record = debug_artifact(int8(backend), outlier_source, evaluation(outlier_source, 16))
    first, *rest = record["culprits"]
    assert first["module"] in OUTLIER_MODULES, record["culprits"][:3]
    clean = next(c for c in rest if c["module"] == "stem")
    assert first["jump_db"] > clean["jump_db"] + 5  # far clearer than what an ordinary int8 conv adds
    assert first["sqnr_db"] < clean["sqnr_db"]
    by_tensor = {e["tensor"]: e for e in record["layers"]}
    assert by_tensor["conv2d"]["module"] == "stem" and by_tensor["conv2d"]["onnx_node"] == "node_conv2d"
    assert by_tensor["output"]["module"] == "fc" and by_tensor["output"]["op_type"] == "Gemm"
    assert by_tensor["output"]["status"] == "ok" and by_tensor["x"]["op_type"] == "Input"


def test_a_tensor_the_runtime_fused_away_says_so(int8, outlier_source):
    # ORT's QDQ pass folds the ReLU into the Conv before it: `wide`'s own output is never computed
    record = debug_artifact(int8("onnxruntime"), outlier_source, evaluation(outlier_source, 4))
    fused = next(e for e in record["layers"] if e["tensor"] == "conv2d_1")
    assert fused["status"] == "fused" and fused["sqnr_db"] is None and "onnxruntime" in fused["reason"]


def test_against_compares_two_runtimes_artifacts(int8, outlier_file, eval_file, tmp_path):
    ort, ov = int8("onnxruntime"), int8("openvino")
    result = cli.invoke(app, ["debug", str(ort), "--model", f"{outlier_file}:make", "--eval", str(eval_file),
                              "--against", str(ov), "--samples", "8", "-o", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["reference"]["kind"] == "artifact" and record["reference"]["backend"] == "openvino"
    assert [c["label"].split(" vs ")[1] for c in record["comparisons"]][1:] == ["PyTorch FP32 (its ONNX export in "
                                                                                "ONNX Runtime)"] * 2
    assert record["samples"] == 8 and record["compared"] >= 5
    assert all(len(c["sqnr_db"]) == len(record["layers"]) for c in record["comparisons"])


def test_the_json_is_a_contract_and_the_files_are_written(int8, outlier_file, eval_file, tmp_path):
    result = cli.invoke(app, ["debug", str(int8("onnxruntime")), "-m", f"{outlier_file}:make", "--eval",
                              str(eval_file), "-o", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)  # stdout holds the JSON alone
    types = {"tensor": str, "onnx_node": (str, type(None)), "module": (str, type(None)), "op_type": str,
             "sqnr_db": (float, type(None)), "cosine": (float, type(None)), "jump_db": (float, type(None))}
    for entry in record["layers"]:
        for key, kind in types.items():
            assert isinstance(entry[key], kind), (key, entry)
    assert [e["depth"] for e in record["layers"]] == list(range(len(record["layers"])))
    jumps_ranked = [c["jump_db"] for c in record["culprits"]]
    assert jumps_ranked == sorted(jumps_ranked, reverse=True) and len(jumps_ranked) == record["compared"]
    assert json.loads((tmp_path / "debug.json").read_text())["layers"] == record["layers"]
    page = (tmp_path / "debug.html").read_text()
    assert "<svg" in page and "<polyline" in page and "head" in page and "<script" not in page


def test_the_table_names_the_worst_layers(int8, outlier_file, eval_file, tmp_path):
    result = cli.invoke(app, ["debug", str(int8("onnxruntime")), "-m", f"{outlier_file}:make", "--eval",
                              str(eval_file), "-o", str(tmp_path), "--top", "3"])
    assert result.exit_code == 0, result.output
    assert "Layers adding the most error" in result.stdout and "head" in result.stdout


def test_memory_stays_bounded_as_samples_grow(int8, outlier_source):
    path = int8("onnxruntime")
    debug_artifact(path, outlier_source, evaluation(outlier_source, 2))  # sessions, exports and imports warmed up
    peaks = {}
    for n in (8, 64):
        data = evaluation(outlier_source, n)
        tracemalloc.start()
        debug_artifact(path, outlier_source, data)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    # holding every tensor of 56 more samples would take 56 x 2 sides x ~40 KB = 4.5 MB
    assert peaks[64] - peaks[8] < 512 * 1024, peaks


def test_a_model_other_than_the_artifacts_is_bad_input(int8, outlier_file, eval_file):
    result = cli.invoke(app, ["debug", str(int8("onnxruntime")), "-m", f"{outlier_file}:other", "--eval",
                              str(eval_file)])
    assert result.exit_code == 2
    assert "was built from" in result.output and "content hash" in result.output


def test_a_runtime_without_intermediates_is_bad_input(int8, outlier_file, eval_file, monkeypatch):
    monkeypatch.setattr(OnnxRuntimeRunner, "tensor_names", Runner.tensor_names)  # as TensorRT's runner is
    result = cli.invoke(app, ["debug", str(int8("onnxruntime")), "-m", f"{outlier_file}:make", "--eval",
                              str(eval_file)])
    assert result.exit_code == 2
    assert "cannot expose intermediate tensors" in result.output


def test_evaluation_data_that_does_not_fit_is_bad_input(int8, outlier_file, tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((4, 3, 8, 8), np.float32))
    result = cli.invoke(app, ["debug", str(int8("onnxruntime")), "-m", f"{outlier_file}:make", "--eval", str(bad)])
    assert result.exit_code == 2
    assert "x" in result.output and "16" in result.output


def test_the_jump_looks_through_a_fused_tensor_and_ranks_worst_first():
    layers = [Layer("x", None, None, "Input", ()), Layer("a", "n0", "stem", "Conv", ("x",)),
              Layer("b", "n1", "wide", "Conv", ("a",)), Layer("c", "n2", "act", "Relu", ("b",)),
              Layer("d", "n3", "head", "Conv", ("c",))]
    sqnr = {"x": 40.0, "a": 35.0, "c": 30.0, "d": 10.0}  # "b" fused away: "c" is measured against "a"
    jump = jumps(layers, sqnr)
    assert jump == {"x": 0.0, "a": 5.0, "c": 5.0, "d": 20.0}
    entries = [{"tensor": t, "jump_db": j, "sqnr_db": sqnr[t]} for t, j in jump.items()]
    assert [e["tensor"] for e in rank_layers(entries)] == ["d", "c", "a", "x"]  # a tie goes to the lower SQNR


def test_litert_location_names_map_to_each_modules_last_tensor():
    layers = [Layer("x", None, None, "Input", ()), Layer("conv2d", "n0", "stem", "Conv", ("x",)),
              Layer("conv2d_1", "n1", "wide", "Conv", ("conv2d",)), Layer("relu", "n2", "act", "Relu", ("conv2d_1",)),
              Layer("mean", "n3", None, "ReduceMean", ("relu",))]
    root = "pkg._NamedOutputs/user.Net_module"
    names = ["x", f"{root}/torch.nn.Conv2d_stem;2", f"{root}/torch.nn.Conv2d_stem;3",
             f"{root}/torch.nn.ReLU_act;;{root}/torch.nn.Conv2d_wide;1", f"{root};1", "serving_default_output"]
    found = map_tensors(layers, names, by_module=True)
    assert found == {"x": "x", "conv2d": names[2], "relu": names[3], "mean": names[4]}
    assert map_tensors(layers, names, by_module=False) == {"x": "x"}


def test_a_tensor_with_a_fused_activation_maps_to_the_activation_reading_the_modules_tensor():
    layers = [Layer("x", None, None, "Input", ()), Layer("conv2d", "n0", "conv1", "Conv", ("x",)),
              Layer("relu", "n1", None, "Relu", ("conv2d",)), Layer("getitem", "n2", "bn", "BatchNormalization",
                                                                     ("relu",))]
    root = "pkg._NamedOutputs/user.Net_module"
    names = ["x", f"{root}/torch.nn.Conv2d_conv1;1", f"{root}/torch.nn.BatchNorm2d_bn;7"]
    assert map_tensors(layers, names, by_module=True)["conv2d"] == names[1]  # a plain conv output: the conv's
    found = map_tensors(layers, names, by_module=True, fused={names[1]: "RELU"})
    assert found == {"x": "x", "relu": names[1], "getitem": names[2]}
    assert map_tensors(layers, names, by_module=True, fused={names[1]: "TANH"})["conv2d"] == names[1]  # no Tanh


def test_the_python_api_mirrors_the_cli(int8, outlier_file, eval_file, tmp_path):
    from modelport.debug import debug

    artifact = int8("onnxruntime")
    record = debug(artifact, f"{outlier_file}:make", str(eval_file), samples=8, out=tmp_path / "api")
    result = cli.invoke(app, ["debug", str(artifact), "-m", f"{outlier_file}:make", "--eval", str(eval_file),
                              "--samples", "8", "-o", str(tmp_path / "cli"), "--json"])
    assert result.exit_code == 0, result.output
    assert record["layers"] == json.loads(result.stdout)["layers"] and record["samples"] == 8
    assert record["culprits"][0]["module"] in OUTLIER_MODULES
    assert json.loads((tmp_path / "api" / "debug.json").read_text())["culprits"] == record["culprits"]
    assert (tmp_path / "api" / "debug.html").is_file()


def test_input_describes_a_bare_modules_inputs_as_for_the_other_commands(eval_file, tmp_path):
    from modelport.model import load_model
    from tests.outlier import OUTLIER

    bare = tmp_path / "bare.py"
    bare.write_text(OUTLIER + "\n\ndef bare():\n    return make()[0]\n")  # a module without example inputs
    source = load_model(f"{bare}:bare", ["x:1x3x16x16"], ["x:0=batch"])
    artifact = build_artifact(ModelBundle(source), "onnxruntime", "fp32", tmp_path / "fp32")[0].path
    args = ["debug", str(artifact), "-m", f"{bare}:bare", "--eval", str(eval_file), "--samples", "4",
            "-o", str(tmp_path / "out"), "--json"]
    without = cli.invoke(app, args)
    assert without.exit_code == 2 and "--input" in without.output, without.output
    result = cli.invoke(app, [*args, "--input", "x:1x3x16x16"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    ok = [e for e in record["layers"] if e["status"] == "ok"]  # FP32 against FP32: exact or float rounding
    assert len(ok) == record["compared"] >= 5 and all(e["cosine"] > 0.99999 for e in ok)
