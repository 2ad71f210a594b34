"""INT8 MatMuls laid out as 1x1 convolutions (modelport.backends.openvino_fc_conv): the same arithmetic, found by
the same names, on OpenVINO's CPU plugin."""

from __future__ import annotations

import numpy as np
import pytest

ov = pytest.importorskip("openvino", reason="the OpenVINO backend needs the openvino extra")
op = pytest.importorskip("openvino.opset13")

from modelport.backends.openvino_fc_conv import CONV_SUFFIX, rewrite_int8_matmuls  # noqa: E402

K, N = 48, 24
# as modelport compiles: float layers in f32 (the plugin takes bf16 where the CPU has it)
F32 = {"INFERENCE_PRECISION_HINT": "f32"}
STEP = 3 / 128


def _fq(node, lo: float = -128 * STEP, hi: float = 127 * STEP):
    """Activations to 256 levels, by default with zero on a level, as NNCF and QuantizeLinear place them."""
    lo, hi = np.float32(lo), np.float32(hi)
    return op.fake_quantize(node, op.constant(lo), op.constant(hi), op.constant(lo), op.constant(hi), 256)


def _model(*, transpose_b: bool = True, zero_point: bool = False, int8: bool = True, rank: int = 3,
           activation_range: tuple[float, float] = (-128 * STEP, 127 * STEP)):
    """x -> FakeQuantize -> MatMul with an int8 weight dequantized per output channel (7-bit values, so no kernel
    saturates and both layouts compute the same sums)."""
    rng = np.random.default_rng(0)
    q = rng.integers(-63, 64, (N, K)).astype(np.int8)
    scale = rng.uniform(0.01, 0.02, (N, 1)).astype(np.float32)
    zp = rng.integers(-3, 4, (N, 1)).astype(np.float32)
    if not transpose_b:
        q, scale, zp = q.T.copy(), scale.T.copy(), zp.T.copy()
    if int8:
        weight = op.convert(op.constant(q), ov.Type.f32)
        if zero_point:
            weight = op.subtract(weight, op.constant(zp))
        weight = op.multiply(weight, op.constant(scale))
    else:
        weight = op.constant(q.astype(np.float32) * scale)
    x = op.parameter([-1, 5, K][-rank:], ov.Type.f32, name="x")
    matmul = op.matmul(_fq(x, *activation_range), weight, False, transpose_b)
    matmul.set_friendly_name("head")
    matmul.output(0).set_names({"logits"})
    return ov.Model([op.relu(matmul)], [x])


def _run(model, x):
    return ov.Core().compile_model(model, "CPU", F32).create_infer_request().infer({"x": x})[0].copy()


@pytest.mark.parametrize("transpose_b, zero_point, rank", [(True, False, 3), (False, True, 3), (True, True, 2)])
def test_the_convolution_layout_computes_what_the_matmul_did(transpose_b, zero_point, rank):
    x = np.random.default_rng(1).normal(size=(2, 5, K)[-rank:]).astype(np.float32)
    reference = _run(_model(transpose_b=transpose_b, zero_point=zero_point, rank=rank), x)
    model = _model(transpose_b=transpose_b, zero_point=zero_point, rank=rank)
    assert rewrite_int8_matmuls(model) == ["head"]
    assert [o.get_type_name() for o in model.get_ordered_ops()].count("Convolution") == 1
    got = _run(model, x)
    assert got.shape == reference.shape
    np.testing.assert_allclose(got, reference, rtol=1e-4, atol=1e-4)


def test_the_rewritten_layer_keeps_its_name_and_tensor_names_and_runs_an_int8_kernel():
    model = _model()
    rewrite_int8_matmuls(model)
    ops = {o.get_friendly_name(): o for o in model.get_ordered_ops()}
    assert ops["head"].get_type_name() == "Reshape" and ops["head"].output(0).get_names() == {"logits"}
    request = ov.Core().compile_model(model, "CPU", {"PERF_COUNT": True, **F32}).create_infer_request()
    request.infer({"x": np.ones((2, 5, K), np.float32)})
    kernels = {p.node_name: p.exec_type for p in request.get_profiling_info() if p.node_type == "Convolution"}
    assert kernels["head" + CONV_SUFFIX].lower().endswith(("i8", "u8"))  # the plugin still runs it in INT8


def test_matmuls_without_an_int8_weight_are_left_as_they_are():
    model = _model(int8=False)
    assert rewrite_int8_matmuls(model) == []
    assert "MatMul" in [o.get_type_name() for o in model.get_ordered_ops()]


def test_activations_whose_zero_falls_between_levels_are_left_as_matmuls():
    model = _model(activation_range=(-3.0, 3.0))  # zero at level 127.5: the convolution kernel would round it
    assert rewrite_int8_matmuls(model) == []
