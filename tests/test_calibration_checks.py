"""Calibration data that does not fit the model fails before any backend sees it, naming input, sample and want."""

from __future__ import annotations

import numpy as np
import pytest

from modelport.calibration import CalibrationSet, CheckFailed, conform, inspect_calibration, open_calibration
from modelport.errors import BadInput
from modelport.specs import TensorSpec

IMAGE = [TensorSpec("x", ("batch", 3, 4, 4), "float32")]
TEXT = [TensorSpec("input_ids", ("batch", "seq"), "int64"), TensorSpec("attention_mask", ("batch", "seq"), "int64")]


def _fails(arrays: dict, specs: list[TensorSpec], check: str, *parts: str, path=None) -> CheckFailed:
    if path is not None:
        np.savez(path, **arrays)
        calibration = open_calibration(str(path), specs)
    else:
        calibration = CalibrationSet.from_arrays(arrays, specs)
    with pytest.raises(CheckFailed) as info:
        calibration.fingerprint  # noqa: B018  (computing it checks every sample)
    assert info.value.check == check and isinstance(info.value, BadInput) and info.value.exit_code == 2
    for part in parts:
        assert part in str(info.value), str(info.value)
    return info.value


def test_missing_and_extra_inputs_are_named(tmp_path):
    ids = np.zeros((4, 8), np.int64)
    _fails({"input_ids": ids, "token_type_ids": ids}, TEXT, "names", "c.npz sample 0",
           "Missing: ['attention_mask']", "extra: ['token_type_ids']",
           "The model's inputs are ['input_ids', 'attention_mask']", path=tmp_path / "c.npz")


def test_wrong_rank_names_input_sample_and_expected_spec(tmp_path):
    _fails({"x": np.zeros((4, 3, 16), np.float32)}, IMAGE, "rank", "c.npz sample 0", "input 'x' has shape (1, 3, 16)",
           "expects rank 4 (x:batchx3x4x4:float32)", path=tmp_path / "c.npz")


def test_wrong_static_dim_names_the_axis():
    _fails({"x": np.zeros((4, 3, 4, 5), np.float32)}, IMAGE, "dims", "arrays sample 0", "axis 3 must be 4",
           "x:batchx3x4x4:float32")


def test_inputs_sharing_a_symbolic_dim_must_agree():
    _fails({"input_ids": np.zeros((2, 8), np.int64), "attention_mask": np.zeros((2, 6), np.int64)}, TEXT, "dims",
           "dim 'seq' is 6 on input 'attention_mask' axis 1 but 8 on input 'input_ids' axis 1")


def test_lossless_casts_are_made():
    ids = np.arange(16, dtype=np.int32).reshape(2, 8)
    calibration = CalibrationSet.from_arrays({"input_ids": ids, "attention_mask": np.ones((2, 8), bool)}, TEXT)
    batch = next(calibration.batches(2))
    assert batch["input_ids"].dtype == np.int64 and batch["attention_mask"].dtype == np.int64
    float64 = CalibrationSet.from_arrays({"x": np.full((2, 3, 4, 4), 0.1)}, IMAGE)
    assert next(float64.samples())["x"].dtype == np.float32  # float narrowing rounds; the model sees float32
    as_floats = CalibrationSet.from_arrays({"input_ids": ids.astype(np.float32), "attention_mask": ids * 0 + 1}, TEXT)
    np.testing.assert_array_equal(next(as_floats.batches(2))["input_ids"], ids)  # integral floats: exact


