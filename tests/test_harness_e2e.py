"""End to end: `modelport bench` of the digits example on ONNX Runtime (fp32 and int8), then `modelport report`,
and the CI example's compare step against its committed baseline."""

from __future__ import annotations

import json
import shlex
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import typer.main
import yaml
from typer.testing import CliRunner

from modelport.cli import app
from modelport.harness import bench, results


def _onnxruntime_or_skip() -> None:
    from modelport.backends import get_backend

    try:
        ok, reason = get_backend("onnxruntime").available()
    except ImportError as exc:
        pytest.skip(f"the ONNX Runtime backend is not importable: {exc}")
    if not ok:
        pytest.skip(f"ONNX Runtime unavailable: {reason}")


@pytest.fixture(scope="module")
def benched(tmp_path_factory, digits) -> tuple[Path, dict]:
    """One bench run shared by the tests below (the digits fixture trains the example once per session)."""
    _onnxruntime_or_skip()
    out = tmp_path_factory.mktemp("bench") / "digits"
    result = CliRunner().invoke(app, [
        "bench", "modelport.examples:digits_cnn", "--backends", "onnxruntime", "--precisions", "fp32,int8",
        "--calib", "modelport.examples:digits_calibration", "--calib-size", "128",
        "--eval", "modelport.examples:digits_evaluation", "--iterations", "50", "--warmup", "5", "--threads", "1",
        "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)


def _rows(report: dict) -> dict[str, dict]:
    return {f"{r['backend']} {r['precision']}": r for r in report["rows"]}


def test_every_row_is_measured_against_pytorch(benched):
    _, report = benched
    rows = _rows(report)
    assert set(rows) == {"pytorch fp32", "onnxruntime fp32", "onnxruntime int8"}
    assert all(r["status"] == "ok" for r in rows.values()), [r["reason"] for r in rows.values()]
    for r in rows.values():
        assert r["iterations"] == 50 and r["threads"] == 1 and 0 < r["p50_ms"] <= r["p99_ms"]
    assert report["reference_metric"]["value"] > 95  # the example is trained: PyTorch's own accuracy
    assert rows["pytorch fp32"]["identical"] and rows["pytorch fp32"]["speedup"] == pytest.approx(1.0)


def test_fp32_matches_pytorch_and_int8_keeps_accuracy_within_one_point(benched):
    _, report = benched
    rows = _rows(report)
    fp32, int8 = rows["onnxruntime fp32"], rows["onnxruntime int8"]
    assert fp32["sqnr_db"] > 60 and fp32["top1_agreement"] == 1.0 and fp32["metric_delta"] == 0
    assert int8["metric_delta"] >= -1.0
    assert int8["sqnr_db"] > 15 and int8["cosine"] > 0.99
    assert int8["size_bytes"] < fp32["size_bytes"]  # INT8 weights
    assert report["recommendations"][0]["key"] is not None


def test_results_record_the_machine_calibration_and_artifacts(benched):
    out, _ = benched
    records = list(results.read(out / results.RESULTS))
    run = records[0]
    assert run["type"] == "run" and run["machine"]["cores"] >= 1 and "onnxruntime" in run["versions"]
    rows = [r for r in records if r["type"] == "row"]
    int8 = next(r for r in rows if r["precision"] == "int8")
    assert int8["calibration"]["samples"] == 128
    assert int8["evaluation"]["samples"] == 497 and int8["evaluation"]["labels"] is True
    for r in rows:
        if r["backend"] != "pytorch":
            assert (out / r["artifact"]["path"] / "manifest.json").is_file()


def test_report_command_renders_the_same_results_from_the_file_alone(benched):
    out, report = benched
    for name in ("report.html", "report.md", "report.json"):
        (out / name).unlink()
    result = CliRunner().invoke(app, ["report", str(out), "--json"])
    assert result.exit_code == 0, result.output
    again = json.loads(result.stdout)
    assert again["recommendation"] == report["recommendation"]
    assert [r["key"] for r in again["rows"]] == [r["key"] for r in report["rows"]]
    ET.fromstring((out / "report.html").read_text().split("\n", 1)[1])
    assert report["recommendation"] in (out / "report.md").read_text()


def test_running_again_measures_nothing_new(benched):
    out, _ = benched
    before = (out / results.RESULTS).read_text().count('"type": "row"')
    new_rows = []
    bench("modelport.examples:digits_cnn", out=out, backends="onnxruntime", precisions="fp32,int8",
          calib="modelport.examples:digits_calibration", calib_size=128,
          evaluation="modelport.examples:digits_evaluation", iterations=50, warmup=5, threads=1,
          on_row=new_rows.append)
    assert new_rows == []
    assert (out / results.RESULTS).read_text().count('"type": "row"') == before


WORKFLOW = Path(__file__).parent.parent / "examples" / "ci" / "bench-regression.yml"


def _workflow_steps() -> dict[str, list[str]]:
    """The modelport command of each step of the CI example, split as its shell would, env substituted."""
    flow = yaml.safe_load(WORKFLOW.read_text())
    steps = {}
    for step in flow["jobs"]["bench"]["steps"]:
        run = step.get("run", "")
        for name, value in flow["env"].items():
            run = run.replace(f'"${name}"', shlex.quote(value))
        if run.startswith(".venv/bin/modelport "):
            steps[step["name"]] = shlex.split(run)[1:]
    return steps


def test_the_ci_example_baseline_was_measured_by_its_own_bench_step():
    steps = _workflow_steps()
    bench_args, compare_args = steps["Bench"], steps["Compare against the baseline"]
    command = typer.main.get_command(app).commands["bench"]
    with command.make_context("bench", bench_args[1:]) as ctx:  # the flags exist and parse
        given = ctx.params
    baseline = json.loads((WORKFLOW.parent.parent.parent / compare_args[1]).read_text())
    assert baseline["model"]["origin"] == given["model"]
    settings = baseline["settings"]
    assert ",".join(settings["backends"]) == given["backends"] and ",".join(settings["precisions"]) == \
        given["precisions"]
    assert (settings["threads"], settings["iterations"]) == (given["threads"], given["iterations"])
    assert {r["status"] for r in baseline["rows"]} == {"ok"}


def test_the_ci_example_compare_step_passes_a_fresh_run_against_the_baseline(benched, tmp_path):
    """The workflow's compare command, as written, on a fresh bench (ONNX Runtime, 1 thread, not the 2 the
    baseline ran with: so latency is judged with a threshold as wide as that difference needs)."""
    out, _ = benched
    args = _workflow_steps()["Compare against the baseline"]
    args[args.index("bench-new")] = str(out)
    args[args.index("--markdown") + 1] = str(tmp_path / "compare.md")
    args[args.index("--max-slowdown") + 1] = "1000%"
    args[1] = str(WORKFLOW.parent.parent.parent / args[1])
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    comment = (tmp_path / "compare.md").read_text()
    assert "**No regression in 5 rows" in comment and "ONNX Runtime" in comment  # OpenVINO rows: in BASE only
