"""The bench's plan and its survival: unavailable backends are rows, a crashing runner is a failed row and
the run goes on, an interrupted run resumes measuring each row once, a hung measurement is killed."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from modelport.backends import BACKENDS, get_backend
from modelport.errors import BadInput
from modelport.harness import bench, isolate, jobs, matrix, results
from modelport.harness.runners import model_spec
from modelport.model import load_model
from tests.models import MLP

RUNNERS = '''
import os
import signal
import time

from modelport.model import load_model


class TorchRunner:
    """A user's own runner: here simply the same model in PyTorch, so its fidelity is exact."""

    def __init__(self, threads):
        import torch

        torch.set_num_threads(threads)
        self.source = load_model(MODEL_REF)

    def run(self, feeds):
        return self.source.run(feeds)


class Crashing:
    def run(self, feeds):
        os.kill(os.getpid(), signal.SIGSEGV)


class Hanging:
    def run(self, feeds):
        time.sleep(3600)


def good(threads):
    return TorchRunner(threads)


def crash(threads):
    return Crashing()


def hang(threads):
    return Hanging()


class Probe:
    def __init__(self, threads):
        self.threads = threads

    def run(self, feeds):
        import numpy as np
        import torch

        seen = [self.threads, torch.get_num_threads(), int(os.environ["OMP_NUM_THREADS"])]
        return {"output": np.tile(np.array(seen), (len(feeds["x"]), 1))}


def probe(threads):
    return Probe(threads)
