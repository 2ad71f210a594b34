"""Compression: pruning, low-rank and distillation make smaller models that still export, build and score.

Runs on the trained digits CNN with its real train/test splits, and on a tiny attention model written
the timm way (pruning's heads and MLP neurons). One torch thread: small models train fastest that way.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from modelport.backends import get_backend
from modelport.builder import build_artifact
from modelport.bundle import ModelBundle
from modelport.calibration import CalibrationSet, open_evaluation
from modelport.cli import app
from modelport.compress import Settings, compress
from modelport.compress.train import cross_entropy
from modelport.harness.fidelity import compare_output
from modelport.loading import load_artifact
from modelport.model import load_model

TRAIN = "modelport.examples:digits_calibration"
EVAL = "modelport.examples:digits_evaluation"


def _compress(tmp_path, name, settings, model="modelport.examples:digits_cnn", **kwargs):
    kwargs.setdefault("train", TRAIN)
    kwargs.setdefault("evaluation", EVAL)
    return compress(model, out=tmp_path / f"{name}.pt2", settings=settings, threads=1, **kwargs)


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """The digits CNN with half its channels pruned, no fine-tuning."""
    return _compress(tmp_path_factory.mktemp("pruned"), "pruned", Settings(prune=0.5, epochs=0))


def test_pruning_removes_half_the_channels_and_keeps_the_outputs(pruned):
    step = pruned.report["steps"][0]
    assert step["technique"] == "prune"
    assert step["details"]["widths"] == {"features.0": [16, 8], "features.3": [32, 16], "classifier.1": [64, 32]}
    before, after = pruned.report["before"], pruned.report["after"]
    assert after["macs"] < 0.3 * before["macs"] and after["params"] < 0.3 * before["params"]
    reloaded = load_model(str(pruned.path))
    assert [str(s) for s in reloaded.outputs] == ["output:batchx10:float32"]
    assert reloaded.inputs[0].dynamic_axes == {0: "batch"}


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "tflite"])
def test_the_pruned_model_builds_and_runs_on_every_cpu_runtime(pruned, tmp_path, backend, digits_test_data):
    ok, reason = get_backend(backend).available()
    if not ok:
        pytest.skip(f"{backend} is unavailable here: {reason}")
    source = load_model(str(pruned.path))
    artifact, _ = build_artifact(ModelBundle(source), backend, "fp32", tmp_path / backend)
    images = digits_test_data[0][:8]
    expected = source.run({"x": images})["output"]
    with load_artifact(artifact.path, threads=1) as runner:
        got = runner.run({"x": images})["output"]
    assert compare_output(got, expected)["cosine"] > 0.9999


class Attention(nn.Module):
    """Self-attention written in plain torch, timm-style: `num_heads` and a fused `qkv` Linear."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class TinyTransformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 32)
        self.norm1, self.attn = nn.LayerNorm(32), Attention(32, 4)
        self.norm2, self.fc1, self.fc2 = nn.LayerNorm(32), nn.Linear(32, 128), nn.Linear(128, 32)
        self.head = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        x = x + self.attn(self.norm1(x))
        x = x + self.fc2(nn.functional.gelu(self.fc1(self.norm2(x))))
        return self.head(x.mean(1))


def tiny_transformer():
    torch.manual_seed(0)
    return TinyTransformer().eval(), (torch.randn(2, 5, 6),)


def test_pruning_a_transformer_removes_heads_and_mlp_neurons(tmp_path):
    source = load_model("tests.test_compress:tiny_transformer")
    rng = np.random.default_rng(0)
    data = CalibrationSet.from_arrays({"x": rng.standard_normal((32, 5, 6)).astype(np.float32)}, source.inputs,
                                      labels=rng.integers(0, 3, 32))
    result = compress(source, train=data, evaluation=data, out=tmp_path / "t.pt2",
                      settings=Settings(prune=0.5, epochs=0), threads=1)
    attn = result.model.module.attn
    assert (attn.num_heads, attn.head_dim, attn.qkv.out_features) == (2, 8, 48)
    assert result.model.module.fc1.out_features == 64 and result.model.module.head.out_features == 3
    assert result.report["after"]["macs"] < 0.5 * result.report["before"]["macs"]
    reloaded = load_model(str(result.path))
    x = {"x": rng.standard_normal((3, 5, 6)).astype(np.float32)}
    np.testing.assert_allclose(reloaded.run(x)["output"], result.model.run(x)["output"], atol=1e-5)


