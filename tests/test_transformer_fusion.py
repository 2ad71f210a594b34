"""Transformer fusions on the graphs the torch.export-based exporter writes, built by the ONNX Runtime backend.

On small BERT, ViT and GPT-2 configs (2 layers, hidden 64, sequence 16) the FP32 artifact runs attention as
ORT's fused `Attention` op with SkipLayerNormalization and BiasGelu/FastGelu, and matches the unfused build;
BERT's padding mask reaches the fused attention as its raw 2D mask (the exporter's mask subgraph is gone), for any
padding pattern; GPT-2's causal mask (with or without a padding mask) runs as Attention's unidirectional=1 with no
bias, while a bias that is not provably padding and/or causal (BERT given a 4D mask, GPT-2 given position ids) stays
additive, saying why;
static INT8 quantizes the fused graph (MultiHeadAttention, Q/K/V projections in int8) within the fidelity
rules, dynamic INT8 runs QAttention; a graph with no attention to fuse builds as before and says why.
On OpenVINO the same exported attention runs as one fused kernel in the CPU plugin's runtime model, in FP32
and in INT8 (NNCF quantizes the projections, not the fused attention).
"""

from __future__ import annotations

import numpy as np
import pytest

from modelport.builder import build_artifact
from modelport.bundle import ModelBundle
from modelport.calibration import CalibrationSet
from modelport.loading import load_artifact
from modelport.model import load_model
from modelport.similarity import mean_cosine
from tests.transformer_models import IMAGE, SEQ, VOCAB

pytest.importorskip("transformers", reason="the models are built from transformers configs")

TOKENS = ["input_ids:0=batch", "input_ids:1=seq", "attention_mask:0=batch", "attention_mask:1=seq"]
DYNAMIC = {"bert": TOKENS, "biased_bert": TOKENS, "biased_bert_per_key": TOKENS, "vit": ["x:0=batch"],
           "gpt2": ["input_ids:0=batch", "input_ids:1=seq"], "gpt2_masked": TOKENS,
           "gpt2_positioned": ["input_ids:0=batch", "input_ids:1=seq", "position_ids:0=batch", "position_ids:1=seq"]}
# GPT-2's tanh GELU is ORT's FastGelu
GELU = {"bert": "BiasGelu", "vit": "BiasGelu", "gpt2": "FastGelu", "gpt2_masked": "FastGelu"}
# (sites fed the raw mask, the mask input, sites run causal, why each other site kept its additive bias,
# zero biases dropped)
MASK = {"bert": (2, "attention_mask", 0, [], 0),
        "vit": (0, None, 0, [], 2),  # Where(expanded all-True, 0, fill): 0 everywhere
        "gpt2": (0, None, 2, [], 0),  # the causal mask, its packed-sequence term proved true of arange positions
        "gpt2_masked": (2, "attention_mask", 2, [], 0),  # causal AND padding
        "gpt2_positioned": (0, None, 0, ["positions come from a graph input, not an arange"] * 2, 0),
        "biased_bert": (0, None, 0, ["the bias comes from Expand, not the exporter's Where over a mask"] * 2, 0)}
NOT_ATTENTION = '''
def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Softmax(-1), nn.Linear(16, 4)), (torch.randn(2, 8),)
'''


def _mask(fusions: dict) -> tuple[int, str | None, int, list[str], int]:
    mask = fusions["mask"]
    return (mask["mask_index"], mask["input"], mask["causal"], [site["reason"] for site in mask["additive_bias"]],
            mask["zero_bias_dropped"])