'''


@pytest.fixture
def mlp(write_model) -> str:
    return write_model(MLP)


@pytest.fixture
def runners(mlp: str, tmp_path: Path) -> str:
    path = tmp_path / "my_runners.py"
    path.write_text(RUNNERS.replace("MODEL_REF", repr(mlp)))
    return str(path)


def _user_runner(ref: str) -> dict:
    """A `--runner` job's runner spec as the plan writes it: the ref and the model's specs its feeds are checked
    against."""
    return {"kind": "python", "ref": ref, "inputs": [{"name": "x", "shape": ["batch", 10], "dtype": "float32"}],
            "outputs": [{"name": "output", "shape": ["batch", 3], "dtype": "float32"}]}


def _rows(out: Path) -> list[dict]:
    return [r for r in results.read(out / results.RESULTS) if r["type"] == "row"]


def test_plan_keeps_unavailable_backends_as_rows_with_the_reason(monkeypatch):
    # a table entry whose module is not written yet
    monkeypatch.setitem(BACKENDS, "future", replace(BACKENDS["onnxruntime"], name="future", title="Future RT",
                                                    module="modelport.backends.not_written_yet",
                                                    cls="FutureBackend", precisions=("fp32", "int8")))
    settings = matrix.Settings(backends=("tensorrt", "future"), precisions=("fp32", "int8", "int8-dynamic"),
                               batches=(1, 8), iterations=10, duration=None)
    trt_ok, trt_reason = get_backend("tensorrt").available()
    if trt_ok:
        pytest.skip("TensorRT is available here; this test needs it absent")
    plan = matrix.make_plan(settings, calibrated=True)
    assert [(i.backend, i.precision, i.batch) for i in plan[:2]] == [("pytorch", "fp32", 1), ("pytorch", "fp32", 8)]
    trt = [i for i in plan if i.backend == "tensorrt"]
    # the capability table decides the precisions: TensorRT builds no int8-dynamic
    assert sorted({i.precision for i in trt}) == ["fp32", "int8"] and len(trt) == 4
    assert all(i.status == "unavailable" and i.reason == trt_reason for i in trt)
    future = [i for i in plan if i.backend == "future"]
    assert len(future) == 4 and all(i.status == "unavailable" for i in future)
    assert "modelport cannot import its future backend" in future[0].reason


def test_calibrated_precisions_without_data_are_skipped_with_the_reason():
    settings = matrix.Settings(backends=("openvino",), precisions=("fp32", "int8"), iterations=5, duration=None)
    plan = matrix.make_plan(settings, calibrated=False)
    ov = {i.precision: i for i in plan if i.backend == "openvino"}
    if ov["fp32"].status == "unavailable":
        pytest.skip(f"OpenVINO unavailable: {ov['fp32'].reason}")
    assert ov["fp32"].status == "planned"
    assert ov["int8"].status == "skipped" and "--calib" in ov["int8"].reason


def test_options_go_where_they_apply_and_unknown_ones_are_errors():
    base = {"backends": ("openvino",), "precisions": ("fp32", "int8"), "iterations": 5, "duration": None}
    ov_ok, reason = get_backend("openvino").available()
    if not ov_ok:
        pytest.skip(f"OpenVINO unavailable: {reason}")
    plan = matrix.make_plan(matrix.Settings(**base, options={"*": {"preset": "mixed"}}), calibrated=True)
    by_precision = {i.precision: i for i in plan if i.backend == "openvino"}
    assert by_precision["int8"].given == {"preset": "mixed"} and by_precision["int8"].options["preset"] == "mixed"
    assert by_precision["fp32"].given == {}  # preset is an int8 option
    with pytest.raises(BadInput, match=r"Unknown option.*nonsense"):
        matrix.make_plan(matrix.Settings(**base, options={"openvino": {"nonsense": "1"}}), calibrated=True)
    with pytest.raises(BadInput, match="No selected backend takes"):
        matrix.make_plan(matrix.Settings(**base, options={"*": {"nonsense": "1"}}), calibrated=True)


def test_batch_axis_becomes_dynamic_unless_the_model_cannot_take_it(write_model):
    source = load_model(write_model(MLP))
    assert source.inputs[0].shape[0] == 4
    assert matrix.prepare_model(source, [1, 8], user_dynamic=False).inputs[0].shape[0] == "batch"
    fixed = load_model(write_model(
        "class Fixed(nn.Module):\n    def forward(self, x):\n        return x.reshape(4, -1).sum(1)\n\n\n"
        "def make():\n    return Fixed(), (torch.randn(4, 10),)\n", name="fixed.py"))
    assert matrix.prepare_model(fixed, [4], user_dynamic=False).inputs[0].shape[0] == 4
    with pytest.raises(BadInput, match="does not run with another batch size"):
        matrix.prepare_model(fixed, [1, 4], user_dynamic=False)


def test_a_crashing_runner_is_a_failed_row_naming_the_signal_and_the_run_goes_on(mlp, runners, tmp_path):
    out = tmp_path / "bench"
    report = bench(mlp, out=out, backends=[], runners={"crasher": f"{runners}:crash", "mine": f"{runners}:good"},
                   iterations=20, warmup=2, threads=1)
    rows = {r["backend"]: r for r in _rows(out)}
    crashed = rows["crasher"]
    assert crashed["status"] == "failed" and crashed["stage"] == "fidelity"
    assert "killed by SIGSEGV" in crashed["reason"] and "my_runners.py:" in crashed["reason"]
    assert "latency: the measuring process was killed by SIGSEGV" in crashed["reason"]
    # measured after the crash, in full
    assert rows["mine"]["status"] == "ok" and rows["mine"]["latency"]["iterations"] == 20
    assert rows["mine"]["fidelity"]["summary"]["identical"] is True
    assert rows["pytorch"]["status"] == "ok" and rows["pytorch"]["latency"]["threads"] == 1
    assert "killed by SIGSEGV" in (out / "report.md").read_text()
    assert report["recommendations"][0]["key"] is not None


def test_an_interrupted_run_resumes_and_measures_each_row_once(mlp, runners, tmp_path):
    out = tmp_path / "bench"
    args = {"out": out, "backends": [], "runners": {"mine": f"{runners}:good"}, "batches": (1, 2),
            "iterations": 10, "warmup": 1, "threads": 1}

    def stop_after_first(row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        bench(mlp, **args, on_row=stop_after_first)
    first = _rows(out)
    assert len(first) == 1 and first[0]["status"] == "ok"
    measured = []
    report = bench(mlp, **args, on_row=measured.append)
    assert first[0]["key"] not in {r["key"] for r in measured}
    assert len(measured) == 3  # pytorch at batch 2, and the custom runner at batches 1 and 2
    all_rows = _rows(out)
    assert len(all_rows) == 4 and len({r["key"] for r in all_rows}) == 4
    assert {r["status"] for r in report["rows"]} == {"ok"}
    again = []
    bench(mlp, **args, on_row=again.append)
    assert again == [] and len(_rows(out)) == 4
    runs = [r for r in results.read(out / results.RESULTS) if r["type"] == "run"]
    assert len(runs) == 3 and all(r["machine"]["cores"] for r in runs)


def test_a_hung_measurement_is_killed_at_the_timeout(runners, tmp_path):
    import numpy as np

    np.savez(tmp_path / "inputs.npz", x=np.zeros((2, 10), np.float32))
    job = jobs.LatencyJob(runner=_user_runner(f"{runners}:hang"), inputs=str(tmp_path / "inputs.npz"), batch=1,
                          iterations=5, duration=None, warmup=1)
    outcome = isolate.run_isolated(job, threads=1, workdir=tmp_path / "work", name="hang", timeout=6)
    assert not outcome.ok and outcome.error == "timed out after 6 s and was killed"
    assert outcome.seconds < 30


@pytest.mark.parametrize("fork", [True, False], ids=["forked", "spawned"])
def test_thread_count_is_pinned_in_the_measuring_process(runners, tmp_path, fork):
    import numpy as np

    np.savez(tmp_path / "inputs.npz", x=np.zeros((3, 10), np.float32))
    job = jobs.FidelityJob(runner=_user_runner(f"{runners}:probe"), inputs=str(tmp_path / "inputs.npz"), chunk=2,
                           outputs=str(tmp_path / "out.npz"))
    outcome = isolate.run_isolated(job, threads=3, workdir=tmp_path / "work", name="probe", timeout=120, fork=fork)
    assert outcome.ok, outcome.error
    assert outcome.result["threads"] == 3 and outcome.result["samples"] == 3
    with np.load(tmp_path / "out.npz") as saved:
        seen = saved["arr_0"]
    # the runner was given threads=3, torch runs 3 threads, and every thread-count variable says 3
    assert seen.shape == (3, 3) and (seen == 3).all()


def test_the_model_factory_module_is_imported_once_for_all_the_jobs_that_load_the_model(tmp_path, monkeypatch):
    package = tmp_path / "warmpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "factory.py").write_text(
        "import os\nfrom pathlib import Path\n\nimport torch\n\n"
        "with open(Path(__file__).with_name('imports.txt'), 'a') as log:\n    log.write(f'{os.getpid()}\\n')\n\n\n"
        "def tiny():\n    torch.manual_seed(0)\n    return torch.nn.Linear(4, 2).eval(), (torch.zeros(1, 4),)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    source = load_model("warmpkg.factory:tiny")
    job = jobs.ExportJob(model=model_spec(source), onnx_dir=str(tmp_path / "onnx"))
    assert isolate.factory_modules(job.to_json()) == ("warmpkg.factory",)
    with isolate.Isolator(tmp_path / "work", threads=1, fork=True) as isolator:
        outcomes = [isolator.run(job, name=f"export-{i}", timeout=300) for i in range(2)]
    assert all(o.ok for o in outcomes), [o.error for o in outcomes]
    importers = (package / "imports.txt").read_text().split()
    # this process imported it once, and the server that forked both export children once: not once a job
    assert len(importers) == 2 and str(os.getpid()) in importers


def test_only_importable_factory_modules_are_imported_ahead():
    assert isolate.factory_modules({"task": "fidelity", "runner": {"kind": "artifact"}}) == ()
    assert isolate.factory_modules({"model": {"origin": "models/net.py:make"}}) == ()
    assert isolate.factory_modules({"model": {"origin": "weights.pt2"}}) == ()
