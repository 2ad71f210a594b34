"""`modelport bench --budget`: each runtime's INT8 row is the searched artifact, judged on held-out data; `--ship`
copies the fastest artifact within the budget, `--debug-misses` links a debug run of each one that misses.

The model is tests/outlier.py's planted outlier (with CLE off and 7-bit weights, full INT8 misses cos>=0.9999 on
ONNX Runtime, one layer kept in float meets it); `drop` runs end to end on the trained digits CNN with a task metric
given by --metric.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from modelport.artifact import Artifact
from modelport.backends import get_backend
from modelport.cli import app
from modelport.harness import bench, build_report
from tests.outlier import ORT_7_BIT, normal

cli = CliRunner()
BUDGET = "cos>=0.9999"
PLANTED = {"node_conv2d_1", "node_relu", "node_conv2d_2"}  # wide, act (folded into wide), head
QUICK = ["--iterations", "5", "--warmup", "1", "--threads", "1"]


@pytest.fixture(autouse=True)
def _onnxruntime():
    ok, reason = get_backend("onnxruntime").available()
    if not ok:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("budget-data")
    calib, held_out = folder / "calib.npz", folder / "eval.npz"
    np.savez(calib, x=normal(96, 0))
    np.savez(held_out, x=normal(24, 1))
    return calib, held_out


@pytest.fixture(scope="module")
def searched(outlier_file, data_files, tmp_path_factory):
    """One bench --budget --ship run on ONNX Runtime, FP32 and the searched INT8."""
    calib, held_out = data_files
    out = tmp_path_factory.mktemp("bench-budget") / "run"
    ship = out.with_name("ship")
    report = bench(f"{outlier_file}:make", out=out, backends="onnxruntime", precisions="fp32,int8",
                   calib=str(calib), evaluation=str(held_out), iterations=5, warmup=1, threads=1, budget=BUDGET,
                   ship=ship, options={"onnxruntime": ORT_7_BIT})
    return out, ship, report


def _row(report, precision):
    return next(r for r in report["rows"] if r["backend"] == "onnxruntime" and r["precision"] == precision)


def test_the_int8_row_is_the_searched_artifact_judged_on_the_held_out_samples(searched):
    out, _, report = searched
    row = _row(report, "int8")
    tune = row["tune"]
    assert tune["budget"] == BUDGET and tune["status"] == "met" and row["meets_budget"]
    assert 1 <= len(tune["kept_in_float"]) <= 2 and PLANTED & set(tune["kept_in_float"])
    assert tune["candidates"] >= 2 and tune["figures"]["cos"] >= 0.9999
    manifest = Artifact.open(out / row["path"]).manifest
    assert manifest["details"]["budget"] == "met"
    assert manifest["tune"]["evaluation"]["fingerprint"] == report["data"]["evaluation"]["fingerprint"]
    assert report["data"]["evaluation"]["fingerprint"] != report["data"]["calibration"]["fingerprint"]
    assert row["cosine"] >= 0.9999  # the row measures the same artifact on the same samples


def test_the_report_judges_every_row_by_the_expression_and_shows_the_search(searched):
    out, _, report = searched
    assert report["budget"]["expr"] == BUDGET
    again = build_report(out)  # `modelport report DIR`: the expression comes back from results.jsonl
    assert again["budget"]["expr"] == BUDGET and _row(again, "int8")["tune"] == _row(report, "int8")["tune"]
    markdown = (out / "report.md").read_text()
    assert "## Accuracy budget" in markdown and f"{BUDGET} met" in markdown
    assert "Accuracy budget" in (out / "report.html").read_text()


def test_ship_copies_the_fastest_artifact_within_the_budget_with_why(searched):
    out, ship, report = searched
    within = [r for r in report["rows"] if r["meets_budget"] and r["path"] and r["batch"] == 1]
    fastest = min(within, key=lambda r: r["p50_ms"])
    assert report["shipped"]["key"] == fastest["key"]
    assert Artifact.open(ship).manifest["key"] == Artifact.open(out / fastest["path"]).manifest["key"]
    why = (ship / "SHIP.md").read_text()
    assert BUDGET in why and "p50" in why and "ONNX Runtime int8" in why and "ONNX Runtime fp32" in why
    with get_backend("onnxruntime").load(Artifact.open(ship)) as runner:
        assert runner.run({"x": normal(2, 5)})["output"].shape == (2, 4)


def test_nothing_within_the_budget_ships_nothing_exits_1_and_links_the_debug_run(outlier_file, data_files,
                                                                                     tmp_path):
    calib, held_out = data_files
    out, ship = tmp_path / "run", tmp_path / "ship"
    result = cli.invoke(app, ["bench", f"{outlier_file}:make", "-b", "onnxruntime", "-p", "int8", "--calib",
                              str(calib), "--eval", str(held_out), "--budget", "cos>=0.9999999", "--max-candidates",
                              "2", "--option", "cle=off", "--debug-misses", "--ship", str(ship), "-o", str(out),
                              *QUICK])
    assert result.exit_code == 1, result.output
    assert "no artifact meets cos>=0.9999999" in " ".join(result.output.split())
    assert not ship.exists() and [p.name for p in tmp_path.iterdir()] == ["run"]  # no half-copied sibling either
    report = json.loads((out / "report.json").read_text())
    row = _row(report, "int8")
    assert row["tune"]["status"] == "missed" and row["tune"]["candidates"] == 2 and row["meets_budget"] is False
    html = out / row["debug_html"]  # debug/ARTIFACT/debug.html, the artifact named by its row (and options)
    assert html.is_file() and html.parent.parent == out / "debug" and html.parent.name.startswith("onnxruntime-int8")
    culprits = json.loads(html.with_name("debug.json").read_text())["culprits"]
    assert culprits and culprits[0]["onnx_node"] in PLANTED
    assert f"]({row['debug_html']})" in (out / "report.md").read_text()


@pytest.mark.parametrize("args, says", [
    (["--budget", "cos>0.99"], "is not FIGURE"),
    (["--budget", "drop<=1"], "has no task metric"),
    (["--budget", "cos>=0.99", "--max-candidates", "0"], "at least the full INT8 build"),
])
def test_a_budget_the_bench_cannot_search_is_bad_input(args, says, outlier_file, data_files, tmp_path):
    calib, held_out = data_files
    result = cli.invoke(app, ["bench", f"{outlier_file}:make", "-b", "onnxruntime", "-p", "int8", "--calib",
                              str(calib), "--eval", str(held_out), "-o", str(tmp_path / "run"), *args, *QUICK])
    assert result.exit_code == 2 and says in " ".join(result.output.split()), result.output


METRIC = '''import numpy as np


def accuracy(outputs, labels):
    return 100.0 * float(np.mean(np.argmax(outputs["output"], axis=1) == labels))
'''


def test_a_drop_budget_is_judged_in_the_task_metric_end_to_end(digits, tmp_path):
    metric = tmp_path / "metric.py"
    metric.write_text(METRIC)
    out = tmp_path / "run"
    result = cli.invoke(app, ["bench", "modelport.examples:digits_cnn", "-b", "onnxruntime", "-p", "int8",
                              "--calib", "modelport.examples:digits_calibration", "--calib-size", "128",
                              "--eval", "modelport.examples:digits_evaluation", "--eval-size", "128",
                              "--metric", f"{metric}:accuracy",
                              "--budget", "drop<=1.0", "-o", str(out), "--json", *QUICK])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    row = _row(report, "int8")
    assert row["metric_name"] == "accuracy" and row["tune"]["status"] == "met" and row["meets_budget"]
    drop = row["tune"]["figures"]["drop"]
    assert drop is not None and drop <= 1.0
    assert drop == pytest.approx(-row["metric_delta"], abs=1e-6)  # the figure the search judged is the row's
