"""Cosine and SQNR, the one implementation (modelport/similarity.py), and its decision for all-zero samples."""

from __future__ import annotations

import math

import numpy as np

from modelport.similarity import array_sqnr_db, finite_or_none, mean_cosine, row_cosines, sqnr_db


def test_two_all_zero_samples_agree_and_one_all_zero_sample_keeps_nothing():
    zeros, ones = np.zeros((1, 4), np.float32), np.ones((1, 4), np.float32)
    assert row_cosines(zeros, zeros).tolist() == [1.0]
    assert row_cosines(zeros, ones).tolist() == [0.0]
    assert row_cosines(ones, zeros).tolist() == [0.0]


def test_cosine_is_per_sample_over_every_axis_but_the_first():
    a = np.array([[[1.0, 0.0]], [[1.0, 1.0]]])
    b = np.array([[[2.0, 0.0]], [[-1.0, -1.0]]])
    np.testing.assert_allclose(row_cosines(a, b), [1.0, -1.0])
    assert abs(mean_cosine(a, b)) < 1e-12


def test_sqnr_is_infinite_without_noise_and_minus_infinite_without_signal():
    assert sqnr_db(4.0, 0.0) == math.inf and sqnr_db(0.0, 0.0) == math.inf
    assert sqnr_db(0.0, 1.0) == -math.inf
    assert sqnr_db(100.0, 1.0) == 20.0
    ref = np.array([3.0, 4.0])  # signal 25; noise 0.25: 10 * log10(100) = 20 dB
    assert array_sqnr_db(ref, ref + np.array([0.5, 0.0])) == 20.0


def test_figures_that_are_not_finite_become_none_for_json():
    assert [finite_or_none(v) for v in (math.inf, -math.inf, math.nan, None, 1.5)] == [None, None, None, None, 1.5]
