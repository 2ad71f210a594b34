"""`modelport compare BASE NEW`: the regression gate, judged from result rows written directly (no bench)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from modelport.cli import app
from modelport.harness.report import build_report, write_reports
from tests.test_harness_report import MACHINE, labelled_rows, row, run_record, write

STATUSES = {"same", "faster", "slower", "regressed", "new", "gone", "failed"}


def compare(*args: str):
    return CliRunner().invoke(app, ["compare", *map(str, args)])


def timed(record: dict, p50: float, spread: float) -> dict:
    """`record` with p50 `p50` ms and p90 `spread` ms above it."""
    latency = {**record["latency"], "p50_ms": p50, "p90_ms": p50 + spread, "p99_ms": p50 + 2 * spread,
               "std_ms": spread}
    return {**record, "latency": latency}


def bench_dir(path, rows, run=None):
    write(path, [run or run_record([]), *rows])
    return path


def said(result) -> str:
    """stderr with rich's line wrapping undone."""
    return " ".join(result.stderr.split())


def json_rows(result) -> dict[tuple, dict]:
    return {(r["backend"], r["precision"], r["batch"]): r for r in json.loads(result.stdout)["rows"]}


def test_two_copies_of_the_same_run_pass(tmp_path):
    base = bench_dir(tmp_path / "base", labelled_rows())
    new = bench_dir(tmp_path / "new", labelled_rows())
    result = compare(base, new, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # --json: stdout is the JSON alone
    assert data["regressions"] == 0 and data["warnings"] == []
    assert len(data["rows"]) == len(labelled_rows())
    for r in data["rows"]:
        assert set(r) >= {"backend", "precision", "batch", "status", "p50_change", "p99_change", "fidelity_change",
                          "size_change"}
        assert r["status"] == "same"
    ort = json_rows(result)[("onnxruntime", "int8", 1)]
    assert ort["p50_change"] == 0 and ort["size_change"] == 0
    assert ort["fidelity_change"] == {"metric": 0, "sqnr_db": 0, "cosine": 0}


def test_a_30_percent_slowdown_with_a_small_spread_is_a_regression(tmp_path):
    fast = row("onnxruntime", "int8", p50=1.0, acc=97.4, sqnr=28.0)
    base = bench_dir(tmp_path / "base", [timed(fast, 1.0, 0.02)])
    new = bench_dir(tmp_path / "new", [timed(fast, 1.3, 0.02)])
    result = compare(base, new, "--json")
    assert result.exit_code == 1
    r = json_rows(result)[("onnxruntime", "int8", 1)]
    assert r["status"] == "regressed" and r["p50_change"] == pytest.approx(0.3)
    assert "p50 +30.0%" in r["reasons"][0]
    assert "1 regression(s)" in said(result) and "onnxruntime int8 batch 1" in said(result)
    # the same slowdown under a looser threshold is only slower; the other way round, faster
    assert json_rows(compare(base, new, "--json", "--max-slowdown", "50%"))[("onnxruntime", "int8", 1)][
        "status"] == "slower"
    assert json_rows(compare(new, base, "--json"))[("onnxruntime", "int8", 1)]["status"] == "faster"


def test_a_30_percent_change_inside_a_huge_spread_is_noise(tmp_path):
    noisy = row("onnxruntime", "int8", p50=1.0, acc=97.4, sqnr=28.0)
    base = bench_dir(tmp_path / "base", [timed(noisy, 1.0, 0.5)])
    new = bench_dir(tmp_path / "new", [timed(noisy, 1.3, 0.5)])  # band sqrt(0.5² + 0.5²) = 0.71 ms > 0.3 ms
    result = compare(base, new, "--json")
    assert result.exit_code == 0, result.output
    r = json_rows(result)[("onnxruntime", "int8", 1)]
    assert r["status"] == "same" and r["noise_ms"] == pytest.approx(0.5 * 2 ** 0.5)


def test_a_task_metric_drop_beyond_the_threshold_is_a_regression(tmp_path):
    base = bench_dir(tmp_path / "base", [row("onnxruntime", "int8", p50=0.05, acc=97.4, sqnr=28.0)])
    new = bench_dir(tmp_path / "new", [row("onnxruntime", "int8", p50=0.05, acc=96.4, sqnr=28.0)])
    result = compare(base, new, "--json")
    assert result.exit_code == 1
    r = json_rows(result)[("onnxruntime", "int8", 1)]
    assert r["status"] == "regressed" and r["fidelity_change"]["metric"] == pytest.approx(-1.0)
    assert compare(base, new, "--max-fidelity-drop", "1.5").exit_code == 0


def test_without_labels_an_sqnr_drop_counts_only_below_float_rounding(tmp_path):
    unlabelled = run_record([], labels=False)
    base = bench_dir(tmp_path / "base", [row("onnxruntime", "int8", p50=0.05, sqnr=30.0),
                                         row("onnxruntime", "fp32", p50=0.1, sqnr=120.0)], unlabelled)
    new = bench_dir(tmp_path / "new", [row("onnxruntime", "int8", p50=0.05, sqnr=22.0),
                                       row("onnxruntime", "fp32", p50=0.1, sqnr=95.0)], unlabelled)
    rows = json_rows(compare(base, new, "--json"))
    assert rows[("onnxruntime", "int8", 1)]["status"] == "regressed"  # -8 dB, at 22 dB
    assert rows[("onnxruntime", "fp32", 1)]["status"] == "same"  # -25 dB, but still at 95 dB


def test_gone_new_and_failed_rows(tmp_path):
    ok = row("openvino", "fp32", p50=0.1, acc=98.0, sqnr=100.0)
    broken = row("openvino", "fp32", status="failed", stage="build", reason="build: Unsupported op Foo")
    base = bench_dir(tmp_path / "base", [row("onnxruntime", "int8", p50=0.05, acc=97.4, sqnr=28.0), ok])
    new = bench_dir(tmp_path / "new", [broken, row("tflite", "int8", p50=0.2, acc=97.0, sqnr=25.0)])
    result = compare(base, new, "--json")
    assert result.exit_code == 1
    rows = json_rows(result)
    assert rows[("openvino", "fp32", 1)]["status"] == "failed"
    assert "Unsupported op Foo" in rows[("openvino", "fp32", 1)]["reasons"][0]
    assert rows[("onnxruntime", "int8", 1)]["status"] == "gone" and rows[("tflite", "int8", 1)]["status"] == "new"
    assert json.loads(result.stdout)["regressions"] == 1  # only the failed row
    # a row failing in both runs was no worse; one fixed in NEW is new
    assert json_rows(compare(new, new, "--json"))[("openvino", "fp32", 1)]["status"] == "same"
    assert json_rows(compare(new, base, "--json"))[("openvino", "fp32", 1)]["status"] == "new"


def test_a_saved_report_json_is_a_baseline_and_another_machine_is_warned_about(tmp_path):
    base = bench_dir(tmp_path / "base", labelled_rows())
    saved = write_reports(build_report(base), tmp_path / "saved")["json"]
    other = {**run_record([]), "machine": {**MACHINE, "cpu": "Other CPU", "cores": 8}}
    new = bench_dir(tmp_path / "new", labelled_rows(), other)
    result = compare(saved, new, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {r["status"] for r in data["rows"]} == {"same"}
    assert len(data["warnings"]) == 1 and "Test CPU, 2 cores" in data["warnings"][0] \
        and "Other CPU, 8 cores" in data["warnings"][0]
    # a directory holding only the saved report.json reads the same
    assert json.loads(compare(saved.parent, new, "--json").stdout)["rows"] == data["rows"]


@pytest.mark.parametrize(("make_args", "message"), [
    (lambda base, tmp: [tmp / "empty", base], "No results.jsonl"),
    (lambda base, tmp: [tmp / "nowhere", base], "does not exist"),
    (lambda base, tmp: [tmp / "bad.json", base], "not a modelport report.json"),
    (lambda base, tmp: [base, base, "--max-slowdown", "five"], "Cannot parse --max-slowdown"),
    (lambda base, tmp: [base, base, "--max-slowdown", "-5%"], "non-negative"),
    (lambda base, tmp: [base, base, "--max-fidelity-drop", "-1"], "non-negative"),
])
def test_bad_inputs_exit_2(tmp_path, make_args, message):
    base = bench_dir(tmp_path / "base", labelled_rows())
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.json").write_text('{"rows": 3}')
    result = compare(*make_args(base, tmp_path))
    assert result.exit_code == 2 and message in said(result), result.output


def test_markdown_is_a_table_fit_for_a_pull_request_comment(tmp_path):
    fast = row("onnxruntime", "int8", p50=1.0, acc=97.4, sqnr=28.0)
    base = bench_dir(tmp_path / "base", [timed(fast, 1.0, 0.02), row("openvino", "fp32", p50=0.1, acc=98.0)])
    new = bench_dir(tmp_path / "new", [timed(fast, 0.7, 0.02), row("openvino", "fp32", p50=0.1, acc=96.0)])
    md_file = tmp_path / "compare.md"
    result = compare(base, new, "--markdown", md_file)
    assert result.exit_code == 1  # the file is written before the gate fails
    md = md_file.read_text()
    lines = md.splitlines()
    assert lines[0] == "## modelport compare: digits_cnn" and "**1 regression in 2 rows" in md
    assert "| backend | precision | batch | status | p50 ms | p50 | p99 | fidelity | size | note |" in lines
    ort = next(ln for ln in lines if ln.startswith("| ONNX Runtime"))
    assert "| faster |" in ort and "| 1.00 → 0.700 | ▼ -30.0% |" in ort
    ov = next(ln for ln in lines if ln.startswith("| OpenVINO"))
    assert "| **regressed** |" in ov and "▼ -2.00 pts" in ov and "fell 2.00 points" in ov
    assert {r.split("|")[4].strip().strip("*") for r in lines if r.startswith("| ") and "---" not in r} - {
        "status"} <= STATUSES
    assert "regressed" in result.stdout and "1 regression in 2 rows" in result.stdout  # the terminal table
