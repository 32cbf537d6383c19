"""The age interval (`utkface.scoring.age_interval`): quantiles of the bin distribution, and
calibration that holds the nominal coverage on held-out rows for an overconfident head and for
a point regressor whose errors grow with age."""

from __future__ import annotations

import numpy as np
import pytest

from utkface.scoring.age_interval import (
    AgeInterval,
    bin_edges,
    bin_quantiles,
    conformal_rank,
    coverage_report,
)

CENTRES = np.array([2.0, 8.0, 16.0, 25.0, 35.0, 47.0, 60.0, 75.0])


def test_bins_meet_halfway_and_the_outer_ones_mirror() -> None:
    assert bin_edges([10, 20, 30]).tolist() == [5, 15, 25, 35]


def test_quantiles_of_a_distribution_uniform_within_bins() -> None:
    one_bin = np.array([[0.0, 1.0, 0.0]])
    assert bin_quantiles(one_bin, [10, 20, 30], 0.1).tolist() == pytest.approx([16.0])
    assert bin_quantiles(one_bin, [10, 20, 30], 0.5).tolist() == pytest.approx([20.0])
    halves = np.array([[0.5, 0.0, 0.5]])
    assert bin_quantiles(halves, [10, 20, 30], 0.25).tolist() == pytest.approx([10.0])
    assert bin_quantiles(halves, [10, 20, 30], 0.9).tolist() == pytest.approx([33.0])


def test_conformal_rank_corrects_for_the_sample_size() -> None:
    assert conformal_rank(9, 0.8) == pytest.approx(8 / 9)  # ceil(10 * 0.8) / 9
    assert conformal_rank(99, 0.8) == pytest.approx(80 / 99)
    assert conformal_rank(3, 0.8) == 1.0  # ceil(3.2) / 3, capped
    assert conformal_rank(0, 0.8) == 1.0


def _overconfident_head(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Bin probabilities peaked on a guessed bin, and true ages that often fall in the next
    bins: a head as overconfident as one that overfits."""
    guess = rng.integers(1, len(CENTRES) - 1, n)
    probabilities = np.full((n, len(CENTRES)), 0.01)
    probabilities[np.arange(n), guess] = 1.0
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    shift = rng.choice([-1, 0, 0, 1], n)
    edges = bin_edges(CENTRES)
    true_bin = guess + shift
    ages = rng.uniform(edges[true_bin], edges[true_bin + 1])
    return probabilities, ages


def test_a_calibrated_bins_interval_holds_its_coverage_on_new_rows() -> None:
    rng = np.random.default_rng(0)
    probabilities, ages = _overconfident_head(rng, 3000)
    interval = AgeInterval.from_bins(probabilities, ages, CENTRES, probabilities @ CENTRES)
    assert min(interval.margins) > 0  # the raw 80 % of an overconfident head covers too little
    probabilities, ages = _overconfident_head(rng, 3000)
    predicted = probabilities @ CENTRES
    low, high = interval.bounds(predicted, 116, probabilities)
    report = coverage_report(ages, low, high)
    assert 0.77 <= report["age_interval_coverage"] <= 0.83
    raw = AgeInterval("bins", centres=tuple(CENTRES), margins=(0.0,) * 6)
    raw_low, raw_high = raw.bounds(predicted, 116, probabilities)
    assert coverage_report(ages, raw_low, raw_high)["age_interval_coverage"] < 0.7


def _growing_errors(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    ages = rng.uniform(1, 90, n)
    return ages + rng.normal(0, 1 + ages / 10), ages  # predicted, true


def test_residual_intervals_widen_where_the_model_errs_more_and_hold_coverage() -> None:
    rng = np.random.default_rng(1)
    interval = AgeInterval.from_residuals(*_growing_errors(rng, 6000))
    widths = np.subtract(interval.above, interval.below)
    assert (np.diff(widths[1:]) > 0).all()  # from the 3-9 band on, each band wider
    predicted, ages = _growing_errors(rng, 6000)
    low, high = interval.bounds(predicted, 116)
    assert 0.77 <= coverage_report(ages, low, high)["age_interval_coverage"] <= 0.83
    old = predicted > 60
    assert 0.74 <= coverage_report(ages[old], low[old], high[old])["age_interval_coverage"] <= 0.86


def test_bounds_hold_the_answer_and_stay_in_the_label_range() -> None:
    interval = AgeInterval("residuals", below=(2.0,) * 6, above=(-1.0,) * 6)  # a biased model
    low, high = interval.bounds(np.array([1.0, 50.0, 115.0]), 116)
    assert low.tolist() == high.tolist() == [1.0, 50.0, 115.0]
    wide = AgeInterval("residuals", below=(-5.0,) * 6, above=(5.0,) * 6)
    low, high = wide.bounds(np.array([2.0, 114.0]), 116)
    assert low.tolist() == [1.0, 109.0] and high.tolist() == [7.0, 116.0]


def test_the_config_round_trips() -> None:
    interval = AgeInterval("bins", centres=(2.0, 8.5), margins=(1.25,) * 6)
    assert AgeInterval.from_config(interval.to_config()) == interval
