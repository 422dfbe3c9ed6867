"""Which architectures to measure on a new device, so that k rows teach its predictor most.

The adapted predictor (`predictor.transfer`) is a ridge regression on the predictor's
features (around the base's predictions). Its k rows should cover the space those
features span, so that no held-out architecture lies far from every measured one: a
farthest-point (k-center) design over the standardised features, starting from the most
central candidate, then each time the candidate farthest from all rows taken so far.
On HAT's devices it beat random rows on every pair at k = 20 and 40 (3 of 6 at k = 5;
benchmarks/bench_transfer.py), and did better than designs over HAT's 10 features, the
cost terms alone, k-medoids, or features weighted by the base's coefficients. A D-optimal
design spends its first rows on extreme corners, which generalise worst when k is smaller
than the number of features.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import pandas as pd

from profiler.errors import PredictorError
from profiler.space import ArchConfig, DesignSpace

from predictor import features as _features
from predictor.core import LatencyPredictor
from predictor.leverage import standardise

log = logging.getLogger(__name__)

#: Candidate architectures sampled from the space when none are given.
CANDIDATES = 4000


def farthest_point(X: np.ndarray, k: int) -> np.ndarray:
    """Indices of `k` rows of `X`: the one nearest the centroid, then each time the row
    farthest (standardised Euclidean distance) from all rows chosen so far."""
    n = len(X)
    if not 1 <= k <= n:
        raise PredictorError(f"cannot choose {k} of {n} candidate architectures")
    mean, scale = standardise(X)
    Z = (X - mean) / scale
    chosen = [int(np.argmin(np.sum(Z * Z, axis=1)))]
    distance = np.sum((Z - Z[chosen[0]]) ** 2, axis=1)
    for _ in range(k - 1):
        chosen.append(int(np.argmax(distance)))
        distance = np.minimum(distance, np.sum((Z - Z[chosen[-1]]) ** 2, axis=1))
    return np.asarray(chosen)


def suggest_rows(bases: LatencyPredictor | Sequence[LatencyPredictor], df: pd.DataFrame, k: int) -> np.ndarray:
    """Positions of the `k` rows of `df` (only their architectures or features are used,
    never a latency) worth measuring on a new device."""
    base = _as_bases(bases)[0]
    return farthest_point(_features.from_frame(base.feature_set, df, base.context), k)


def suggest_archs(bases: LatencyPredictor | Sequence[LatencyPredictor], k: int,
                  space: DesignSpace | None = None, candidates: Sequence[ArchConfig] | None = None,
                  n_candidates: int = CANDIDATES, seed: int = 0) -> list[ArchConfig]:
    """The `k` architectures worth measuring on a new device, from `candidates` or from
    `n_candidates` sampled (seeded) from `space` (default: the base predictor's)."""
    bases = _as_bases(bases)
    if candidates is None:
        space = space or bases[0].space
        if space is None:
            raise PredictorError("the base predictor records no design space; name one to sample from")
        candidates = space.sample_many(max(n_candidates, k), seed)
    candidates = list(candidates)
    chosen = farthest_point(_features.from_archs(bases[0].feature_set, candidates, bases[0].context), k)
    log.info("suggested %d of %d candidate architectures (farthest point)", k, len(candidates))
    return [candidates[i] for i in chosen]


def _as_bases(bases: LatencyPredictor | Sequence[LatencyPredictor]) -> tuple[LatencyPredictor, ...]:
    out = (bases,) if not isinstance(bases, (list, tuple)) else tuple(bases)
    if not out:
        raise PredictorError("no base predictor given")
    return out
