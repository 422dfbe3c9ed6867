"""Accuracy metrics of latency predictions, and the data splits they are measured on."""
from __future__ import annotations

import math

import numpy as np
from scipy import stats

from profiler.errors import PredictorError

METRIC_KEYS = ("n", "rmse_ms", "mape", "rmspe", "within_5", "within_10",
               "kendall_tau", "spearman_rho")
#: HAT's split: shuffle, then the first 80% train, the next 10% validate, the rest test.
SPLIT = (0.8, 0.1)


def mape(measured_ms: np.ndarray, predicted_ms: np.ndarray) -> float:
    """Mean absolute relative error, in % of the measured latency."""
    return float(100 * np.mean(np.abs(predicted_ms / measured_ms - 1)))


def rmspe(measured_ms: np.ndarray, predicted_ms: np.ndarray) -> float:
    """Root mean squared relative error, in % of the measured latency."""
    return float(100 * np.sqrt(np.mean(np.square(predicted_ms / measured_ms - 1))))


def latency_metrics(measured_ms: np.ndarray, predicted_ms: np.ndarray) -> dict[str, float | int | None]:
    """RMSE (ms), MAPE and RMSPE (%), shares within +-5%/+-10%, Kendall's tau, Spearman's rho.

    A rank correlation that is undefined (fewer than two rows, or constant values) is None.
    """
    y = np.asarray(measured_ms, dtype=np.float64)
    p = np.asarray(predicted_ms, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 1 or len(y) == 0:
        raise PredictorError(f"need two equal-length, non-empty 1-d arrays, got {y.shape} and {p.shape}")
    if not np.all(y > 0):
        raise PredictorError("measured latencies must be positive")
    rel = (p - y) / y
    out: dict[str, float | int | None] = {
        "n": int(len(y)),
        "rmse_ms": float(np.sqrt(np.mean((p - y) ** 2))),
        "mape": mape(y, p),
        "rmspe": rmspe(y, p),
        "within_5": float(np.mean(np.abs(rel) <= 0.05)),
        "within_10": float(np.mean(np.abs(rel) <= 0.10)),
        "kendall_tau": None,
        "spearman_rho": None,
    }
    if len(y) >= 2 and np.ptp(y) > 0 and np.ptp(p) > 0:
        out["kendall_tau"] = _finite(stats.kendalltau(y, p).statistic)
        out["spearman_rho"] = _finite(stats.spearmanr(y, p).statistic)
    return out


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def split_indices(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HAT's shuffled 80/10/10 split of `n` rows: (train, validation, test) indices."""
    if n < 10:
        raise PredictorError(f"an 80/10/10 split needs at least 10 rows, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    a, b = int(SPLIT[0] * n), int((SPLIT[0] + SPLIT[1]) * n)
    return order[:a], order[a:b], order[b:]


def kfold_indices(n: int, k: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Shuffled k-fold (train, test) index pairs; every row is tested exactly once."""
    if not 2 <= k <= n:
        raise PredictorError(f"k-fold needs 2 <= k <= rows, got k={k} for {n} rows")
    folds = np.array_split(np.random.default_rng(seed).permutation(n), k)
    return [(np.concatenate(folds[:i] + folds[i + 1:]), folds[i]) for i in range(k)]
