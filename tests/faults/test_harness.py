"""Bench settings, results files, reports and interrupted benches: what a user (or the machine) got wrong, and
what modelport does instead: a clear exit-2 or exit-1 message naming the cause and the path, nothing measured
lost, no row of another model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelport.cli import app
from modelport.harness import results
from tests.models import ENCODER, MLP
from tests.test_harness_report import labelled_rows, row, run_record, write

TINY = ["--backends", "onnxruntime", "--precisions", "fp32", "--iterations", "3", "--warmup", "1", "--threads", "1"]


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def says(text: str, *parts: str) -> bool:
    """Whether `text` holds every part, ignoring whitespace: rich wraps at the terminal width, even inside a path."""
    flat = "".join(text.split())
    return all("".join(part.split()) in flat for part in parts)


def latest_rows(path: Path) -> dict[str, dict]:
    """The last row written for each key."""
    return {r["key"]: r for r in results.read(path) if r["type"] == "row"}


def report_rows(out: Path) -> list[tuple[str, str, str]]:
    return [(r["backend"], r["precision"], r["status"]) for r in json.loads((out / "report.json").read_text())["rows"]]


# ---- settings -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("extra", "message"), [
    (["--option", "onnxrunt.foo=1"], "unknown backend(s) 'onnxrunt'"),
    (["--option", "openvno.x=1"], "unknown backend(s) 'openvno'"),
    (["--option", "openvino.device=CPU"], "openvino, which this bench does not build"),
    (["--option", "onnxruntime.method=entropy"], "method for onnxruntime apply to none of the precisions benched"),
    (["--option", "method=entropy"], "No selected backend takes option(s) method"),
    (["--backends", ""], "--backends names no backend"),
    (["--warmup", "-3"], "--warmup must be 0 or more, not -3"),
    (["--timeout", "0"], "--timeout must be a positive number of seconds, not 0"),
    (["--iterations", "0"], "--iterations must be at least 1"),
    (["--rounds", "0"], "--rounds must be at least 1"),
    (["--threads", "0"], "--threads must be at least 1"),
])
def test_a_bench_setting_that_would_be_ignored_or_break_every_row_is_exit_2(tmp_path, write_model, extra, message):
    out = tmp_path / "bench"
    result = invoke("bench", write_model(MLP), *TINY, *extra, "-o", str(out))
    assert result.exit_code == 2, result.output
    assert says(result.stderr, message)
    assert not (out / results.RESULTS).exists()  # refused before anything was measured


def test_a_duration_that_is_not_positive_is_exit_2(tmp_path, write_model):
    args = [a for a in TINY if a not in ("--iterations", "3")]
    result = invoke("bench", write_model(MLP), *args, "--duration", "0", "-o", str(tmp_path / "bench"))
    assert result.exit_code == 2 and says(result.stderr, "--duration must be positive")


def test_a_missing_metric_file_names_metric_and_the_path(tmp_path, write_model):
    missing = tmp_path / "nowhere" / "metric.py"
    result = invoke("bench", write_model(MLP), *TINY, "--metric", f"{missing}:score", "-o", str(tmp_path / "b"))
    assert result.exit_code == 2
    assert says(result.stderr, f"'{missing}' in --metric", "does not exist") and "MODEL" not in result.stderr
    assert not (tmp_path / "b" / results.RESULTS).exists()


def test_a_bench_that_measured_no_row_exits_1_and_still_writes_the_reports(tmp_path, write_model):
    out = tmp_path / "bench"
    result = invoke("bench", write_model(MLP), *TINY, "--timeout", "0.001", "-o", str(out))  # nothing fits
    assert result.exit_code == 1, result.output
    assert says(result.stderr, "No row was measured", str(out / "results.jsonl"))
    assert {status for _, _, status in report_rows(out)} <= {"failed", "unavailable"}
    assert (out / "report.md").is_file() and (out / "report.html").is_file()


# ---- one identity for one model -------------------------------------------------------------------------


def test_a_model_with_dict_inputs_is_the_same_model_in_every_measuring_process(tmp_path, write_model):
    out = tmp_path / "bench"
    result = invoke("bench", write_model(ENCODER), *TINY, "-o", str(out))
    assert result.exit_code == 0, result.output
    assert sorted(report_rows(out)) == [("onnxruntime", "fp32", "ok"), ("pytorch", "fp32", "ok")]


def test_a_factory_that_depends_on_random_state_fails_its_rows_saying_so(tmp_path, write_model):
    ref = write_model("def make():\n    return nn.Linear(4, 2), (torch.randn(1, 4),)\n")  # unseeded weights
    out = tmp_path / "bench"
    result = invoke("bench", ref, *TINY, "-o", str(out))
    assert result.exit_code == 1, result.output  # no row could be measured on the model being benched
    rows = {r["backend"]: r for r in latest_rows(out / results.RESULTS).values()}
    assert rows["pytorch"]["status"] == "failed" and "depend on random state" in rows["pytorch"]["reason"]
    assert rows["onnxruntime"]["status"] == "failed" and "depend on random state" in rows["onnxruntime"]["reason"]


# ---- results.jsonl --------------------------------------------------------------------------------------


def test_a_record_appended_after_a_torn_last_line_is_kept(tmp_path):
    write(tmp_path, [run_record([]), *labelled_rows()[:1]])
    with open(tmp_path / results.RESULTS, "a") as f:
        f.write('{"type": "row", "key": "half')  # the run was killed mid-write
    last = labelled_rows()[1]
    results.append(tmp_path / results.RESULTS, last)
    result = invoke("report", str(tmp_path), "--json")
    assert result.exit_code == 0, result.output
    assert says(result.stderr, f"warning: {tmp_path / results.RESULTS}:3 is not valid JSON")
    assert "UserWarning" not in result.stderr and "Traceback" not in result.stderr
    keys = {r["key"] for r in json.loads(result.stdout)["rows"]}
    assert {labelled_rows()[0]["key"], last["key"]} <= keys


@pytest.mark.parametrize(("line", "problem"), [
    (json.dumps({k: v for k, v in row("openvino", "fp32", p50=0.2, sqnr=40).items() if k != "model"}).encode(),
     "model is missing"),
    (json.dumps({**row("openvino", "fp32", p50=0.2, sqnr=40), "latency": "fast"}).encode(), 'latency is "fast"'),
    (json.dumps({**row("openvino", "fp32", p50=0.2, sqnr=40), "batch": None}).encode(),
     "batch is null, not an integer"),
    (b'["a", "list"]', "it holds a JSON list"),
    (b'{"type": "row", "reason": "\xff\xfe"}', "is not valid UTF-8"),
])
def test_a_malformed_results_line_is_skipped_with_a_warning_naming_it(tmp_path, line, problem):
    good = [run_record([]), *labelled_rows()]
    write(tmp_path, good)
    path = tmp_path / results.RESULTS
    with open(path, "ab") as f:
        f.write(line + b"\n")
    result = invoke("report", str(tmp_path), "--json")
    assert result.exit_code == 0, result.output
    assert says(result.stderr, f"warning: {path}:{len(good) + 1}", problem, "skipped")
    assert len(json.loads(result.stdout)["rows"]) == len(labelled_rows())  # the good rows are all there


# ---- artifact manifests ---------------------------------------------------------------------------------

MANIFEST = {"backend": "onnxruntime", "recipe": {"precision": "fp32", "options": {}}, "files": {"model.onnx": 10},
            "source": {"inputs": [{"name": "x", "shape": ["batch", 4], "dtype": "float32"}],
                       "outputs": [{"name": "y", "shape": ["batch", 2], "dtype": "float32"}]},
            "details": {"main_file": "model.onnx"}}


@pytest.mark.parametrize(("manifest", "message"), [
    ([MANIFEST], "it holds a JSON array, not an object"),
    ("an artifact", "it holds a JSON string, not an object"),
    ({k: v for k, v in MANIFEST.items() if k != "recipe"}, "'recipe' is missing"),
    ({**MANIFEST, "details": {"main_file": "../../etc/passwd"}}, "details.main_file '../../etc/passwd' points outside"),
    ({**MANIFEST, "details": {"main_file": "/etc/passwd"}}, "details.main_file '/etc/passwd' points outside"),
])
def test_a_manifest_modelport_cannot_trust_is_exit_2_naming_it(tmp_path, manifest, message):
    artifact = tmp_path / "art"
    artifact.mkdir()
    (artifact / "model.onnx").write_bytes(b"0123456789")
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    result = invoke("inspect", str(artifact))
    assert result.exit_code == 2, result.output
    assert says(result.stderr, f"{artifact / 'manifest.json'} is not a modelport manifest: {message}")
    from modelport import load
    from modelport.errors import BadInput

    with pytest.raises(BadInput, match="not a modelport manifest"):
        load(str(artifact))
    assert (artifact / "manifest.json").read_text() == json.dumps(manifest)  # left as it was


# ---- interrupted benches --------------------------------------------------------------------------------


def test_a_bench_killed_mid_run_resumes_keeping_what_it_measured(tmp_path, write_model):
    out = tmp_path / "bench"
    command = [sys.executable, "-m", "modelport.cli", "bench", write_model(MLP), *TINY[:2], "--precisions",
               "fp32,int8-dynamic", *TINY[4:], "-o", str(out), "--json"]
    bench = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and bench.poll() is None:
        if (out / results.RESULTS).is_file() and (out / results.RESULTS).read_text().count('"type": "row"') >= 2:
            break
        time.sleep(0.1)
    assert bench.poll() is None, "the bench ended before it could be killed"
    os.kill(bench.pid, signal.SIGKILL)
    bench.wait()
    before = {k: r for k, r in latest_rows(out / results.RESULTS).items() if r["status"] == "ok"}
    assert len(before) >= 2
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    after = latest_rows(out / results.RESULTS)
    assert all(after[k]["run"] == r["run"] for k, r in before.items())  # kept, not measured again
    assert sorted(report_rows(out)) == [("onnxruntime", "fp32", "ok"), ("onnxruntime", "int8-dynamic", "ok"),
                                        ("pytorch", "fp32", "ok")]
