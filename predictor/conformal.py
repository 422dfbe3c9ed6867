"""Prediction intervals by conformal prediction on relative residuals.

A predictor keeps the scores `|measured - predicted| / predicted` of rows it did not see
when it predicted them. A trained predictor scores the validation part of HAT's split
(split conformal): with n scores, the interval at confidence c is `predicted * (1 -+ q)`,
q the ceil((n + 1) c)-th smallest score; for rows exchangeable with the scored ones it
covers a new row with probability at least c (and at most c + 1/(n + 1)).

An adapted predictor scores each of its k rows by the adaptation made without it, and
keeps those k adaptations: jackknife+ (Barber et al. 2021), whose interval at x runs
from the floor((1 - c)(k + 1))-th smallest of `mu_-i(x) (1 - R_i s(x))` to the
ceil(c (k + 1))-th smallest of `mu_-i(x) (1 + R_i s(x))`. The jackknife (one model, the
left-out scores) undercovers when the fit moves with its rows; jackknife+ carries that
motion into the interval. The scores are normalised (Papadopoulos et al. 2008): R_i is the
relative residual divided by the row's spread s_i = 1 + h in the fit without it, h its
leverage (`predictor.leverage`). Suggested rows lie at the edges of the space, where a
left-out row's leverage, and its error, is large; unnormalised, those errors widened the
intervals of typical architectures (HAT's devices, 20 suggested rows: 97% coverage at 90%,
`bench_transfer.py hat`).
Relative scores, because latency errors grow with latency.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from profiler.errors import PredictorError

#: The confidence of the intervals reported with metrics, and the key of their coverage.
INTERVAL_CONFIDENCE = 0.9
COVERAGE_KEY = "coverage_90"


@dataclass(frozen=True)
class Conformal:
    """Relative residual scores, and how they were obtained; `plus` (jackknife+): one per
    left-out model, in their order, divided by the row's spread."""

    scores: tuple[float, ...]
    method: str
    plus: bool = False

    @classmethod
    def from_residuals(cls, measured_ms: np.ndarray, predicted_ms: np.ndarray, method: str,
                       spread: np.ndarray | None = None) -> "Conformal":
        """Scores of predictions made without the rows they score, in the rows' order; a
        non-positive prediction scores infinity (no finite interval would have covered it).
        With `spread` (each row's), the normalised scores of jackknife+."""
        y = np.asarray(measured_ms, dtype=np.float64)
        p = np.asarray(predicted_ms, dtype=np.float64)
        s = np.ones(len(p)) if spread is None else np.asarray(spread, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            scores = np.where(p > 0, np.abs(y - p) / p / s, np.inf)
        return cls(tuple(float(v) for v in scores), method, spread is not None)

    @property
    def rows(self) -> int:
        return len(self.scores)

    def quantile(self, confidence: float) -> float:
        """The relative half-width q at `confidence`; infinite when too few scores."""
        if not 0 < confidence < 1:
            raise PredictorError(f"confidence must be between 0 and 1, got {confidence}")
        rank = _ceil((self.rows + 1) * confidence)
        return math.inf if rank > self.rows else sorted(self.scores)[rank - 1]

    def check(self, confidence: float) -> None:
        """A `PredictorError` unless there are scores enough for a finite interval."""
        if math.isinf(self.quantile(confidence)):
            raise PredictorError(f"a {confidence:.0%} interval needs at least {self.min_rows(confidence)} "
                                 f"scored rows; this predictor has {self.rows} ({self.method})")

    @staticmethod
    def min_rows(confidence: float) -> int:
        """Fewest scores that give a finite interval at `confidence`."""
        return _ceil(confidence / (1 - confidence))

    def bounds(self, predicted_ms: np.ndarray, confidence: float, left_out_ms: np.ndarray | None = None,
               spread: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds (ms) of the interval around each prediction; jackknife+
        needs each left-out model's predictions (`left_out_ms`, one row per model) and the
        architectures' `spread`."""
        self.check(confidence)
        if not self.plus:
            q = self.quantile(confidence)
            p = np.asarray(predicted_ms, dtype=np.float64)
            return np.maximum(p * (1 - q), 0.0), p * (1 + q)
        if left_out_ms is None or spread is None:
            raise PredictorError("jackknife+ intervals need the left-out models' predictions and the spread")
        rank = _ceil(confidence * (self.rows + 1))
        mu, width = np.atleast_2d(left_out_ms), np.outer(self.scores, spread)
        low = np.sort(mu * (1 - width), axis=0)[self.rows - rank]
        high = np.sort(mu * (1 + width), axis=0)[rank - 1]
        return np.maximum(low, 0.0), high

    def coverage(self, measured_ms: np.ndarray, predicted_ms: np.ndarray, confidence: float,
                 left_out_ms: np.ndarray | None = None, spread: np.ndarray | None = None) -> float:
        """Share of measured latencies inside their interval (an unbounded one covers all)."""
        if math.isinf(self.quantile(confidence)):
            return 1.0
        lower, upper = self.bounds(predicted_ms, confidence, left_out_ms, spread)
        y = np.asarray(measured_ms, dtype=np.float64)
        return float(np.mean((y >= lower) & (y <= upper)))

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "plus": self.plus,
                "scores": [s if math.isfinite(s) else None for s in self.scores]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Conformal":
        return cls(tuple(math.inf if s is None else float(s) for s in data["scores"]), str(data["method"]),
                   bool(data.get("plus", False)))


def _ceil(x: float) -> int:
    """ceil, forgiving the float error of products such as 0.9 * 10."""
    return math.ceil(x - 1e-9)


def intervals_of(pred: Any) -> Conformal:
    """The intervals a predictor carries, or a `PredictorError` that says how to get them."""
    conformal = getattr(pred, "intervals", None)
    if conformal is None:
        raise PredictorError("this predictor carries no prediction intervals (trained on under "
                             "20 rows, or by an older hatprof); train or adapt it again")
    return conformal