def _feeds(name: str, batch: int, seq: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if name == "vit":
        return {"x": rng.standard_normal((batch, 3, IMAGE, IMAGE)).astype(np.float32)}
    feeds = {"input_ids": rng.integers(3, VOCAB, (batch, seq)).astype(np.int64)}
    if name == "gpt2_positioned":
        feeds["position_ids"] = np.broadcast_to(np.arange(seq), (batch, seq)).copy()
    if "attention_mask:0=batch" in DYNAMIC[name]:
        mask = np.ones((batch, seq), np.int64)
        mask[0, seq // 2:] = 0  # a padded row: the mask reaches the fused attention as its bias
        feeds["attention_mask"] = mask
    return feeds


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """Build (model, precision, options) once per module with the ONNX Runtime backend: (artifact, source)."""
    root = tmp_path_factory.mktemp("fusion")
    bundles: dict = {}
    done: dict = {}

    def make(name: str, precision: str = "fp32", backend: str = "onnxruntime", **options):
        key = (name, precision, backend, tuple(sorted(options.items())))
        if key not in done:
            if name not in bundles:
                source = load_model(f"tests.transformer_models:{name}", dynamic=DYNAMIC[name])
                bundles[name] = (source, ModelBundle(source))
            source, bundle = bundles[name]
            calibration = CalibrationSet.from_arrays(_feeds(name, 32, SEQ, 1), source.inputs)
            opts = {"measure": False, **options} if precision not in ("fp32", "fp16") else options
            done[key] = build_artifact(bundle, backend, precision, root / f"{name}-{precision}-{len(done)}",
                                       options=opts, calibration=calibration)[0], source
        return done[key]

    return make


@pytest.mark.parametrize("name", ["bert", "vit", "gpt2", "gpt2_masked"])
def test_fp32_runs_fused_attention_and_matches_the_unfused_build(build, name):
    artifact, _ = build(name)
    plain, _ = build(name, fusions="off")
    fusions = artifact.details["fusions"]
    assert fusions["applied"] and fusions["attention"] == {
        "op": "Attention", "fused": 2, "sites": 2, "num_heads": 4, "hidden_size": 64, "not_fused": []}
    ops = artifact.details["ops"]
    assert _mask(fusions) == MASK[name]
    assert ops["Attention"] == 2 and ops["SkipLayerNormalization"] >= 3 and ops[GELU[name]] == 2
    assert "Softmax" not in ops and "Softmax" in plain.details["ops"]
    assert plain.details["fusions"] == {"applied": False, "reason": "fusions=off"}
    with load_artifact(artifact.path) as fused, load_artifact(plain.path) as unfused:
        for batch, seq in ((2, SEQ), (3, 9 if name != "vit" else SEQ)):  # other sizes of the dynamic axes
            feeds = _feeds(name, batch, seq, 2)
            want, got = unfused.run(feeds)["output"], fused.run(feeds)["output"]
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())


def _padded(batch: int, seq: int) -> dict[str, np.ndarray]:
    """Right, left and middle padding, a row with no padding and one fully masked."""
    mask = np.ones((batch, seq), np.int64)
    mask[0, seq - 5:] = 0
    mask[1, :4] = 0
    mask[2, 3:9] = 0
    mask[4, :] = 0
    return {"input_ids": np.random.default_rng(5).integers(3, VOCAB, (batch, seq)).astype(np.int64),
            "attention_mask": mask}


def _matches_unfused(artifact, plain) -> None:
    """The fused artifact's output within 1e-4 of the unfused one's on sequences padded left, right and inside."""
    feeds = _padded(5, 13)
    with load_artifact(artifact.path) as fused, load_artifact(plain.path) as unfused:
        want, got = unfused.run(feeds)["output"], fused.run(feeds)["output"]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_the_padding_mask_reaches_attention_raw_and_matches_for_any_padding(build, precision):
    """Attention's mask_index (MultiHeadAttention's key_padding_mask for static INT8) takes the 2D mask, so the
    exporter's ~25-op mask subgraph is gone. A fully masked row attends uniformly in the exported graph (its
    -FLT_MAX fill leaves no NaN for its Where(IsNaN) guard to catch), and so it does fused: it matches too."""
    artifact, _ = build("bert", precision)
    plain, _ = build("bert", precision, fusions="off")
    assert _mask(artifact.details["fusions"]) == MASK["bert"]
    ops = artifact.details["ops"]
    assert not {"GatherND", "Where", "Range", "And"} & set(ops) and "GatherND" in plain.details["ops"]
    if precision == "int8":
        return  # fused vs unfused INT8 differ by their quantization, which the fidelity test covers
    _matches_unfused(artifact, plain)


def test_a_bias_that_is_not_the_padding_mask_alone_stays_additive_and_says_why(build):
    """BERT called with a 4D mask: padding plus a term of the tokens. Attention still fuses, with the bias."""
    artifact, _ = build("biased_bert")
    plain, _ = build("biased_bert", fusions="off")
    fusions = artifact.details["fusions"]
    assert fusions["applied"] and fusions["attention"]["fused"] == 2
    assert _mask(fusions) == MASK["biased_bert"]
    _matches_unfused(artifact, plain)


def test_approximate_gelu_is_opt_in_and_its_deviation_is_recorded(build):
    """gelu=approximate swaps BiasGelu for FastGelu (Optimum O3's tanh GELU); by default GELU stays exact."""
    exact, _ = build("bert")
    fast, _ = build("bert", gelu="approximate")
    assert "gelu_approximation" not in exact.details["fusions"] and "FastGelu" not in exact.details["ops"]
    assert fast.details["ops"]["FastGelu"] == 2 and "BiasGelu" not in fast.details["ops"]
    record = fast.details["fusions"]["gelu_approximation"]
    assert record["fast_gelu"] == 2 and 0 < record["max_rel_error_vs_unfused"] < 1e-2
    feeds = _padded(5, 13)
    with load_artifact(fast.path) as approximate, load_artifact(exact.path) as unapproximated:
        want, got = unapproximated.run(feeds)["output"], approximate.run(feeds)["output"]
    assert 0 < np.abs(got - want).max() < 1e-2 * np.abs(want).max()


def test_a_fused_graph_ort_cannot_run_builds_unfused_and_says_why(build):
    """A (batch, 1, 1, seq) additive bias: the exported graph broadcasts it, ORT's Attention rejects it."""
    artifact, _ = build("biased_bert_per_key")
    plain, _ = build("biased_bert_per_key", fusions="off")
    fusions = artifact.details["fusions"]
    assert not fusions["applied"] and fusions["reason"].startswith("the fused graph does not run on the example "
                                                                   "inputs (InvalidArgument: ")
    assert artifact.details["ops"] == plain.details["ops"]


def test_static_int8_quantizes_the_fused_graph_within_the_fidelity_rules(build):
    artifact, source = build("bert", "int8")
    details = artifact.details
    assert details["fusions"]["attention"]["op"] == "MultiHeadAttention"  # Q/K/V stay MatMuls, quantized
    assert details["ops"]["MultiHeadAttention"] == 2 and "Softmax" not in details["ops"]
    assert details["int8_ops"]["MatMul"] >= 12  # Q, K, V, output and both FFN projections of both layers
    assert details["fidelity_on_calibration"]["met"]
    feeds = _feeds("bert", 16, SEQ, 3)
    with load_artifact(artifact.path) as runner:
        assert mean_cosine(source.run(feeds)["output"], runner.run(feeds)["output"]) >= 0.99


def test_static_int8_on_the_fused_graph_calibrates_fewer_tensors_and_needs_no_fallback_round(build):
    """The fused graph is the lighter one for the QDQ pass: attention's softmax, mask and score tensors live inside
    MultiHeadAttention, so there are fewer tensors to augment as calibration outputs and fewer compute-op inputs
    to measure, and it meets the fidelity target without fallback rounds (issue 21: the fused build's QDQ pass
    took as long as the unfused one's in a side-by-side measurement, not 2.5x)."""
    from modelport.quantize import cache

    def pass_of(artifact):
        entry = cache.lookup(artifact.details["calibration"]["cache_key"])
        return len(entry.ranges().data), artifact.details["fidelity_on_calibration"]["rounds"]

    fused_tensors, fused_rounds = pass_of(build("bert", "int8")[0])
    plain_tensors, _ = pass_of(build("bert", "int8", fusions="off")[0])
    assert 0 < fused_tensors < plain_tensors
    assert len(fused_rounds) == 1  # met on the first quantization: no fallback round re-quantized the model


def test_dynamic_int8_runs_quantized_attention(build):
    artifact, source = build("bert", "int8-dynamic")
    assert artifact.details["fusions"]["attention"]["op"] == "Attention"
    assert artifact.details["ops"]["QAttention"] == 2
    feeds = _feeds("bert", 16, SEQ, 3)
    with load_artifact(artifact.path) as runner:
        assert mean_cosine(source.run(feeds)["output"], runner.run(feeds)["output"]) >= 0.98


def test_dynamic_int8_keeps_an_additive_bias_out_of_qattention(build):
    """QAttention has no attention_bias input (ORT's quantizer would drop it): a site that keeps an additive bias
    fuses as MultiHeadAttention, its projections quantized as MatMuls."""
    artifact, source = build("biased_bert", "int8-dynamic")
    assert artifact.details["fusions"]["attention"]["op"] == "MultiHeadAttention"
    assert artifact.details["ops"]["MultiHeadAttention"] == 2 and "QAttention" not in artifact.details["ops"]
    assert artifact.details["ops"]["MatMulInteger"] >= 8
    feeds = _feeds("biased_bert", 16, SEQ, 3)
    with load_artifact(artifact.path) as runner:
        assert mean_cosine(source.run(feeds)["output"], runner.run(feeds)["output"]) >= 0.98


def _attention_nodes(artifact) -> list[dict]:
    """The fused attention nodes of an ONNX Runtime artifact: op type, inputs and attributes."""
    import onnx

    model = onnx.load(str(artifact.path / "model.onnx"))
    return [{"op": n.op_type, "inputs": list(n.input), **{a.name: onnx.helper.get_attribute_value(a)
                                                           for a in n.attribute}}
            for n in model.graph.node if n.op_type in ("Attention", "MultiHeadAttention", "QAttention")]


@pytest.mark.parametrize("name", ["gpt2", "gpt2_masked"])
def test_gpt2s_causal_mask_runs_as_unidirectional_attention_with_no_bias(build, name):
    """The causal mask (AND-ed with the padding mask where there is one) is proved from its provenance: Attention
    runs unidirectional=1, takes no attention_bias (its sixth input), and the mask subgraph is gone."""
    artifact, _ = build(name)
    plain, _ = build(name, fusions="off")
    nodes = _attention_nodes(artifact)
    assert [(n["op"], n["unidirectional"], len(n["inputs"]) < 6) for n in nodes] == [("Attention", 1, True)] * 2
    assert all((n["inputs"][3:4] == ["attention_mask_int32"]) == (name == "gpt2_masked") for n in nodes)
    gone = {"LessOrEqual", "Where", "GatherND", "CumSum", "And"}  # (a Range stays: the position embedding's)
    assert not gone & set(artifact.details["ops"]) and "LessOrEqual" in plain.details["ops"]


def test_causal_and_padding_masks_together_match_the_unfused_graph_for_any_padding(build):
    """Right, left and inner padding, a row with none and one fully masked: a query that sees no key attends
    uniformly in the exported graph and in ORT's Attention alike."""
    _matches_unfused(build("gpt2_masked")[0], build("gpt2_masked", fusions="off")[0])


def test_a_causal_looking_bias_over_position_ids_from_an_input_stays_additive_and_says_why(build):
    """GPT-2 called with position ids compares them, not aranges (and splits packed sequences where they restart):
    nothing proves that causal, so Attention keeps the bias, and matches on packed positions too."""
    artifact, _ = build("gpt2_positioned")
    plain, _ = build("gpt2_positioned", fusions="off")
    fusions = artifact.details["fusions"]
    assert fusions["applied"] and _mask(fusions) == MASK["gpt2_positioned"]
    assert all("unidirectional" not in n and len(n["inputs"]) == 6 for n in _attention_nodes(artifact))
    feeds = _feeds("gpt2_positioned", 3, SEQ, 6)
    feeds["position_ids"][1] = np.r_[np.arange(7), np.arange(SEQ - 7)]  # two sequences packed in one row
    with load_artifact(artifact.path) as fused, load_artifact(plain.path) as unfused:
        want, got = unfused.run(feeds)["output"], fused.run(feeds)["output"]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())


