"""Prediction intervals: conformal quantiles, coverage, and the intervals predictors carry."""
from __future__ import annotations

import math

import numpy as np
import pytest

from profiler.errors import PredictorError
from predictor import train_predictor
from predictor.conformal import Conformal, intervals_of
from predictor.synthetic import synthetic_frame


def test_quantile_is_the_conformal_rank():
    # 19 scores: the 90% quantile is the ceil(20 * 0.9) = 18th smallest.
    c = Conformal.from_residuals(np.full(19, 100.0), 100.0 / (1 + np.arange(1, 20) / 100), "test")
    assert c.rows == 19
    assert c.quantile(0.9) == pytest.approx(0.18)
    assert c.quantile(0.5) == pytest.approx(0.10)
    assert math.isinf(Conformal((0.1,) * 8, "test").quantile(0.9))
    assert Conformal.min_rows(0.9) == 9 and Conformal.min_rows(0.8) == 4


def test_bounds_and_coverage():
    c = Conformal((0.05, 0.1, 0.2), "test")
    lower, upper = c.bounds(np.array([100.0, 10.0]), 0.5)  # rank ceil(4 * 0.5) = 2: q = 0.1
    np.testing.assert_allclose(lower, [90.0, 9.0])
    np.testing.assert_allclose(upper, [110.0, 11.0])
    measured = np.array([95.0, 111.0, 89.0, 105.0])
    assert c.coverage(measured, np.full(4, 100.0), 0.5) == 0.5
    with pytest.raises(PredictorError, match="needs at least 9 scored rows"):
        c.bounds(np.array([1.0]), 0.9)
    with pytest.raises(PredictorError, match="between 0 and 1"):
        c.quantile(1.0)


def test_non_positive_predictions_score_infinity():
    c = Conformal.from_residuals(np.array([1.0, 1.0]), np.array([-1.0, 0.5]), "test")
    assert c.scores == (math.inf, 1.0)  # in the rows' order
    assert Conformal.from_dict(c.to_dict()) == c


def test_trained_predictor_carries_split_conformal_intervals():
    df = synthetic_frame(400, seed=2)
    pred = train_predictor(df)
    c = intervals_of(pred)
    assert c.rows == 40  # the validation tenth of HAT's split
    holdout = pred.metadata["metrics"]["holdout"]
    assert 0.75 <= holdout["coverage_90"] <= 1.0
    # Fresh rows of the same device: about 90% inside (n = 600, generous band).
    fresh = synthetic_frame(1000, seed=99).iloc[400:]
    predicted = pred.predict_frame(fresh)["predicted_ms"].to_numpy()
    assert 0.8 <= c.coverage(fresh["latency_ms"].to_numpy(), predicted, 0.9) <= 0.98


def test_predictor_without_intervals_says_so():
    pred = train_predictor(synthetic_frame(12, seed=1))
    with pytest.raises(PredictorError, match="no prediction intervals"):
        intervals_of(pred)


def test_search_latency_with_confidence_is_the_upper_bound():
    from nas.latency import PredictedLatency
    from profiler.space import load_space

    pred = train_predictor(synthetic_frame(300, seed=4))
    archs = load_space("compact").sample_many(20, seed=5)
    plain = np.asarray(PredictedLatency(pred)(archs))
    upper = np.asarray(PredictedLatency(pred, confidence=0.9)(archs))
    np.testing.assert_allclose(upper, plain * (1 + pred.intervals.quantile(0.9)), rtol=1e-12)
    assert (upper > plain).all()


def test_jackknife_plus_bounds_are_the_left_out_models_ranks():
    # 9 rows at 90%: the bounds are the extremes of mu_-i (1 -+ R_i s), s the spread, each
    # left-out model with its own row's score.
    c = Conformal((0.1,) * 8 + (0.3,), "test", plus=True)
    left_out = np.array([[100.0], [101.0], [102.0], [103.0], [104.0], [105.0], [106.0], [107.0], [90.0]])
    lower, upper = c.bounds(np.array([100.0]), 0.9, left_out, np.array([2.0]))
    assert lower[0] == pytest.approx(90.0 * (1 - 0.6))
    assert upper[0] == pytest.approx(90.0 * (1 + 0.6))
    with pytest.raises(PredictorError, match="left-out models"):
        c.bounds(np.array([100.0]), 0.9)
    assert Conformal.from_dict(c.to_dict()) == c


def test_leverage_spread_of_a_left_out_row():
    from predictor.leverage import Leverage

    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 3))
    y = np.exp(rng.normal(size=20))
    leverage, left_out = Leverage.fit(X, y)
    h = leverage.spread(X, y) - 1  # each row's leverage in the fit on all rows
    np.testing.assert_allclose(left_out - 1, h / (1 - h), rtol=1e-9)
    # Far from the rows, an architecture is harder to predict than at their centre.
    far, centre = leverage.spread(np.array([[10.0, 10.0, 10.0], X.mean(0)]), np.array([1.0, 1.0]))
    assert far > 1.5 and centre < 1.05
    # A file written before the power was recorded keeps its spreads: sqrt(1 + h).
    old = {key: value for key, value in leverage.to_dict().items() if key != "power"}
    np.testing.assert_allclose(Leverage.from_dict(old).spread(X, y), np.sqrt(1 + h), rtol=1e-12)
    assert Leverage.from_dict(leverage.to_dict()) == leverage


def test_adapted_intervals_hold_for_random_and_suggested_rows():
    # 20 rows of a device with 3% noise: from random rows and from farthest-point ones
    # (edges of the space, whose left-out errors are extrapolations), 90% intervals cover
    # about 90% of 1,000 fresh rows; unnormalised scores of the suggested rows over-cover.
    from predictor import features
    from predictor.leverage import Leverage
    from predictor.suggest import suggest_rows
    from predictor.transfer import FEATURE_SET, adapt

    base = train_predictor(synthetic_frame(300, seed=1))
    new = synthetic_frame(1600, seed=3, device="synthetic-pi")
    y, test = new["latency_ms"].to_numpy(), np.arange(600, 1600)
    rng = np.random.default_rng(0)
    coverage = {"suggested": [], "random": [], "unnormalised": []}
    for _ in range(4):
        pool = rng.choice(600, 300, replace=False)
        for rows, few in (("suggested", pool[suggest_rows(base, new.iloc[pool], 20)]), ("random", pool[:20])):
            adapted = adapt(base, new.iloc[few])
            predicted = adapted.predict_frame(new.iloc[test])["predicted_ms"].to_numpy()
            c = adapted.intervals
            coverage[rows].append(c.coverage(y[test], predicted, 0.9, **adapted.interval_inputs(new.iloc[test])))
            if rows == "suggested":
                _, spread = Leverage.fit(features.from_frame(FEATURE_SET, new.iloc[few], base.context), y[few])
                plain = Conformal(tuple(np.asarray(c.scores) * spread), "jackknife")
                coverage["unnormalised"].append(plain.coverage(y[test], predicted, 0.9))
    mean = {k: float(np.mean(v)) for k, v in coverage.items()}
    assert 0.8 <= mean["random"] <= 0.97 and 0.8 <= mean["suggested"] <= 0.95
    assert abs(mean["suggested"] - 0.9) < abs(mean["unnormalised"] - 0.9)
