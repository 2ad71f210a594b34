"""The Runner contract, held for every backend in the table: one tiny model built once per backend and precision.

Two inputs (float features and int64 token ids) sharing a dynamic batch dim, one output. Whatever the
runtime, the runner's specs are the manifest's, any batch runs, a wrong feed is a BadInput naming the
input and what the model takes (never the runtime's own exception), exact casts are made, and a closed
runner says so.
"""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from modelport.backends import BACKENDS, get_backend
from modelport.builder import build_artifact
from modelport.bundle import ModelBundle
from modelport.calibration import CalibrationSet
from modelport.errors import BadInput, StepFailed, Unavailable
from modelport.loading import load_artifact
from modelport.model import load_model

MODEL = '''import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 3)
        self.emb = nn.Embedding(5, 3)

    def forward(self, x, ids):
        return torch.relu(self.fc(x)) + self.emb(ids).mean(1)


def make():
    torch.manual_seed(0)
    return Tiny(), {"x": torch.randn(2, 6), "ids": torch.randint(0, 5, (2, 4))}
'''

CASES = [(backend, precision) for backend in BACKENDS for precision in ("fp32", "int8")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("contract") / "tiny.py"
    path.write_text(MODEL)
    return load_model(f"{path}:make", dynamic=["x:0=batch", "ids:0=batch"])


@pytest.fixture(scope="module")
def artifacts(tiny, tmp_path_factory):
    """Build on first use, once per backend and precision; a backend unavailable here is skipped with its reason."""
    bundle, out, built = ModelBundle(tiny), tmp_path_factory.mktemp("artifacts"), {}
    rng = np.random.default_rng(0)
    calibration = CalibrationSet.from_arrays({"x": rng.standard_normal((128, 6)).astype(np.float32),
                                              "ids": rng.integers(0, 5, (128, 4))}, tiny.inputs)

    def get(backend: str, precision: str):
        ok, reason = get_backend(backend).available()
        if not ok:
            pytest.skip(reason)
        if (backend, precision) not in built:
            built[backend, precision] = build_artifact(bundle, backend, precision, out / f"{backend}-{precision}",
                                                       calibration=calibration if precision == "int8" else None)[0]
        return built[backend, precision]

    return get


def feeds(batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch)
    return {"x": rng.standard_normal((batch, 6)).astype(np.float32), "ids": rng.integers(0, 5, (batch, 4))}


@pytest.fixture(params=CASES, ids=[f"{b}-{p}" for b, p in CASES])
def built(request, artifacts):
    return artifacts(*request.param)


@pytest.fixture
def runner(built):
    with load_artifact(built.path, threads=1) as runner:
        yield runner


def test_specs_and_outputs_are_the_manifests(built, runner):
    assert runner.inputs == built.inputs and runner.outputs == built.outputs
    out = runner.run(feeds(2))
    assert list(out) == [s.name for s in built.outputs]
    assert [out[s.name].dtype for s in built.outputs] == [np.dtype(s.dtype) for s in built.outputs]


@pytest.mark.parametrize("batch", [1, 3])
def test_any_batch_runs_with_the_output_shapes_of_the_spec(runner, batch):
    out = runner.run(feeds(batch))
    assert {name: a.shape for name, a in out.items()} == {s.name: s.concrete({"batch": batch}) for s in runner.outputs}


WRONG = {
    "missing input": ({"x": feeds(2)["x"]}, r"missing \['ids'\]"),
    "unknown input": ({**feeds(2), "mask": np.ones((2, 4))}, r"unknown \['mask'\]"),
    "wrong static dim": ({**feeds(2), "x": np.zeros((2, 7), np.float32)}, r"'x'.*\(2, 7\).*x:batchx6:float32.*axis 1"),
    "wrong rank": ({**feeds(2), "x": np.zeros((2, 6, 1), np.float32)}, r"'x'.*rank 3.*x:batchx6:float32"),
    "batch differing between inputs": ({**feeds(2), "ids": feeds(3)["ids"]}, r"'ids' has batch=3.*'x' has batch=2"),
    "float ids": ({**feeds(2), "ids": feeds(2)["ids"].astype(np.float32)}, r"'ids' is float32.*ids:batchx4:int64"),
    "ids that int64 cannot hold": ({**feeds(2), "ids": np.full((2, 4), 2**63, np.uint64)}, r"'ids' is uint64"),
    "not a dict": ([feeds(2)["x"], feeds(2)["ids"]], r"Feeds are a list"),
}


@pytest.mark.parametrize("case", list(WRONG))
def test_a_wrong_feed_is_bad_input_naming_the_input_and_the_spec(runner, case):
    wrong, message = WRONG[case]
    with pytest.raises(BadInput, match=message):
        runner.run(wrong)


def test_float64_and_int32_feeds_are_cast_exactly(runner):
    given = feeds(3)
    widened = {"x": given["x"].astype(np.float64), "ids": given["ids"].astype(np.int32)}
    for name, out in runner.run(widened).items():
        np.testing.assert_array_equal(out, runner.run(given)[name])


def test_a_closed_runner_says_so_and_closing_twice_is_harmless(built):
    with load_artifact(built.path) as runner:
        runner.run(feeds(1))
    assert runner.closed
    runner.close()
    with pytest.raises(StepFailed, match="closed"):
        runner.run(feeds(1))


def test_loading_needs_only_the_artifact_directory(built, runner, tmp_path):
    moved = shutil.copytree(built.path, tmp_path / "elsewhere")
    with load_artifact(moved) as copy:
        for name, out in copy.run(feeds(3)).items():
            np.testing.assert_array_equal(out, runner.run(feeds(3))[name])


def test_intermediates_read_every_listed_tensor_or_say_they_cannot(runner):
    try:
        names = runner.tensor_names()
    except Unavailable as exc:  # TensorRT keeps the base's default
        assert f"The {runner.name} runner cannot expose intermediate tensors" in exc.message
        with pytest.raises(Unavailable, match="cannot expose intermediate tensors"):
            runner.intermediates(feeds(1), ["x"])
        return
    values = runner.intermediates(feeds(3), names)
    assert list(values) == names and len(names) > len(runner.outputs)
    assert all(v.dtype == np.float32 for v in values.values() if v.dtype.kind == "f")
    for name, out in runner.run(feeds(3)).items():  # the outputs are among them, read in the same runtime
        np.testing.assert_allclose(values[name], out, rtol=1e-5, atol=1e-6)
    with pytest.raises(BadInput, match="no tensor"):
        runner.intermediates(feeds(1), ["not-a-tensor"])


def test_run_many_gives_what_run_gives_in_order(runner):
    many = runner.run_many([feeds(1), feeds(3), feeds(2)])
    for batch, out in zip((1, 3, 2), many, strict=True):
        for name, value in runner.run(feeds(batch)).items():
            np.testing.assert_allclose(out[name], value, rtol=1e-5, atol=1e-6)


USER_RUNNERS = '''import numpy as np


class Listing:
    def run(self, feeds):
        return [np.zeros((len(feeds["x"]), 3))]


class Texts:
    def run(self, feeds):
        return {"output": "three numbers"}


def listing(threads):
    return Listing()


def texts(threads):
    return Texts()


def nothing(threads):
    return None
'''


def test_the_harness_runners_keep_the_contract(tiny, tmp_path):
    """The PyTorch baseline and `--runner` objects are Runners too, loaded from their specs through the one table
    of runner kinds: feeds checked alike, results checked."""
    from modelport.harness.runners import load_runner, runner_spec

    with load_runner(runner_spec("torch", tiny, {}), threads=1) as torch_runner:
        assert torch_runner.run(feeds(3))["output"].shape == (3, 3)
        with pytest.raises(BadInput, match=r"'x'.*x:batchx6:float32"):
            torch_runner.run({**feeds(2), "x": np.zeros((2, 7), np.float32)})
    path = tmp_path / "user_runners.py"
    path.write_text(USER_RUNNERS)

    def user(fn: str):
        return load_runner(runner_spec("python", tiny, {"runner": f"{path}:{fn}"}), threads=1)

    for fn, message in [("listing", "returned a list from run"), ("texts", "returned 'output' as a str")]:
        with pytest.raises(StepFailed, match=re.escape(f"The runner {path}:{fn} {message}")):
            user(fn).run(feeds(2))
    with pytest.raises(BadInput, match=r"missing \['ids'\]"):
        user("listing").run({"x": feeds(2)["x"]})
    with pytest.raises(StepFailed, match="returned a NoneType without a run"):
        user("nothing")
    with pytest.raises(ValueError, match="unknown runner kind 'onnx'"):
        load_runner({"kind": "onnx"}, threads=1)
