"""Prediction intervals by conformal prediction on relative residuals.

A predictor keeps the sorted scores `|measured - predicted| / predicted` of rows it did
not see when it predicted them: the validation part of HAT's split for a trained
predictor (split conformal), the leave-one-out predictions of the whole adaptation for an
adapted one (jackknife). With n such scores, the interval at confidence c is
`predicted * (1 -+ q)`, q the ceil((n + 1) c)-th smallest score: for rows exchangeable
with the scored ones it covers a new row with probability at least c (and at most
c + 1/(n + 1)). Relative scores, because latency errors grow with latency.
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
    """Sorted relative residual scores, and how they were obtained."""

    scores: tuple[float, ...]
    method: str

    @classmethod
    def from_residuals(cls, measured_ms: np.ndarray, predicted_ms: np.ndarray, method: str) -> "Conformal":
        """Scores of predictions made without the rows they score; a non-positive prediction
        scores infinity (no finite interval would have covered it)."""
        y = np.asarray(measured_ms, dtype=np.float64)
        p = np.asarray(predicted_ms, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            scores = np.where(p > 0, np.abs(y - p) / p, np.inf)
        return cls(tuple(float(s) for s in np.sort(scores)), method)

    @property
    def rows(self) -> int:
        return len(self.scores)

    def quantile(self, confidence: float) -> float:
        """The relative half-width q at `confidence`; infinite when too few scores."""
        if not 0 < confidence < 1:
            raise PredictorError(f"confidence must be between 0 and 1, got {confidence}")
        rank = math.ceil((self.rows + 1) * confidence)
        return math.inf if rank > self.rows else self.scores[rank - 1]

    @staticmethod
    def min_rows(confidence: float) -> int:
        """Fewest scores that give a finite interval at `confidence`."""
        return math.ceil(confidence / (1 - confidence) - 1e-9)

    def bounds(self, predicted_ms: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds (ms) of the interval around each prediction."""
        q = self.quantile(confidence)
        if math.isinf(q):
            raise PredictorError(f"a {confidence:.0%} interval needs at least {self.min_rows(confidence)} "
                                 f"scored rows; this predictor has {self.rows} ({self.method})")
        p = np.asarray(predicted_ms, dtype=np.float64)
        return np.maximum(p * (1 - q), 0.0), p * (1 + q)

    def coverage(self, measured_ms: np.ndarray, predicted_ms: np.ndarray, confidence: float) -> float:
        """Share of measured latencies inside their interval (an unbounded one covers all)."""
        if math.isinf(self.quantile(confidence)):
            return 1.0
        lower, upper = self.bounds(predicted_ms, confidence)
        y = np.asarray(measured_ms, dtype=np.float64)
        return float(np.mean((y >= lower) & (y <= upper)))

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "scores": [s if math.isfinite(s) else None for s in self.scores]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Conformal":
        return cls(tuple(math.inf if s is None else float(s) for s in data["scores"]), str(data["method"]))


def intervals_of(pred: Any) -> Conformal:
    """The intervals a predictor carries, or a `PredictorError` that says how to get them."""
    conformal = getattr(pred, "intervals", None)
    if conformal is None:
        raise PredictorError("this predictor carries no prediction intervals (trained on under "
                             "20 rows, or by an older hatprof); train or adapt it again")
    return conformal
