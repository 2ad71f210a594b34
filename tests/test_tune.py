"""`--budget`: the expression, and the search that keeps the fewest layers out of INT8 to meet it.

The model is tests/outlier.py's planted outlier: `wide`'s output has one channel 100x wider, compensated in `head`'s
weights, so full INT8 loses the seven ordinary channels and misses a cosine budget that keeping `wide` (with the
ReLU folded into it) in float meets. Candidates are judged on held-out samples drawn apart from the calibration.
"""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from modelport.artifact import Artifact
from modelport.backends import get_backend
from modelport.bundle import ModelBundle
from modelport.calibration import CalibrationSet
from modelport.cli import app
from modelport.errors import BadInput
from modelport.tune import parse_budget, search
from modelport.tune.budget import check_applies
from tests.outlier import NO_CLE, normal

cli = CliRunner()
BUDGET = "cos>=0.9999"  # full INT8 reaches about 0.9991 on ORT, keeping `head` in float about 0.99992
PLANTED = {"node_conv2d_1", "node_relu", "node_conv2d_2"}  # wide, act (folded into wide), head: what reads the outlier


def data(outlier_source, n: int, seed: int) -> CalibrationSet:
    return CalibrationSet.from_arrays({"x": normal(n, seed)}, outlier_source.inputs)


def test_budget_expressions_parse_into_bounds_and_are_checked():
    budget = parse_budget("cos>=0.995, sqnr >= 25,drop<=1.0")
    assert budget.describe() == "cos>=0.995, sqnr>=25, drop<=1" and budget.needs_labels
    assert budget.met({"cos": 0.996, "sqnr": 30.0, "drop": 0.5})
    assert not budget.met({"cos": 0.996, "sqnr": 30.0, "drop": 1.5})
    assert not budget.met({"cos": None, "sqnr": 30.0, "drop": 0.0})  # undefined (non-finite outputs) never meets
    closer, further = {"cos": 0.994, "sqnr": 30, "drop": 0}, {"cos": 0.99, "sqnr": 30, "drop": 0}
    assert 0 < budget.shortfall(closer) < budget.shortfall(further)


@pytest.mark.parametrize("text, says", [("cos>0.99", "is not FIGURE"), ("acc>=0.9", "unknown figure"),
                                        ("cos<=0.99", "bounded with >="), ("drop>=1", "bounded with <="),
                                        ("cos>=2", "[-1, 1]"), ("cos>=0.9,cos>=0.99", "twice"), ("", "not FIGURE")])
def test_a_bad_expression_is_bad_input(text, says):
    with pytest.raises(BadInput, match=says.replace("[", r"\[").replace("]", r"\]")):
        parse_budget(text)


def test_drop_without_labels_and_float_precisions_are_refused():
    with pytest.raises(BadInput, match="no labels"):
        check_applies(parse_budget("drop<=1"), "int8", has_labels=False)
    with pytest.raises(BadInput, match="fp32 is not one"):
        check_applies(parse_budget("cos>=0.99"), "fp32", has_labels=True)


def test_the_cli_refuses_a_budget_before_any_slow_work(outlier_file):
    for args, says in ((["--precision", "fp32", "--budget", BUDGET], "fp32 is not one"),
                       (["--precision", "int8", "--budget", "cos=1"], "is not FIGURE"),
                       (["--precision", "int8", "--budget", BUDGET], "needs calibration data")):
        result = cli.invoke(app, ["build", f"{outlier_file}:make", "-b", "onnxruntime", *args])
        assert result.exit_code == 2 and says in result.output, result.output


def test_the_search_keeps_the_planted_layer_in_float_to_meet_the_budget(outlier_source, tmp_path):
    out = tmp_path / "tuned"
    outcome = search(ModelBundle(outlier_source), "onnxruntime", out, parse_budget(BUDGET), data(outlier_source, 96, 0),
                     evaluation=data(outlier_source, 24, 1), options=NO_CLE)
    record = Artifact.open(out).manifest["tune"]
    first, chosen = record["candidates"][0], record["candidates"][record["chosen"]]
    assert outcome.met and record["status"] == "met" and Artifact.open(out).details["budget"] == "met"
    assert first["kept_in_float"] == [] and not first["met"]  # full INT8 misses: the search had work to do
    assert chosen["met"] and chosen["figures"]["cos"] >= 0.9999 and 1 <= len(chosen["kept_in_float"]) <= 2
    assert PLANTED & set(chosen["kept_in_float"]), chosen
    assert record["evaluation"]["samples"] == 24 and all(c["latency_ms"] for c in record["candidates"])
    assert len(record["candidates"]) <= 10 and not out.with_name("tuned.tune").exists()
    assert "route" not in record and "shared QDQ pass" in record["exclusion"]


# OpenVINO's default NNCF build misses it whatever is kept in NNCF's ignored scope (SQNR stays near 17 dB), so the
# search follows the default build with the shared QDQ pass (source=qdq), whose default CLE equalizes the outlier.
def test_where_nncf_misses_the_search_takes_the_qdq_route_and_says_so(outlier_source, tmp_path):
    ok, reason = get_backend("openvino").available()
    if not ok:
        pytest.skip(reason)
    out = tmp_path / "tuned"
    outcome = search(ModelBundle(outlier_source), "openvino", out, parse_budget("sqnr>=25"),
                     data(outlier_source, 96, 0), evaluation=data(outlier_source, 24, 1))
    record = Artifact.open(out).manifest["tune"]
    first, chosen = record["candidates"][0], record["candidates"][record["chosen"]]
    assert outcome.met and first["options"] == {} and not first["met"]  # NNCF's full INT8
    assert record["route"]["options"] == {"source": "qdq"} and "source=qdq" in record["exclusion"]
    assert chosen["met"] and chosen["options"]["source"] == "qdq" and chosen["figures"]["sqnr"] >= 25
    assert Artifact.open(out).manifest["recipe"]["options"]["source"] == "qdq"


def test_an_unreachable_budget_writes_the_closest_marks_it_missed_and_exits_1(outlier_file, tmp_path):
    calib, held_out = tmp_path / "calib.npz", tmp_path / "eval.npz"
    np.savez(calib, x=normal(64, 0))
    np.savez(held_out, x=normal(16, 1))
    out = tmp_path / "missed"
    result = cli.invoke(app, ["build", f"{outlier_file}:make", "-b", "onnxruntime", "-p", "int8", "--calib", str(calib),
                              "--eval", str(held_out), "--budget", "cos>=0.9999999", "-o", str(out),
                              "--max-candidates", "3"])
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "cos>=0.9999999" in text and "closest keeps" in text and "tried 3" in text and "fp16" in text
    manifest = Artifact.open(out).manifest
    assert manifest["details"]["budget"] == "missed" and manifest["tune"]["status"] == "missed"
    assert len(manifest["tune"]["candidates"]) == 3


def test_a_budget_judged_on_its_own_calibration_data_is_refused(outlier_source, tmp_path):
    with pytest.raises(BadInput, match="is the calibration data"):
        search(ModelBundle(outlier_source), "onnxruntime", tmp_path / "x", parse_budget(BUDGET),
               data(outlier_source, 32, 0), evaluation=data(outlier_source, 32, 0))
