"""Fidelity metrics on arrays whose answers are known, and latency statistics on known timings."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from modelport.harness import fidelity
from modelport.harness.latency import summarize
from modelport.timing import MIN_ITERATIONS, interleaved_rounds, timed_runs, turns


def test_identical_outputs_have_zero_error_unit_cosine_and_undefined_sqnr():
    ref = np.random.default_rng(0).standard_normal((5, 10)).astype(np.float32)
    m = fidelity.compare_output(ref.copy(), ref)
    assert m["max_abs"] == 0 and m["mean_abs"] == 0
    assert m["cosine"] == pytest.approx(1.0) and m["cosine_min"] == pytest.approx(1.0)
    assert m["sqnr_db"] is None  # no noise: SQNR is infinite, written as None and flagged identical below
    assert m["top1_agreement"] == 1.0
    assert fidelity.summarize({"out": m})["identical"] is True


def test_constant_offset_gives_the_sqnr_and_errors_computed_by_hand():
    ref = np.ones((4, 10), np.float32)
    out = ref + np.float32(0.1)
    m = fidelity.compare_output(out, ref)
    assert m["max_abs"] == pytest.approx(0.1, rel=1e-6)
    assert m["mean_abs"] == pytest.approx(0.1, rel=1e-6)
    # signal power 40, noise power 40 * 0.01: 10 * log10(100) = 20 dB
    assert m["sqnr_db"] == pytest.approx(20.0, abs=1e-4)
    assert m["cosine"] == pytest.approx(1.0)  # parallel vectors


def test_cosine_is_per_sample_and_keeps_the_worst_sample():
    ref = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]], np.float32)
    out = np.array([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]], np.float32)
    m = fidelity.compare_output(out, ref)
    # sample 0 parallel (1), sample 1 orthogonal (0), sample 2 both zero (1 by definition)
    assert m["cosine"] == pytest.approx(2 / 3)
    assert m["cosine_min"] == pytest.approx(0.0)


def test_top1_agreement_counts_matching_argmax():
    ref = np.eye(4, 3, dtype=np.float32)[[0, 1, 2, 0]]
    out = ref.copy()
    out[3] = [0.0, 0.0, 1.0]
    assert fidelity.compare_output(out, ref)["top1_agreement"] == pytest.approx(0.75)


def test_agreement_applies_only_to_classifier_shaped_outputs():
    assert "top1_agreement" not in fidelity.compare_output(np.ones((4, 2, 2)), np.ones((4, 2, 2)))
    assert "top1_agreement" not in fidelity.compare_output(np.ones((4, 1)), np.ones((4, 1)))


def test_nan_outputs_have_no_metrics_and_are_counted():
    ref = np.ones((2, 3), np.float32)
    out = ref.copy()
    out[0, 1] = np.nan
    out[1, 2] = np.inf
    m = fidelity.compare_output(out, ref)
    assert m["nonfinite"] == 2
    assert m["max_abs"] is None and m["sqnr_db"] is None and m["cosine"] is None


def test_shape_mismatch_and_missing_output_are_reported_by_name():
    ref = {"logits": np.ones((3, 4), np.float32)}
    with pytest.raises(ValueError, match=r"output 'logits'.*shape"):
        fidelity.evaluate({"logits": np.ones((3, 5), np.float32)}, ref, None, None, None)
    with pytest.raises(ValueError, match="no output named logits"):
        fidelity.evaluate({"other": np.ones((3, 4), np.float32)}, ref, None, None, None)


def test_summary_is_the_worst_case_over_outputs():
    a = {"max_abs": 0.1, "mean_abs": 0.01, "cosine": 0.999, "cosine_min": 0.99, "sqnr_db": 40.0, "nonfinite": 0}
    b = {"max_abs": 0.5, "mean_abs": 0.02, "cosine": 0.98, "cosine_min": 0.9, "sqnr_db": 25.0, "nonfinite": 0,
         "top1_agreement": 0.97}
    s = fidelity.summarize({"a": a, "b": b})
    assert (s["max_abs"], s["cosine"], s["sqnr_db"], s["top1_agreement"]) == (0.5, 0.98, 25.0, 0.97)
    assert s["identical"] is False


def test_accuracy_and_its_delta_to_the_reference():
    ref = np.array([[2.0, 1.0], [0.0, 3.0], [5.0, 1.0], [1.0, 2.0]], np.float32)
    out = ref.copy()
    out[2] = [0.0, 1.0]  # flips sample 2 from class 0 to class 1
    labels = np.array([0, 1, 0, 0])
    ref_acc = fidelity.reference_metric(fidelity.ACCURACY, {"y": ref}, labels)
    assert ref_acc == pytest.approx(75.0)
    record = fidelity.evaluate({"y": out}, {"y": ref}, labels, fidelity.ACCURACY, ref_acc)
    assert record["metric"]["value"] == pytest.approx(50.0)
    assert record["metric"]["delta"] == pytest.approx(-25.0)
    assert record["outputs"]["y"]["top1_agreement"] == pytest.approx(0.75)


def test_user_metric_loads_from_a_file(tmp_path):
    (tmp_path / "m.py").write_text("import numpy as np\n\ndef mae(outputs, labels):\n"
                                   "    return -float(np.abs(outputs['y'][:, 0] - labels).mean())\n")
    metric = fidelity.load_metric(f"{tmp_path / 'm.py'}:mae")
    assert metric.name == "mae"
    assert metric({"y": np.array([[1.0], [3.0]])}, np.array([1.0, 1.0])) == pytest.approx(-1.0)


def test_percentiles_mean_std_and_throughput_on_known_timings():
    times_ns = (np.arange(1, 101) * 1_000_000).astype(np.int64)  # 1 ms .. 100 ms
    s = summarize(times_ns, batch=8)
    assert s["iterations"] == 100
    # linear interpolation between closest ranks (numpy's default)
    assert s["p50_ms"] == pytest.approx(50.5)
    assert s["p90_ms"] == pytest.approx(90.1)
    assert s["p99_ms"] == pytest.approx(99.01)
    assert s["mean_ms"] == pytest.approx(50.5)
    assert s["std_ms"] == pytest.approx(math.sqrt((100**2 - 1) / 12))  # population std of 1..100
    assert (s["min_ms"], s["max_ms"]) == (1.0, 100.0)
    assert s["throughput"] == pytest.approx(8 * 1000 / 50.5)


def test_iterations_mode_runs_warmup_then_exactly_n_timed_runs():
    calls = []
    feeds = {"x": np.zeros(1)}
    progress = []
    times = timed_runs(lambda f: calls.append(f), feeds, iterations=37, warmup=5,
                       progress=lambda d, t: progress.append((d, t)))
    assert len(times) == 37 and len(calls) == 42
    assert all(f is feeds for f in calls)  # the same preallocated feeds every time
    assert progress[-1] == (37, 37)
    assert (times > 0).all()


def test_duration_mode_runs_for_at_least_the_duration():
    def run(_):
        time.sleep(0.002)

    start = time.perf_counter()
    times = timed_runs(run, {}, duration=0.1, warmup=1)
    assert time.perf_counter() - start >= 0.1
    assert len(times) >= MIN_ITERATIONS
    assert np.median(times) >= 2_000_000


def test_exactly_one_of_iterations_and_duration():
    with pytest.raises(ValueError):
        timed_runs(lambda f: None, {}, iterations=3, duration=1.0)


def test_interleaved_rounds_give_every_runner_the_same_runs_in_turns():
    order: list[str] = []
    runs = {name: (lambda feeds, name=name: order.append(name)) for name in ("a", "b")}
    per_round = interleaved_rounds(runs, {}, rounds=4, budget_s=0.0)
    assert {k: len(v) for k, v in per_round.items()} == {"a": 4, "b": 4}
    assert all(ms >= 0 for v in per_round.values() for ms in v)
    timed = order[8:]  # after 3 warm-up runs and one sizing run each
    assert order.count("a") == order.count("b")
    # the minimum of 3 runs per turn, taking turns round by round, each round starting one runner later
    assert timed == (["a"] * 3 + ["b"] * 3 + ["b"] * 3 + ["a"] * 3) * 2


def test_every_runner_takes_every_place_in_a_round_equally_often():
    keys = ["a", "b", "c"]
    orders = [turns(keys, r) for r in range(6)]
    assert all(sorted(o) == keys for o in orders)
    assert all(sorted(o[place] for o in orders) == sorted(keys * 2) for place in range(3))
    assert [o[0] for o in orders] == ["a", "b", "c"] * 2