def test_a_transformer_is_pruned_factorized_and_qat_trained_and_its_int8_build_reads_the_ranges(tmp_path):
    source = load_model("tests.test_compress:tiny_transformer", dynamic=["x:0=batch"])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((128, 5, 6)).astype(np.float32)
    labels = (x.mean(1) @ rng.standard_normal((6, 3))).argmax(1)  # a task the model can learn
    data = CalibrationSet.from_arrays({"x": x}, source.inputs, labels=labels)
    settings = Settings(prune=0.5, low_rank=0.5, low_rank_target="macs", qat=True, epochs=1, qat_epochs=1)
    result = compress(source, train=data, evaluation=data, out=tmp_path / "t.pt2", settings=settings, threads=1)
    report, module = result.report, result.model.module
    assert [s["technique"] for s in report["steps"]] == ["prune", "low_rank", "qat"]
    assert module.attn.num_heads == 2 and report["steps"][0]["details"]["widths"]["fc1"] == [128, 64]
    factorized = report["steps"][1]["details"]["factorized"]
    assert factorized and all(f["rank"] < f["full_rank"] for f in factorized.values())
    assert isinstance(module.get_submodule(next(iter(factorized))), nn.Sequential)  # Linear(in, r) -> Linear(r, out)
    quantized = report["steps"][2]["details"]["quantized_layers"]
    linears = sorted(n for n, m in module.named_modules() if isinstance(m, nn.Linear))
    assert quantized == linears and report["qat"]["unnamed_layers"] == []
    artifact = build_artifact(ModelBundle(load_model(str(result.path))), "onnxruntime", "int8", tmp_path / "int8",
                              calibration=data)[0]
    given = artifact.manifest["details"]["calibration"]["given_ranges"]
    ranges = json.loads(Path(report["qat"]["ranges_file"]).read_text())["ranges"]
    assert given["applied"] == sorted(ranges) and given["not_in_prepared_graph"] == []
    feeds = {"x": x[:16]}
    with load_artifact(artifact.path, threads=1) as runner:
        got = runner.run(feeds)["output"]
    assert compare_output(got, result.model.run(feeds)["output"])["cosine"] > 0.99


def test_low_rank_lowers_macs_with_outputs_close_before_fine_tuning(tmp_path, digits, digits_test_data):
    result = _compress(tmp_path, "lr", Settings(low_rank=0.9, epochs=0))
    factorized = result.report["steps"][0]["details"]["factorized"]
    assert set(factorized) == {"features.3", "classifier.1"}  # where keeping 90% of the energy pays in MACs
    assert all(f["rank"] < f["full_rank"] for f in factorized.values())
    assert result.report["after"]["macs"] < 0.95 * result.report["before"]["macs"]
    images = {"x": digits_test_data[0]}
    similarity = compare_output(result.model.run(images)["output"], digits.run(images)["output"])
    assert similarity["cosine"] > 0.99 and similarity["top1_agreement"] > 0.98


def test_low_rank_by_macs_target_halves_the_factorized_layers_and_skips_what_does_not_pay(tmp_path):
    halved = _compress(tmp_path, "macs", Settings(low_rank=0.5, low_rank_target="macs", epochs=0)).report
    assert halved["after"]["macs"] < 0.6 * halved["before"]["macs"]
    kept = _compress(tmp_path, "energy", Settings(low_rank=0.999, epochs=0)).report
    assert kept["steps"][0]["details"]["factorized"] == {}  # at 99.9% energy no factorization costs fewer MACs
    assert kept["after"]["macs"] == kept["before"]["macs"]


def test_distillation_recovers_accuracy_after_pruning(tmp_path):
    pruned = _compress(tmp_path, "p", Settings(prune=0.75, epochs=0)).report["after"]["metric"]
    distilled = _compress(tmp_path, "pd", Settings(prune=0.75, distill=True, epochs=3, lr=3e-3)).report
    assert distilled["after"]["metric"] > pruned + 5
    assert distilled["steps"][0]["fine_tune"]["objective"] == "distill"
    assert [e["epoch"] for e in distilled["steps"][0]["epochs"]] == [1, 2, 3]


class Interrupt(Exception):
    pass