@pytest.mark.parametrize(("array", "spec", "parts"), [
    (np.full((2, 8), 3.5), TensorSpec("input_ids", ("batch", 8), "int64"),
     ["input 'input_ids' is float64", "value 3.5 at index (0, 0) cannot be held exactly by int64",
      "8 such values", "the model expects input_ids:batchx8:int64"]),
    (np.full((2, 8), 2**24 + 1, np.int64), TensorSpec("input_ids", ("batch", 8), "float32"),
     ["cannot be held exactly by float32"]),
    (np.full((2, 8), 1e39), TensorSpec("input_ids", ("batch", 8), "float32"), ["is outside the range of float32"]),
    (np.full((2, 8), 300, np.int64), TensorSpec("input_ids", ("batch", 8), "int8"),
     ["cannot be held exactly by int8"]),
    (np.full((2, 8), "a"), TensorSpec("input_ids", ("batch", 8), "int64"), ["<U1 data cannot be cast to int64"]),
])
def test_lossy_casts_are_errors(array, spec, parts):
    _fails({"input_ids": array}, [spec], "dtype", *parts)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_values_are_errors_naming_the_sample(tmp_path, bad):
    x = np.zeros((6, 3, 4, 4), np.float32)
    x[4, 1, 2, 3] = bad
    _fails({"x": x}, IMAGE, "finite", "c.npz sample 4", "input 'x' has 1 NaN or Inf values",
           "at index (0, 1, 2, 3)", path=tmp_path / "c.npz")


def test_empty_sources_are_errors(tmp_path):
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 3, 4, 4), np.float32))
    with pytest.raises(BadInput, match="has no samples"):
        open_calibration(str(tmp_path / "empty.npz"), IMAGE)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(BadInput, match=r"holds no \.npy/\.npz files"):
        open_calibration(str(tmp_path / "nothing"), IMAGE)


def test_sample_counts_that_disagree_are_errors(tmp_path):
    np.savez(tmp_path / "c.npz", input_ids=np.zeros((5, 8)), attention_mask=np.zeros((4, 8)))
    with pytest.raises(BadInput, match=r"different sample counts.*'input_ids': 5, 'attention_mask': 4"):
        open_calibration(str(tmp_path / "c.npz"), TEXT)
    np.savez(tmp_path / "l.npz", x=np.zeros((5, 3, 4, 4)), labels=np.zeros(4))
    with pytest.raises(BadInput, match="different sample counts"):
        open_calibration(str(tmp_path / "l.npz"), IMAGE)


def test_directory_errors_name_the_file(tmp_path):
    for i in range(3):
        np.save(tmp_path / f"{i}.npy", np.zeros((3, 4, 4), np.float32))
    np.save(tmp_path / "3.npy", np.zeros((3, 4, 5), np.float32))
    check = _fails_dir(tmp_path)
    assert "3.npy (sample 3)" in str(check) and "axis 3 must be 4" in str(check)


def _fails_dir(path) -> CheckFailed:
    calibration = open_calibration(str(path), IMAGE)
    with pytest.raises(CheckFailed) as info:
        list(calibration.batches())
    return info.value


def test_conform_drops_an_extra_leading_axis_and_ignores_labels():
    out = conform({"x": np.zeros((1, 1, 3, 4, 4), np.float32), "label": 3}, IMAGE, "here")
    assert list(out) == ["x"] and out["x"].shape == (1, 3, 4, 4)


def test_inspect_reports_every_check_instead_of_stopping():
    x = np.zeros((10, 3, 4, 4), np.float64)
    x[2, 0, 0, 0] = np.nan
    x[7, 0, 0, 0] = 1e40
    report = inspect_calibration(CalibrationSet.from_arrays({"x": x}, IMAGE, labels=np.arange(10) % 2))
    by_check = {c["check"]: c for c in report["checks"]}
    assert not report["ok"] and report["fingerprint"] is None
    assert by_check["finite"]["failed_samples"] == 1 and "sample 2" in by_check["finite"]["messages"][0]
    assert by_check["dtype"]["failed_samples"] == 1
    assert "outside the range of float32" in by_check["dtype"]["messages"][0]
    assert by_check["names"]["ok"] and by_check["rank"]["ok"]
    row = report["inputs"][0]
    assert row["nonfinite"] == 1 and row["max"] == 1e40 and row["dtypes"] == ["float64"]
    assert report["labels"]["counts"] == {"0": 5, "1": 5}
    assert any("Only 10 calibration samples" in w for w in report["warnings"])
