"""The age interval every answer carries (`age_low`..`age_high`), calibrated on the validation
split to hold the true age `COVERAGE` of the time.

Two kinds, by what the model gives:

- `bins` (a head: the pretrained and finetuned families): the head predicts a distribution over
  age bins, read as uniform within each bin (bins meet halfway between their centres, the outer
  two as wide on the outside as inside). Its central `COVERAGE` quantiles give each face its own
  interval: a confident face a narrow one, an unsure face a wide one. A softmax's spread is not
  its error (the head is overconfident where it overfits), so the interval is conformalized
  (CQR, Romano et al., 2019): both ends move out, or in, by a margin in years, the conformal
  quantile of how far the validation ages fall outside their intervals.
- `residuals` (the scratch CNN, a point regressor): split conformal prediction: the
  validation residuals (true - predicted) give the lower and upper offsets, each at the
  conformal quantile of its tail.

Either way, each band of predicted age (`BANDS`) is calibrated on its own validation faces
(Mondrian conformal prediction), because errors grow with age: one margin for all ages
over-covered babies and under-covered adults on real faces. Bands with fewer than
`MIN_BAND_ROWS` validation faces use all of them.

Every interval holds the predicted age and lies within the label range.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike

from utkface.data.labels import AGE_MIN

AGE_LOW, AGE_HIGH = "age_low", "age_high"  # the interval's names in answers and tables
COVERAGE = 0.8
BANDS = (0, 3, 10, 20, 40, 60)  # left edges of predicted-age bands (the reports' age bands)
MIN_BAND_ROWS = 30


def conformal_rank(n: int, coverage: float) -> float:
    """The share of `n` calibration scores to cover so a new one is covered with probability
    at least `coverage`: ceil((n + 1) coverage) / n, at most 1."""
    return min(1.0, math.ceil((n + 1) * coverage) / n) if n else 1.0


def bin_edges(centres: ArrayLike) -> np.ndarray:
    """The (bins + 1) edges of the bins around `centres`: halfway between neighbours, the
    outer ones mirrored around the outer centres."""
    centres = np.asarray(centres, dtype=float)
    if len(centres) == 1:
        return np.array([centres[0] - 0.5, centres[0] + 0.5])
    inner = (centres[1:] + centres[:-1]) / 2
    first, last = 2 * centres[0] - inner[0], 2 * centres[-1] - inner[-1]
    return np.concatenate([[first], inner, [last]])


def bin_quantiles(probabilities: ArrayLike, centres: ArrayLike, q: float) -> np.ndarray:
    """The `q` quantile of each row's bin distribution, uniform within each bin."""
    probabilities = np.asarray(probabilities, dtype=float)
    edges = bin_edges(centres)
    cdf = np.concatenate(
        [np.zeros((len(probabilities), 1)), np.cumsum(probabilities, axis=1)], axis=1
    )
    cdf /= cdf[:, -1:]  # softmax rows sum to 1 up to rounding
    return np.array([np.interp(q, row, edges) for row in cdf])


def bin_interval(
    probabilities: ArrayLike, centres: ArrayLike, coverage: float = COVERAGE
) -> tuple[np.ndarray, np.ndarray]:
    """The central `coverage` quantiles of each row's bin distribution."""
    return (
        bin_quantiles(probabilities, centres, (1 - coverage) / 2),
        bin_quantiles(probabilities, centres, (1 + coverage) / 2),
    )


def _band(ages: np.ndarray, edges: tuple[float, ...]) -> np.ndarray:
    return np.searchsorted(np.asarray(edges), ages, side="right") - 1


def _per_band(scores: np.ndarray, predicted: np.ndarray, share: float, method: str) -> list[float]:
    """The conformal quantile (`share` of the scores to cover, corrected for their number) of
    `scores` per band of `predicted` age; small bands use every score."""
    bands = _band(predicted, BANDS)
    quantiles = []
    for band in range(len(BANDS)):
        rows = scores[bands == band]
        if len(rows) < MIN_BAND_ROWS:
            rows = scores
        rank = conformal_rank(len(rows), share)
        quantiles.append(float(np.quantile(rows, rank, method=method)))
    return quantiles