def test_static_int8_runs_the_causal_mask_in_multiheadattention(build):
    """Static INT8 keeps Q/K/V as MatMuls (quantized): MultiHeadAttention runs unidirectional=1 with the raw mask
    as key_padding_mask (its fifth input), no bias."""
    artifact, source = build("gpt2_masked", "int8")
    nodes = _attention_nodes(artifact)
    assert [(n["op"], n["unidirectional"], n["inputs"][4:]) for n in nodes] == \
        [("MultiHeadAttention", 1, ["attention_mask_int32"])] * 2
    assert artifact.details["fidelity_on_calibration"]["met"]
    feeds = _feeds("gpt2_masked", 16, SEQ, 3)
    with load_artifact(artifact.path) as runner:
        assert mean_cosine(source.run(feeds)["output"], runner.run(feeds)["output"]) >= 0.98


def test_dynamic_int8_runs_gpt2_as_unidirectional_qattention(build):
    """With no bias left, GPT-2's attention is QAttention again (ORT's quantizer keeps unidirectional)."""
    artifact, source = build("gpt2", "int8-dynamic")
    assert artifact.details["fusions"]["attention"]["op"] == "Attention"
    assert [(n["op"], n["unidirectional"]) for n in _attention_nodes(artifact)] == [("QAttention", 1)] * 2
    feeds = _feeds("gpt2", 16, SEQ, 3)
    with load_artifact(artifact.path) as runner:
        assert mean_cosine(source.run(feeds)["output"], runner.run(feeds)["output"]) >= 0.98


