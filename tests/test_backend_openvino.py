"""The OpenVINO backend on real OpenVINO and NNCF: IR at every precision from the example CNN and a small BERT,
INT8 that keeps accuracy, exclusions that hold in the compiled model, and NNCF's transformer scheme chosen
for attention models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("openvino", reason="the [openvino] extra (openvino) is not installed")
pytest.importorskip("nncf", reason="the [openvino] extra (nncf) is not installed")

from modelport.artifact import Artifact
from modelport.backends.openvino import _generic_int8_gemm
from modelport.backends.probes import GUARD_MARGIN_DB
from modelport.backends.saturation import int8_saturates
from modelport.builder import build_artifact
from modelport.bundle import ModelBundle
from modelport.calibration import CalibrationSet
from modelport.errors import BadInput, Unavailable
from modelport.examples import digits_data
from modelport.loading import load_artifact
from modelport.machine import cpu_flags
from modelport.model import load_model
from modelport.similarity import row_cosines

BERT_DYNAMIC = ["input_ids:0=batch", "attention_mask:0=batch", "input_ids:1=seq", "attention_mask:1=seq"]


class TinyBert(torch.nn.Module):
    """A 2-layer BERT encoder from a config (random weights): ids and mask in, hidden states out."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        torch.manual_seed(0)
        config = BertConfig(vocab_size=200, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=128, max_position_embeddings=64, attn_implementation="eager")
        self.bert = BertModel(config, add_pooling_layer=False).eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def tiny_bert() -> tuple[torch.nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    feeds = token_batch(2, 16, seed=0)
    return TinyBert(), (torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"]))


def token_batch(n: int, length: int, seed: int) -> dict[str, np.ndarray]:
    """Random ids with padded tails of random length, as a tokenizer's batch looks."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(length // 3, length + 1, n)
    return {"input_ids": rng.integers(0, 200, (n, length)),
            "attention_mask": (np.arange(length)[None] < lengths[:, None]).astype(np.int64)}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The worst per-sample cosine similarity."""
    return float(row_cosines(a, b).min())


def accuracy(artifact_dir: Path, images: np.ndarray, labels: np.ndarray) -> float:
    with load_artifact(artifact_dir, threads=2) as runner:
        logits = runner.run({"x": images})["output"]
    return 100.0 * float((logits.argmax(1) == labels).mean())


@pytest.fixture(scope="module")
def digits_bundle(digits):
    return ModelBundle(digits)


@pytest.fixture(scope="module")
def digits_calibration(digits):
    images, labels = digits_data("train")
    return CalibrationSet.from_arrays({"x": images}, digits.inputs, labels=labels, size=300)


@pytest.fixture(scope="module")
def build_digits(digits_bundle, digits_calibration, tmp_path_factory):
    """Build (once per precision and options) an OpenVINO artifact of the digits CNN."""
    built: dict[str, Path] = {}

    def build(precision: str, **options: str) -> Path:
        key = precision + "".join(f"-{k}={v}" for k, v in sorted(options.items()))
        if key not in built:
            out = tmp_path_factory.mktemp("ov") / key.replace(",", "_")
            artifact, _ = build_artifact(digits_bundle, "openvino", precision, out, options=options,
                                         calibration=digits_calibration)
            built[key] = artifact.path
        return built[key]

    return build


@pytest.fixture(scope="module")
def bert_source():
    pytest.importorskip("transformers", reason="transformers builds the BERT encoder")
    return load_model(f"{__file__}:tiny_bert", dynamic=BERT_DYNAMIC)


@pytest.fixture(scope="module")
def build_bert(bert_source, tmp_path_factory):
    """Build (once per precision) an OpenVINO artifact of the tiny BERT, calibrated on random token batches."""
    bundle = ModelBundle(bert_source)
    calibration = CalibrationSet.from_arrays(token_batch(100, 16, seed=1), bert_source.inputs)
    built: dict[str, Path] = {}

    def build(precision: str) -> Path:
        if precision not in built:
            artifact, _ = build_artifact(bundle, "openvino", precision, tmp_path_factory.mktemp("bert") / precision,
                                         calibration=calibration)
            built[precision] = artifact.path
        return built[precision]

    return build


def test_fp32_ir_keeps_the_dynamic_batch_and_matches_pytorch(digits, build_digits, digits_test_data):
    path = build_digits("fp32")
    assert {"model.xml", "model.bin", "manifest.json"} <= {p.name for p in path.iterdir()}
    with load_artifact(path, threads=2) as runner:
        details = runner.details
        for n in (1, 37):
            feeds = {"x": digits_test_data[0][:n]}
            got = runner.run(feeds)["output"]
            assert got.shape == (n, 10)
            np.testing.assert_allclose(got, digits.run(feeds)["output"], atol=1e-4, rtol=1e-4)
    assert details["inference_num_threads"] == "2" and details["performance_hint"] == "LATENCY"
    # f32 even where the CPU has AVX512_BF16 or AMX (the plugin's own choice there is bf16, 4e-2 off PyTorch here)
    assert details["inference_precision_hint"] == "f32"
    assert Artifact.open(path).details["runtime"]["inference_precision"] == "f32"
    assert Artifact.open(path).details["shapes"] == {"x": "[?,1,8,8]"}


def test_static_source_gives_a_static_ir(write_model, tmp_path):
    ref = write_model("def make():\n    torch.manual_seed(0)\n"
                      "    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)), (torch.randn(4, 6),)\n")
    source = load_model(ref)
    artifact, _ = build_artifact(ModelBundle(source), "openvino", "fp32", tmp_path / "static")
    assert artifact.details["shapes"] == {source.input_names[0]: "[4,6]"}
    feeds = source.example_feeds()
    with load_artifact(artifact.path) as runner:
        np.testing.assert_allclose(runner.run(feeds)["output"], source.run(feeds)["output"], atol=1e-5)


def test_fp16_halves_the_weights_and_says_which_precision_the_cpu_computes_in(build_digits, digits_test_data):
    fp32, fp16 = build_digits("fp32"), build_digits("fp16")
    assert (fp16 / "model.bin").stat().st_size < 0.55 * (fp32 / "model.bin").stat().st_size
    assert abs(accuracy(fp16, *digits_test_data) - accuracy(fp32, *digits_test_data)) <= 0.5
    runtime = Artifact.open(fp16).details["runtime"]
    if not cpu_flags() & {"avx512_fp16", "amx_fp16"}:
        assert runtime["inference_precision"] == "f32"
        assert "FP16 in the IR" in runtime["note"] and "F32" in runtime["note"]


def test_int8_keeps_digits_accuracy_within_one_point(build_digits, digits_test_data):
    fp32, int8 = build_digits("fp32"), build_digits("int8")
    assert accuracy(int8, *digits_test_data) >= accuracy(fp32, *digits_test_data) - 1.0
    details = Artifact.open(int8).details
    assert details["model_type"] == "generic" and "no attention" in details["model_type_reason"]
    assert details["quantized_layers"] == details["layers"] == 4 and details["float_layers"] == []
    assert details["runtime"]["int8_kernels"] == 4  # every conv and FC runs an int8 kernel here


def test_int8_keeps_the_closer_of_modelports_nncf_settings_and_nncfs_defaults(build_digits):
    details = Artifact.open(build_digits("int8")).details
    route = details["route"]
    assert set(route["sqnr_db"]) == {"nncf", "nncf_defaults"} and route["probes"] == 8  # no attention: no QDQ model
    scores = route["sqnr_db"]
    kept = "nncf" if scores["nncf"] > scores["nncf_defaults"] + GUARD_MARGIN_DB else "nncf_defaults"
    assert route["chosen"] == kept
    seven_bit = "enable" if int8_saturates()[0] else "first_layer"
    expected = {"nncf": ("histogram", seven_bit), "nncf_defaults": ("mean_minmax", "first_layer")}[kept]
    assert (details["activation_ranges"], details["overflow_fix"]["value"]) == expected


def test_source_nncf_runs_modelports_settings_alone(build_digits):
    details = Artifact.open(build_digits("int8", source="nncf")).details
    assert details["route"] == {"chosen": "nncf", "reason": "source=nncf"}
    assert details["preset"] == "performance" and details["activation_ranges"] == "histogram"
    saturates, why = int8_saturates()
    assert details["overflow_fix"] == {"value": "enable" if saturates else "first_layer",
                                       "reason": f"auto: {why}" if saturates else f"auto (NNCF's default): {why}"}


def test_nncfs_defaults_are_what_a_user_calling_nncf_quantize_gets(digits_bundle, digits_calibration, tmp_path,
                                                                    digits_test_data):
    import openvino as ov

    from benchmarks.peers import build_nncf_defaults
    from modelport.backends import get_backend
    from modelport.backends.openvino import _quantize

    recipe = get_backend("openvino").recipe("int8", {})
    ours, info = _quantize(ov.convert_model(str(digits_bundle.onnx_path)), recipe, digits_calibration,
                           ("enable", "ignored with defaults"), defaults=True)
    assert (info["preset"], info["activation_ranges"], info["overflow_fix"]["value"]) == (
        "performance", "mean_minmax", "first_layer")
    peer = build_nncf_defaults(digits_bundle.onnx_path, digits_calibration, tmp_path / "peer.xml")
    feeds = {"x": digits_test_data[0][:64]}
    core = ov.Core()
    got, want = (core.compile_model(m, "CPU").create_infer_request().infer(feeds) for m in (ours, str(peer)))
    np.testing.assert_array_equal(next(iter(got.values())), next(iter(want.values())))


def test_the_route_guard_replaces_a_less_faithful_preferred_build_and_keeps_it_on_a_tie(digits_bundle,
                                                                                        digits_calibration):
    import openvino as ov

    from modelport.backends import get_backend
    from modelport.backends.openvino import _quantize, _route_guard

    float_model = ov.convert_model(str(digits_bundle.onnx_path))
    int8, _ = _quantize(float_model.clone(), get_backend("openvino").recipe("int8", {}), digits_calibration,
                        ("disable", "8-bit weights"))
    feeds = {"x": digits_data("test")[0][:1]}
    opts = {"device": "cpu", "inference_precision": "f32"}
    lossless = _route_guard(float_model, {"nncf": int8, "qdq": float_model.clone()}, feeds, opts, "nncf")
    assert lossless["chosen"] == "qdq" and lossless["sqnr_db"]["qdq"] is None  # identical outputs: no noise at all
    assert lossless["probes"] == 8 and lossless["sqnr_db"]["nncf"] < 60
    tie = _route_guard(float_model, {"nncf": int8, "nncf_defaults": int8.clone()}, feeds, opts, "nncf_defaults")
    assert tie["chosen"] == "nncf_defaults" and tie["sqnr_db"]["nncf"] == tie["sqnr_db"]["nncf_defaults"]


def test_overflow_fix_follows_the_cpus_int8_kernels():
    assert int8_saturates(frozenset({"avx2", "fma"}), "x86_64")[0] is True
    assert int8_saturates(frozenset({"avx2", "avx_vnni"}), "x86_64")[0] is False
    assert int8_saturates(frozenset({"avx512f", "avx512_vnni"}), "AMD64")[0] is False
    assert int8_saturates(frozenset(), "aarch64")[0] is False


@pytest.mark.slow
def test_the_trained_encoders_int8_keeps_cosine_and_says_which_route_ran(tmp_path):
    source = load_model("modelport.examples:digits_transformer", dynamic=["x:0=batch"])
    calibration = CalibrationSet.from_arrays({"x": digits_data("train")[0]}, source.inputs, size=128)
    artifact, _ = build_artifact(ModelBundle(source, onnx_dir=tmp_path / "onnx"), "openvino", "int8",
                                 tmp_path / "int8", options={"measure": "false"}, calibration=calibration)
    route = artifact.details["route"]
    assert set(route["sqnr_db"]) == {"nncf", "nncf_defaults", "qdq"}
    best = max(route["sqnr_db"], key=route["sqnr_db"].__getitem__)
    preferred = route["sqnr_db"]["nncf_defaults"]
    assert route["chosen"] == (best if route["sqnr_db"][best] > preferred + GUARD_MARGIN_DB else "nncf_defaults")
    x, _ = digits_data("test")
    with torch.no_grad():
        reference = source.module(torch.from_numpy(x)).numpy()
    with load_artifact(artifact.path) as runner:
        assert row_cosines(runner.run({"x": x})["output"], reference).mean() >= 0.995


def test_exclude_keeps_the_named_layers_in_float_in_the_compiled_model(digits_bundle, build_digits):
    import onnx

    graph = onnx.load(str(digits_bundle.onnx_path)).graph
    first_conv = next(n.name for n in graph.node if n.op_type == "Conv")
    first_gemm = next(n.name for n in graph.node if n.op_type == "Gemm")
    # one layer by its torch module path, one by its ONNX node name
    path = build_digits("int8", exclude=f"features.0,{first_gemm}")
    with load_artifact(path) as runner:
        kernels = [op for op in runner.runtime_ops() if op.type in ("Convolution", "FullyConnected")]
    kept = [op for op in kernels if op.comes_from(first_conv) or op.comes_from(first_gemm)]
    assert len(kept) == 2 and all(op.precision == "f32" for op in kept), kept
    assert sum(op.precision in ("u8", "i8") for op in kernels) == 2, kernels
    details = Artifact.open(path).details
    assert details["quantized_layers"] == 2 and set(details["excluded"]) == {"features.0", first_gemm}


def test_exclude_by_op_type_keeps_every_layer_of_that_type_in_float(build_digits):
    with load_artifact(build_digits("int8", exclude="Gemm")) as runner:
        ops = runner.runtime_ops()
    precisions = {op.type: set() for op in ops}
    for op in ops:
        precisions[op.type].add(op.precision)
    assert precisions["FullyConnected"] == {"f32"} and precisions["Convolution"] == {"u8"}


def test_exclude_that_names_nothing_is_rejected_with_close_names(build_digits):
    with pytest.raises(BadInput, match=r"features\.O") as info:
        build_digits("int8", exclude="features.O")
    assert "features.0" in str(info.value)


def test_int8_dynamic_stores_int8_weights_and_keeps_accuracy(build_digits, digits_test_data):
    fp32, dyn = build_digits("fp32"), build_digits("int8-dynamic")
    assert (dyn / "model.bin").stat().st_size < 0.3 * (fp32 / "model.bin").stat().st_size
    assert accuracy(dyn, *digits_test_data) >= accuracy(fp32, *digits_test_data) - 1.0
    details = Artifact.open(dyn).details
    assert details["int8_weight_only_layers"] == details["layers"] == 4 and details["fake_quantize_nodes"] == 0


def test_options_that_do_not_apply_are_errors(build_digits):
    from modelport.backends import get_backend

    with pytest.raises(BadInput, match="Unknown option"):
        get_backend("openvino").recipe("fp32", {"preset": "mixed"})
    with pytest.raises(BadInput, match="source=qdq"):
        build_digits("int8", method="minmax")


def test_qdq_source_runs_the_shared_calibration_pass_in_openvino(build_digits, digits_test_data):
    fp32, qdq = build_digits("fp32"), build_digits("int8", source="qdq")
    assert accuracy(qdq, *digits_test_data) >= accuracy(fp32, *digits_test_data) - 1.0
    details = Artifact.open(qdq).details
    assert "shared QDQ model" in details["quantizer"] and details["qdq"]["method"] == "minmax"
    assert details["quantized_layers"] == 4 and details["runtime"]["int8_kernels"] == 4


def test_nncf_options_with_the_qdq_source_are_errors(build_digits):
    with pytest.raises(BadInput, match="preset tune NNCF"):
        build_digits("int8", source="qdq", preset="mixed")


def test_run_many_returns_the_same_outputs_in_order(build_digits, digits_test_data):
    images = digits_test_data[0]
    feeds = [{"x": images[i:i + n]} for i, n in enumerate((1, 3, 8, 2, 5))]
    with load_artifact(build_digits("int8"), threads=2) as runner:
        single = [runner.run(f)["output"] for f in feeds]
        many = runner.run_many(feeds)
        assert runner.throughput_requests >= 1
    for a, b in zip(single, many, strict=True):
        np.testing.assert_allclose(b["output"], a, atol=1e-5)


def test_runner_names_missing_inputs(build_digits):
    with load_artifact(build_digits("fp32")) as runner, pytest.raises(BadInput, match="missing \\['x'\\]"):
        runner.run({"image": np.zeros((1, 1, 8, 8), np.float32)})


def test_a_gpu_artifact_on_a_machine_without_one_is_unavailable_at_load(build_digits):
    import openvino as ov

    if any(d.startswith("GPU") for d in ov.Core().available_devices):
        pytest.skip("this machine has an OpenVINO GPU device")
    path = build_digits("fp32", device="gpu")
    assert Artifact.open(path).details["runtime"]["checked"] is False
    with pytest.raises(Unavailable, match="no GPU device"):
        load_artifact(path)


def test_without_openvino_the_message_names_the_extra():
    code = ("import sys; sys.modules['openvino'] = None\n"
            "from modelport.backends import get_backend\n"
            "print(get_backend('openvino').available())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "False" in out.stdout and "pip install 'modelport[openvino]'" in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize("precision, floor", [("fp32", 0.99999), ("fp16", 0.999), ("int8", 0.99),
                                              ("int8-dynamic", 0.99)])
def test_bert_encoder_at_every_precision_keeps_cosine_at_any_batch_and_length(bert_source, build_bert, precision,
                                                                               floor):
    with load_artifact(build_bert(precision), threads=2) as runner:
        for n, length in ((1, 16), (5, 11)):
            feeds = token_batch(n, length, seed=7)
            got = runner.run(feeds)["output"]
            assert got.shape == (n, length, 64)
            assert cosine(got, bert_source.run(feeds)["output"]) >= floor


def test_bert_int8_chooses_the_transformer_scheme_and_keeps_cosine_to_fp32(build_bert):
    details = Artifact.open(build_bert("int8")).details
    assert details["model_type"] == "transformer" and "2 attention block(s)" in details["model_type_reason"]
    assert details["preset"] == "mixed" and details["activation_ranges"] == "mean_minmax"
    assert details["runtime"]["int8_kernels"] > 0
    feeds = token_batch(16, 16, seed=3)
    with load_artifact(build_bert("fp32")) as ref_runner, load_artifact(build_bert("int8")) as runner:
        assert cosine(runner.run(feeds)["output"], ref_runner.run(feeds)["output"]) >= 0.99


def test_the_latency_check_reads_back_which_kernel_each_precision_ran(build_digits):
    details = Artifact.open(build_digits("int8")).details
    assert details.get("warning") == details["latency"]["warning"]  # a slow INT8 is the warning the build prints
    kernels = details["latency"]["kernels"]
    assert set(kernels) == {"fp32", "int8"}
    for found in kernels.values():
        assert sum(v["layers"] for v in found.values()) == 4  # the digits CNN's two convs and two FCs
        assert 0 < sum(v["share"] for v in found.values()) <= 1
    assert all(k.lower().endswith(("i8", "u8")) for k in kernels["int8"])  # the INT8 IR's layers run INT8 kernels


def test_a_slow_int8_warning_names_the_generic_int8_gemm_where_the_profile_shows_it():
    fast = {"fp32": {"FullyConnected/brgemm_avx2_f32": {"layers": 2, "share": 0.9}},
            "int8": {"FullyConnected/brgemm_avx2_vnni_I8": {"layers": 2, "share": 0.8}}}
    slow = {**fast, "int8": {"FullyConnected/jit_gemm_I8": {"layers": 2, "share": 0.8}}}
    assert _generic_int8_gemm(fast) == ""
    why = _generic_int8_gemm(slow)
    assert "2 INT8 layers (80% of the run)" in why and "jit_gemm_I8" in why and "brgemm_avx2_f32" in why


def test_int8_matmuls_run_as_convolutions_only_where_the_plugin_gives_those_a_faster_int8_kernel(build_digits,
                                                                                                digits_test_data):
    details = Artifact.open(build_digits("int8")).details
    layout = details["fc_as_conv"]
    fc_kernels = layout["kernels"]["fully_connected"]
    generic_fc = any(k.startswith("FullyConnected") and "jit_gemm" in k for k in fc_kernels)
    assert layout["layers"] == 2  # both classifier MatMuls qualify
    assert (layout["chosen"] == "convolution") == generic_fc  # on this CPU, decided by the kernels read back
    if layout["chosen"] == "convolution":
        assert "FullyConnected" not in details["runtime"]["int8_by_type"]
    off = build_digits("int8", fc_as_conv="off")
    assert Artifact.open(off).details["fc_as_conv"] == {"chosen": "fully_connected", "reason": "fc_as_conv=off"}
    images, _ = digits_test_data
    with load_artifact(build_digits("int8"), threads=2) as a, load_artifact(off, threads=2) as b:
        assert cosine(a.run({"x": images})["output"], b.run({"x": images})["output"]) > 0.9999