def calibrate_bins(
    probabilities: ArrayLike,
    ages: ArrayLike,
    centres: ArrayLike,
    predicted: ArrayLike,
    coverage: float = COVERAGE,
) -> list[float]:
    """Per band of `predicted` age: the margin (years, negative to narrow) that makes the
    bins' intervals hold `ages` at the conformal quantile of `coverage`."""
    ages = np.asarray(ages, dtype=float)
    low, high = bin_interval(probabilities, centres, coverage)
    outside = np.maximum(low - ages, ages - high)  # > 0: by how much the age is missed
    return _per_band(outside, np.asarray(predicted, dtype=float), coverage, "higher")


def calibrate_residuals(
    predicted: ArrayLike, ages: ArrayLike, coverage: float = COVERAGE
) -> tuple[list[float], list[float]]:
    """Per band of `BANDS`: the lower and upper offsets from a predicted age, conformal
    quantiles of the residuals (true - predicted) of its validation faces."""
    predicted, ages = np.asarray(predicted, dtype=float), np.asarray(ages, dtype=float)
    tail = 1 - (1 - coverage) / 2  # each side holds half of what the interval may miss
    above = _per_band(ages - predicted, predicted, tail, "higher")
    below = [-b for b in _per_band(predicted - ages, predicted, tail, "higher")]
    return below, above


@dataclass(frozen=True)
class AgeInterval:
    """How a model's answers get their interval (kinds in the module docstring); it travels
    in the served model's config as `to_config()`."""

    kind: Literal["bins", "residuals"]
    coverage: float = COVERAGE
    centres: tuple[float, ...] = ()  # bins: the head's bin centres (years)
    margins: tuple[float, ...] = ()  # bins: the conformal margin (years) per band of `BANDS`
    below: tuple[float, ...] = ()  # residuals: offsets per band of `BANDS`
    above: tuple[float, ...] = ()

    @classmethod
    def from_bins(
        cls, probabilities: ArrayLike, ages: ArrayLike, centres: ArrayLike, predicted: ArrayLike
    ) -> AgeInterval:
        margins = calibrate_bins(probabilities, ages, centres, predicted)
        return cls("bins", centres=tuple(float(c) for c in centres), margins=tuple(margins))

    @classmethod
    def from_residuals(cls, predicted: ArrayLike, ages: ArrayLike) -> AgeInterval:
        below, above = calibrate_residuals(predicted, ages)
        return cls("residuals", below=tuple(below), above=tuple(above))

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> AgeInterval:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})

    def to_config(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def bounds(
        self, age: ArrayLike, age_max: int, probabilities: ArrayLike | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """`age_low`, `age_high` of answers with predicted `age` (and, for `bins`, the head's
        bin `probabilities`)."""
        age = np.asarray(age, dtype=float)
        band = _band(age, BANDS)
        if self.kind == "bins":
            if probabilities is None:
                raise ValueError("a bins interval needs the age-bin probabilities")
            low, high = bin_interval(probabilities, self.centres, self.coverage)
            margin = np.asarray(self.margins)[band]
            low, high = low - margin, high + margin
        else:
            low = age + np.asarray(self.below)[band]
            high = age + np.asarray(self.above)[band]
        low = np.clip(np.minimum(low, age), AGE_MIN, age_max)
        return low, np.clip(np.maximum(high, age), AGE_MIN, age_max)


def coverage_report(ages: ArrayLike, low: ArrayLike, high: ArrayLike) -> dict[str, float]:
    """`age_interval_coverage` (share of true ages inside) and `age_interval_width` (mean
    years); empty for no rows."""
    ages, low, high = (np.asarray(a, dtype=float) for a in (ages, low, high))
    if not len(ages):
        return {}
    return {
        "age_interval_coverage": float(np.mean((ages >= low) & (ages <= high))),
        "age_interval_width": float(np.mean(high - low)),
    }
