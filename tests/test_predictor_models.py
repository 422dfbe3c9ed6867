"""Estimators: scikit-learn conformance, HAT's recipe, exported trees, portable state."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.utils.estimator_checks import parametrize_with_checks

from predictor.models import (BoostedTreesRegressor, CostRidgeRegressor, RidgeTreesRegressor,
                              TorchMLPRegressor, _relative_weights)

_RELATIVE = ("relative error is undefined for the centred targets (values near zero) this "
             "check trains on; latencies are positive")
_CHECKED = [
    CostRidgeRegressor(relative=False),
    CostRidgeRegressor(),
    BoostedTreesRegressor(n_estimators=20),
    RidgeTreesRegressor(n_estimators=20),
    TorchMLPRegressor(hidden_layers=(16,), learning_rate=1e-2, max_steps=30),
]


def _expected_failures(estimator) -> dict[str, str]:
    relative = isinstance(estimator, RidgeTreesRegressor) or (
        isinstance(estimator, CostRidgeRegressor) and estimator.relative)
    if relative:
        return {"check_regressors_train": _RELATIVE}
    return {}


@parametrize_with_checks(_CHECKED, expected_failed_checks=_expected_failures)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def _data(n: int = 150, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.uniform(0.5, 2.0, size=(n, 4))
    y = 3.0 + 2.0 * X[:, 0] + X[:, 1] * X[:, 2]
    return X, y


def test_hat_mlp_has_hats_layout_and_recipe():
    est = TorchMLPRegressor()
    assert (est.hidden_layers, est.learning_rate, est.batch_size, est.max_steps) == (
        (400, 400, 400, 400), 1e-5, 128, 5000)
    X, y = _data()
    est.set_params(max_steps=3).fit(np.hstack([X, X, X[:, :2]]), y)
    assert [w.shape for w in est.weights_] == [(10, 400), (400, 400), (400, 400), (400, 400), (400, 1)]
    assert est.target_norm_ == pytest.approx(y.max())


def test_mlp_is_reproducible_from_its_seed():
    X, y = _data()
    kwargs = dict(hidden_layers=(32,), learning_rate=1e-2, max_steps=40)
    a = TorchMLPRegressor(**kwargs, random_state=1).fit(X, y).predict(X)
    b = TorchMLPRegressor(**kwargs, random_state=1).fit(X, y).predict(X)
    c = TorchMLPRegressor(**kwargs, random_state=2).fit(X, y).predict(X)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_exported_trees_predict_as_scikit_learn():
    X, y = _data(200)
    est = BoostedTreesRegressor(n_estimators=50, max_depth=4).fit(X, y)
    reference = GradientBoostingRegressor(n_estimators=50, learning_rate=est.learning_rate,
                                          max_depth=4, min_samples_leaf=est.min_samples_leaf,
                                          subsample=est.subsample, random_state=0)
    reference.fit(X, y, sample_weight=_relative_weights(y))
    X_new, _ = _data(100, seed=9)
    np.testing.assert_allclose(est.predict(X_new), reference.predict(X_new), rtol=1e-12)


def test_ridge_recovers_a_linear_cost_model():
    X, _ = _data()
    y = 0.5 + X @ np.array([1.0, 2.0, 0.0, 4.0])
    est = CostRidgeRegressor().fit(X, y)
    np.testing.assert_allclose(est.predict(X), y, rtol=1e-3)


def test_ridge_trees_fits_what_ridge_cannot():
    X, y = _data(300)
    X_test, y_test = _data(100, seed=4)
    ridge = CostRidgeRegressor().fit(X, y)
    hybrid = RidgeTreesRegressor().fit(X, y)
    error = lambda est: np.mean(np.abs(est.predict(X_test) / y_test - 1))  # noqa: E731
    assert error(hybrid) < 0.5 * error(ridge)


@pytest.mark.parametrize("estimator", _CHECKED[1:], ids=lambda e: type(e).__name__)
def test_portable_state_round_trip_predicts_identically(estimator):
    X, y = _data()
    fitted = clone(estimator).fit(X, y)
    state = fitted.portable_state()
    assert all(isinstance(v, np.ndarray) and v.dtype != object for v in state.values())
    restored = type(fitted).from_portable(fitted.get_params(), state)
    np.testing.assert_array_equal(restored.predict(X), fitted.predict(X))