def test_a_graph_without_attention_builds_unfused_and_says_why(tmp_path, write_model):
    source = load_model(write_model(NOT_ATTENTION), dynamic=["input:0=batch"])
    bundle = ModelBundle(source)
    artifact, _ = build_artifact(bundle, "onnxruntime", "fp32", tmp_path / "fp32")
    plain, _ = build_artifact(bundle, "onnxruntime", "fp32", tmp_path / "plain", options={"fusions": "off"})
    fusions = artifact.details["fusions"]
    assert not fusions["applied"] and fusions["reason"] == "no attention site matched (see not_fused)"
    [missed] = fusions["attention"]["not_fused"]
    assert missed["reason"] == "the attention probabilities do not feed one MatMul with V"
    assert artifact.details["ops"] == plain.details["ops"]


def test_openvino_fuses_attention_in_fp32_and_int8(build):
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    fp32, source = build("bert", "fp32", "openvino")
    int8, _ = build("bert", "int8", "openvino", measure=True)
    for artifact in (fp32, int8):
        attention, runtime = artifact.details["attention"], artifact.details["runtime"]
        assert attention["normalized"] and attention["key_transposes_collapsed"] == 2
        # with a dynamic sequence axis the IR keeps MatMul/Softmax/MatMul, which the CPU plugin fuses at compile
        assert runtime["fused_attention_kernels"] == 2 and runtime["unfused_softmax"] == 0
    # the layers' projections run in u8: as FullyConnected, or as 1x1 convolutions where fc_as_conv chose those
    layout = "Convolution" if int8.details["fc_as_conv"]["chosen"] == "convolution" else "FullyConnected"
    assert int8.details["runtime"]["int8_by_type"][layout] >= 10
    assert int8.details["attention_in_float"].startswith("attention kept in float")
    latency = int8.details["latency"]
    assert latency["fp32_ms"] > 0 and latency["int8_ms"] > 0  # measured here; says whether INT8 pays
    assert (latency["warning"] is None) == (latency["speedup"] >= 0.95)
    feeds = _feeds("bert", 4, SEQ, 4)
    ref = source.run(feeds)["output"]
    with load_artifact(fp32.path) as runner:
        np.testing.assert_allclose(runner.run(feeds)["output"], ref, rtol=0, atol=1e-4 * np.abs(ref).max())
    with load_artifact(int8.path) as runner:  # NNCF has no fallback rounds: 0.987 measured on these weights
        assert mean_cosine(ref, runner.run(feeds)["output"]) >= 0.98


