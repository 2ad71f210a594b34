"""The CalibrationSet: seeded sampling, the disjoint split, batching to the model's batch axis, the fingerprint."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest

from modelport.calibration import (
    MIN_INT8_SAMPLES,
    CalibrationSet,
    CalibrationWarning,
    calibration_warnings,
    open_calibration,
    warn_if_weak,
)
from modelport.errors import BadInput
from modelport.specs import TensorSpec

DYNAMIC = [TensorSpec("x", ("batch", 2, 3), "float32")]


def _arrays(n: int = 50, seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((n, 2, 3)).astype(np.float32)}


def test_sampling_is_seeded_sorted_and_without_replacement():
    a = CalibrationSet.from_arrays(_arrays(), DYNAMIC, size=20, seed=7)
    b = CalibrationSet.from_arrays(_arrays(), DYNAMIC, size=20, seed=7)
    c = CalibrationSet.from_arrays(_arrays(), DYNAMIC, size=20, seed=8)
    assert a.indices == b.indices and a.indices != c.indices
    assert a.indices == sorted(set(a.indices)) and len(a) == 20
    assert len(CalibrationSet.from_arrays(_arrays(), DYNAMIC, size=500)) == 50  # more than there are: all


def test_size_below_one_is_bad_input():
    with pytest.raises(BadInput, match="--calib-size must be at least 1, not 0"):
        CalibrationSet.from_arrays(_arrays(), DYNAMIC, size=0)


def test_split_is_disjoint_covering_and_deterministic():
    full = CalibrationSet.from_arrays(_arrays(), DYNAMIC, labels=np.arange(50))
    calib, evaluation = full.split(0.2)
    assert (len(calib), len(evaluation)) == (40, 10)
    assert not set(calib.indices) & set(evaluation.indices)
    assert sorted(calib.indices + evaluation.indices) == full.indices
    again = full.split(0.2)
    assert (again[0].indices, again[1].indices) == (calib.indices, evaluation.indices)
    assert full.split(0.2, seed=3)[1].indices != evaluation.indices
    assert evaluation.labels().tolist() == evaluation.indices
    assert len(full.split(7)[1]) == 7
    with pytest.raises(BadInput, match="Cannot split 50 samples"):
        full.split(50)


def test_batches_follow_a_dynamic_batch_axis_and_keep_the_remainder():
    calibration = CalibrationSet.from_arrays(_arrays(10), DYNAMIC)
    assert [len(b["x"]) for b in calibration.batches(4)] == [4, 4, 2]
    assert [len(b["x"]) for b in calibration.batches()] == [1] * 10
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in calibration.batches(3)]), _arrays(10)["x"])


def test_batches_fill_a_static_batch_and_drop_the_partial_one():
    static = [TensorSpec("x", (4, 2, 3), "float32")]
    calibration = CalibrationSet.from_arrays(_arrays(10), static)
    assert [b["x"].shape for b in calibration.batches()] == [(4, 2, 3), (4, 2, 3)]
    with pytest.raises(BadInput, match="does not fit the model's static batch of 4"):
        list(calibration.batches(2))
    with pytest.raises(BadInput, match="static batch is 4, but the calibration set has only 3 samples"):
        list(CalibrationSet.from_arrays(_arrays(3), static).batches())


def test_batches_end_early_where_a_dynamic_sequence_length_changes(tmp_path):
    specs = [TensorSpec("ids", ("batch", "seq"), "int64")]
    path = tmp_path / "fns.py"
    path.write_text("import numpy as np\n"
                    "def ragged():\n"
                    "    return [{'ids': np.arange(n)[None]} for n in (4, 4, 4, 6, 6)]\n")
    calibration = open_calibration(f"{path}:ragged", specs)
    assert [b["ids"].shape for b in calibration.batches(8)] == [(3, 4), (2, 6)]


def test_fingerprint_depends_on_content_only():
    data = _arrays(30)
    base = CalibrationSet.from_arrays(data, DYNAMIC).fingerprint
    reversed_order = CalibrationSet.from_arrays({"x": data["x"][::-1].copy()}, DYNAMIC).fingerprint
    relabelled = CalibrationSet.from_arrays(data, DYNAMIC, labels=np.arange(30)).fingerprint
    changed = {"x": data["x"].copy()}
    changed["x"][17, 1, 2] += 1e-3
    assert base == reversed_order == relabelled
    assert CalibrationSet.from_arrays(changed, DYNAMIC).fingerprint != base
    assert CalibrationSet.from_arrays(data, DYNAMIC, size=29).fingerprint != base
    float64 = {"x": data["x"].astype(np.float64)}  # conformed to float32 first: the same data to the model
    assert CalibrationSet.from_arrays(float64, DYNAMIC).fingerprint == base


def test_fingerprint_ignores_file_names_and_order_in_a_directory(tmp_path):
    data = _arrays(12)["x"]
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    for i in range(12):
        np.save(first / f"{i:02}.npy", data[i])
        np.save(second / f"sample_{(i * 5) % 12:02}_{11 - i}.npy", data[i])  # other names, other order
    a, b = open_calibration(str(first), DYNAMIC), open_calibration(str(second), DYNAMIC)
    assert [s["x"].tobytes() for s in a.samples()] != [s["x"].tobytes() for s in b.samples()]
    assert a.fingerprint == b.fingerprint
    np.save(second / "sample_00_11.npy", data[0] + 1)
    assert open_calibration(str(second), DYNAMIC).fingerprint != a.fingerprint


def test_describe_records_what_the_manifest_needs(tmp_path):
    np.savez(tmp_path / "c.npz", **_arrays(40))
    described = open_calibration(str(tmp_path / "c.npz"), DYNAMIC, size=25, seed=3).describe()
    assert described["source"] == str(tmp_path / "c.npz") and described["kind"] == "npz"
    assert (described["samples"], described["found"], described["seed"], described["synthetic"]) == (25, 40, 3, False)
    assert len(described["fingerprint"]) == 16


def test_a_set_pickles_for_a_worker_process_and_reads_the_same(tmp_path):
    np.savez_compressed(tmp_path / "c.npz", **_arrays(20))
    path = tmp_path / "fns.py"
    path.write_text("import numpy as np\n"
                    "def gen():\n"
                    "    for i in range(20):\n"
                    "        yield {'x': np.full((2, 3), i, np.float32)}\n")
    for text in (str(tmp_path / "c.npz"), f"{path}:gen"):
        calibration = open_calibration(text, DYNAMIC)
        next(calibration.samples())  # an open stream or iterator is not carried along
        clone = pickle.loads(pickle.dumps(calibration))
        assert clone.fingerprint == calibration.fingerprint


def test_int8_warnings_for_synthetic_data_and_fewer_than_100_samples():
    few = CalibrationSet.from_arrays(_arrays(MIN_INT8_SAMPLES - 1), DYNAMIC)
    enough = CalibrationSet.from_arrays(_arrays(MIN_INT8_SAMPLES), DYNAMIC)
    with pytest.warns(CalibrationWarning, match="Only 99 calibration samples"):
        assert len(warn_if_weak(few, "int8")) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_if_weak(enough, "int8") == [] and warn_if_weak(few, "fp16") == []
    with pytest.warns(CalibrationWarning):
        synthetic = open_calibration("synthetic:200", DYNAMIC)
    assert "synthetic data" in calibration_warnings(synthetic, "int8")[0]