def test_an_interrupted_run_resumes_and_ends_as_an_uninterrupted_one(tmp_path, digits):
    train = open_evaluation(TRAIN, digits.inputs, size=300)
    settings = Settings(prune=0.5, prune_rounds=2, epochs=2, seed=3)
    whole = _compress(tmp_path / "whole", "m", settings, train=train)

    def stop(record):
        if (record.step, record.epoch) == (1, 1):
            raise Interrupt

    with pytest.raises(Interrupt):
        _compress(tmp_path / "cut", "m", settings, train=train, on_epoch=stop)
    assert not (tmp_path / "cut" / "m.pt2").exists() and (tmp_path / "cut" / "m.pt2.ckpt").is_dir()
    resumed = _compress(tmp_path / "cut", "m", settings, train=train)
    assert resumed.report["resumed"] == {"step": 2, "epoch": 1}
    assert [e["epoch"] for e in resumed.report["steps"][1]["epochs"]] == [1, 2]
    assert not (tmp_path / "cut" / "m.pt2.ckpt").exists()
    for (name, a), (_, b) in zip(whole.model.module.state_dict().items(), resumed.model.module.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name
    assert resumed.report["after"] == whole.report["after"]


def interrupting_cross_entropy(at_call: int | None):
    """The built-in task loss, raising KeyboardInterrupt (Ctrl-C) on its `at_call`-th call: mid-epoch."""
    calls = 0

    def loss(outputs, labels):
        nonlocal calls
        calls += 1
        if calls == at_call:
            raise KeyboardInterrupt
        return cross_entropy(outputs, labels)
    return loss


@pytest.mark.parametrize("settings", [Settings(qat=True, qat_epochs=2, seed=1),
                                      Settings(prune=0.5, distill=True, epochs=2, seed=1)],
                         ids=["qat", "prune_distill"])
def test_ctrl_c_mid_epoch_resumes_from_the_last_finished_epoch_to_the_same_model(tmp_path, digits, settings):
    train = open_evaluation(TRAIN, digits.inputs, size=300)  # 5 batches of 64 an epoch
    whole = _compress(tmp_path / "whole", "m", settings, train=train, loss=interrupting_cross_entropy(None))
    with pytest.raises(KeyboardInterrupt):  # in epoch 2's third batch
        _compress(tmp_path / "cut", "m", settings, train=train, loss=interrupting_cross_entropy(8))
    assert not (tmp_path / "cut" / "m.pt2").exists()
    resumed = _compress(tmp_path / "cut", "m", settings, train=train, loss=interrupting_cross_entropy(None))
    assert resumed.report["resumed"] == {"step": 1, "epoch": 1}
    untimed = [[{k: v for k, v in e.items() if k != "seconds"} for e in r.report["steps"][0]["epochs"]]
               for r in (whole, resumed)]
    assert untimed[0] == untimed[1] and len(untimed[0]) == 2  # each epoch's loss and metric
    for (name, a), (_, b) in zip(whole.model.module.state_dict().items(), resumed.model.module.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name
    assert resumed.report["after"] == whole.report["after"]
    if settings.qat:  # the learned ranges too
        assert (json.loads(Path(resumed.report["qat"]["ranges_file"]).read_text())["ranges"]
                == json.loads(Path(whole.report["qat"]["ranges_file"]).read_text())["ranges"])


def test_json_output_has_before_after_and_every_step(tmp_path):
    out = tmp_path / "c.pt2"
    result = CliRunner().invoke(app, ["compress", "modelport.examples:digits_cnn", "--train", TRAIN, "--eval", EVAL,
                                      "--prune", "0.25", "--low-rank", "0.5", "--low-rank-target", "macs",
                                      "--epochs", "1", "--threads", "1", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    for side in ("before", "after"):
        assert set(data[side]) == {"params", "macs", "metric"}
    assert data["metric"]["name"] == "top1_accuracy"
    assert [s["technique"] for s in data["steps"]] == ["prune", "low_rank"]
    assert data["steps"][0]["settings"]["target_ratio"] == 0.25 and data["steps"][1]["settings"]["target"] == "macs"
    assert data["steps"][0]["after"] == data["steps"][1]["before"] and data["steps"][1]["after"] == data["after"]
    assert json.loads((tmp_path / "c.json").read_text())["machine"]["cpu"]


MODELS = '''
class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.b(torch.from_numpy(self.a(x).numpy()))


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def mlp():
    return Mlp(), (torch.randn(2, 4),)


def untraceable():
    return Untraceable(), (torch.randn(2, 4),)
'''


@pytest.mark.parametrize(("model", "args", "message"), [
    ("mlp", ["--prune", "0.5"], "needs training data: --train SRC"),
    ("mlp", ["--train", "{labelled}", "--prune", "0"], "--prune 0.0: the share of channels to remove must be in"),
    ("mlp", ["--train", "{labelled}", "--low-rank", "1"], "--low-rank 1.0: the ratio must be in (0, 1)"),
    ("mlp", ["--train", "{labelled}"], "Nothing to do"),
    ("mlp", ["--train", "{unlabelled}", "--prune", "0.5"], "has no labels, and the built-in task loss"),
    ("mlp", ["--train", "synthetic:16", "--prune", "0.5"], "random data has no labels"),
    ("mlp", ["--train", "{labelled}", "--distill", "--distill-features", "nope"], "does not have"),
    ("untraceable", ["--train", "{labelled}", "--prune", "0.5"], "torch-pruning cannot trace this model"),
])
def test_bad_input_exits_2_with_the_reason(tmp_path, write_model, model, args, message):
    labelled, unlabelled = tmp_path / "d.npz", tmp_path / "u.npz"
    x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    np.savez(labelled, x=x, labels=np.arange(8) % 3)
    np.savez(unlabelled, x=x)
    args = [a.format(labelled=labelled, unlabelled=unlabelled) for a in args]
    result = CliRunner().invoke(app, ["compress", write_model(MODELS, model), *args, "--threads", "1",
                                      "-o", str(tmp_path / "o.pt2")])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