def _gpt2_graph_edited(build, edit) -> dict:
    """fusions.mask of GPT-2's exported graph after `edit(graph)` changed one node of its causal mask."""
    import onnx

    from modelport.backends.ort_fusion import fuse_attention

    model = onnx.load(str(ModelBundle(build("gpt2")[1]).onnx_path))
    edit(model.graph)
    return fuse_attention(model).to_json()["mask"]


def _first(graph, op: str):
    return next(n for n in graph.node if n.op_type == op)


def test_a_causal_looking_bias_that_is_not_exactly_causal_keeps_its_bias(build):
    """Each edit leaves a mask the graph computes that Attention's unidirectional=1 would not: query <= key; a
    packed-sequence check no longer provably true (position diffs compared with 2); positions shifted on one side."""
    def swap(graph):
        le = _first(graph, "LessOrEqual")
        le.input[0], le.input[1] = le.input[1], le.input[0]

    def diff_two(graph):
        from onnx import helper

        equal = next(n for n in graph.node if n.op_type == "Equal" and _first(graph, "CumSum") is not None
                     and any("sub" in i for i in n.input))
        graph.node.insert(0, helper.make_node("Constant", [], ["two"], value=helper.make_tensor("", 7, [], [2])))
        equal.input[1] = "two"

    def shifted(graph):
        from onnx import helper

        le = _first(graph, "LessOrEqual")
        graph.node.insert(0, helper.make_node("Constant", [], ["one"], value=helper.make_tensor("", 7, [], [1])))
        graph.node.insert(list(graph.node).index(le), helper.make_node("Add", [le.input[0], "one"], ["kv_plus_one"]))
        le.input[0] = "kv_plus_one"

    reasons = {"swap": "the bias' comparison is not key position <= query position",
               "diff_two": "an Equal term of the bias' condition is not provably true everywhere",
               "shifted": "an index comes from Add, not an arange from 0 by 1"}
    for edit in (swap, diff_two, shifted):
        mask = _gpt2_graph_edited(build, edit)
        assert mask["causal"] == 0 and [s["reason"] for s in mask["additive_bias"]] == [reasons[edit.__name__]] * 2
