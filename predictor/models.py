"""Latency regressors with the scikit-learn estimator API and a portable fitted state.

Each estimator stores its hyper-parameters in `__init__` and nothing else; `fit` returns
self and leaves its fitted state in attributes ending in `_`. Prediction is always
numpy arithmetic on that state (never the training library's objects), so a predictor
saved as arrays and loaded elsewhere predicts exactly as it did when fitted.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from predictor.trees import export_trees, predict_trees


class PortableMixin:
    """Fitted state as named numpy arrays, for saving without pickle."""

    #: Fitted attributes; each is an array, a number, or a list of arrays.
    _state_attrs: tuple[str, ...] = ()

    def portable_state(self) -> dict[str, np.ndarray]:
        check_is_fitted(self)
        arrays: dict[str, np.ndarray] = {}
        for name in self._state_attrs:
            value = getattr(self, name)
            if isinstance(value, list):
                arrays.update({f"{name}/{i}": np.asarray(a) for i, a in enumerate(value)})
            elif isinstance(value, dict):
                arrays.update({f"{name}/{k}": np.asarray(a) for k, a in value.items()})
            else:
                arrays[name] = np.asarray(value)
        return arrays

    @classmethod
    def from_portable(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]):
        """An estimator with `params` whose fitted state is `arrays` (from `portable_state`)."""
        est = cls(**params)
        for name in est._state_attrs:
            if name in arrays:
                value = arrays[name]
                setattr(est, name, value.item() if value.ndim == 0 else value)
                continue
            prefix = f"{name}/"
            keys = [k for k in arrays if k.startswith(prefix)]
            if not keys:
                raise KeyError(name)
            suffixes = [k[len(prefix):] for k in keys]
            if all(s.isdigit() for s in suffixes):
                setattr(est, name, [arrays[f"{prefix}{i}"] for i in range(len(keys))])
            else:
                setattr(est, name, {s: arrays[f"{prefix}{s}"] for s in suffixes})
        return est


def _relative_weights(y: np.ndarray) -> np.ndarray:
    """Sample weights 1/y^2, so squared error becomes squared relative error."""
    floor = max(1e-12, 1e-3 * float(np.median(np.abs(y))))
    w = 1.0 / np.maximum(np.abs(y), floor) ** 2
    return w / w.mean()


class CostRidgeRegressor(PortableMixin, RegressorMixin, BaseEstimator):
    """Ridge regression on standardised features, alpha by leave-one-out (RidgeCV).

    Meant for cost features (MACs, parameters, layer counts), which latency is close to
    linear in. With `relative=True` it minimises squared *relative* error, the quantity
    behind MAPE and the +-10% share.
    """

    _state_attrs = ("n_features_in_", "coef_", "intercept_", "alpha_")

    def __init__(self, alphas: tuple[float, ...] = tuple(float(a) for a in np.logspace(-6, 3, 19)),
                 relative: bool = True):
        self.alphas = alphas
        self.relative = relative

    def fit(self, X, y) -> "CostRidgeRegressor":
        from sklearn.linear_model import RidgeCV

        X, y = validate_data(self, X, y, y_numeric=True, dtype=np.float64)
        mean, scale = X.mean(axis=0), X.std(axis=0)
        scale = np.where(scale > 1e-12 * np.maximum(1.0, np.abs(mean)), scale, 1.0)
        weights = _relative_weights(y) if self.relative else None
        ridge = RidgeCV(alphas=np.asarray(self.alphas, dtype=np.float64)).fit(
            (X - mean) / scale, y, sample_weight=weights)
        # Folded back to the raw features: one matrix-vector product per prediction.
        self.coef_ = np.asarray(ridge.coef_, dtype=np.float64) / scale
        self.intercept_ = float(ridge.intercept_ - mean @ self.coef_)
        self.alpha_ = float(ridge.alpha_)
        return self

    def predict(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return X @ self.coef_ + self.intercept_


class BoostedTreesRegressor(PortableMixin, RegressorMixin, BaseEstimator):
    """Gradient-boosted regression trees (scikit-learn's), exported to arrays after fit."""

    _state_attrs = ("n_features_in_", "baseline_", "trees_")

    def __init__(self, n_estimators: int = 300, learning_rate: float = 0.1, max_depth: int = 3,
                 min_samples_leaf: int = 3, subsample: float = 0.8, relative: bool = True,
                 random_state: int = 0):
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.max_depth = max_depth
        self.min_samples_leaf = min_samples_leaf
        self.subsample = subsample
        self.relative = relative
        self.random_state = random_state

    def fit(self, X, y) -> "BoostedTreesRegressor":
        from sklearn.ensemble import GradientBoostingRegressor

        X, y = validate_data(self, X, y, y_numeric=True, dtype=np.float64)
        if len(y) < 2:
            raise ValueError(f"boosted trees need at least 2 samples, got n_samples = {len(y)}")
        gbr = GradientBoostingRegressor(
            n_estimators=self.n_estimators, learning_rate=self.learning_rate,
            max_depth=self.max_depth, min_samples_leaf=self.min_samples_leaf,
            subsample=self.subsample, random_state=self.random_state)
        gbr.fit(X, y, sample_weight=_relative_weights(y) if self.relative else None)
        self.baseline_ = float(gbr.init_.predict(X[:1])[0])
        self.trees_ = export_trees([est[0] for est in gbr.estimators_], self.learning_rate)
        return self

    def predict(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return self.baseline_ + predict_trees(self.trees_, X)


class RidgeTreesRegressor(PortableMixin, RegressorMixin, BaseEstimator):
    """`CostRidgeRegressor`, then boosted trees on its relative residual.

    Predicts `ridge(x) * (1 + trees(x))`: the linear cost model carries the trend (and
    extrapolates sensibly), the trees the effects latency is not linear in.
    """

    _state_attrs = ("n_features_in_", "linear_", "baseline_", "trees_")

    def __init__(self, n_estimators: int = 100, learning_rate: float = 0.1, max_depth: int = 3,
                 min_samples_leaf: int = 5, subsample: float = 0.8, random_state: int = 0):
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.max_depth = max_depth
        self.min_samples_leaf = min_samples_leaf
        self.subsample = subsample
        self.random_state = random_state

    def fit(self, X, y) -> "RidgeTreesRegressor":
        X, y = validate_data(self, X, y, y_numeric=True, dtype=np.float64)
        ridge = CostRidgeRegressor().fit(X, y)
        self.linear_ = {"coef": ridge.coef_, "intercept": np.asarray(ridge.intercept_)}
        residual = y / self._linear(X) - 1.0
        trees = BoostedTreesRegressor(
            n_estimators=self.n_estimators, learning_rate=self.learning_rate,
            max_depth=self.max_depth, min_samples_leaf=self.min_samples_leaf,
            subsample=self.subsample, relative=False, random_state=self.random_state,
        ).fit(X, residual)
        self.baseline_, self.trees_ = trees.baseline_, trees.trees_
        return self

    def _linear(self, X: np.ndarray) -> np.ndarray:
        out = X @ self.linear_["coef"] + self.linear_["intercept"]
        # A linear model can cross zero far outside the data; keep the ratio defined.
        return np.where(np.abs(out) > 1e-12, out, 1e-12)

    def predict(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return self._linear(X) * (1.0 + self.baseline_ + predict_trees(self.trees_, X))


class TorchMLPRegressor(PortableMixin, RegressorMixin, BaseEstimator):
    """A ReLU MLP trained with Adam on MSE of the target divided by its training maximum.

    The defaults are HAT's latency predictor exactly: 4 hidden layers of 400, Adam at
    1e-5, batches of 128 drawn at random each step, 5,000 steps, inputs used as given
    (HAT divides them by fixed norms beforehand). `standardize=True` centres and scales
    the inputs instead, for feature sets of mixed units; `relative=True` minimises squared
    relative error. Training runs on `n_jobs` torch threads (small batches train fastest
    on one).
    """

    _state_attrs = ("n_features_in_", "input_mean_", "input_scale_", "target_norm_",
                    "weights_", "biases_")

    def __init__(self, hidden_layers: tuple[int, ...] = (400, 400, 400, 400),
                 learning_rate: float = 1e-5, batch_size: int = 128, max_steps: int = 5000,
                 standardize: bool = False, relative: bool = False, weight_decay: float = 0.0,
                 n_jobs: int = 1, random_state: int = 0):
        self.hidden_layers = hidden_layers
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.max_steps = max_steps
        self.standardize = standardize
        self.relative = relative
        self.weight_decay = weight_decay
        self.n_jobs = n_jobs
        self.random_state = random_state

    def fit(self, X, y) -> "TorchMLPRegressor":
        X, y = validate_data(self, X, y, y_numeric=True, dtype=np.float64)
        if self.standardize:
            self.input_mean_ = X.mean(axis=0)
            scale = X.std(axis=0)
            self.input_scale_ = np.where(scale > 0, scale, 1.0)
        else:
            self.input_mean_ = np.zeros(X.shape[1])
            self.input_scale_ = np.ones(X.shape[1])
        self.target_norm_ = float(np.max(np.abs(y))) or 1.0
        weight = _relative_weights(y) if self.relative else np.ones_like(y)
        self.weights_, self.biases_ = self._train((X - self.input_mean_) / self.input_scale_,
                                                  y / self.target_norm_, weight)
        return self

    def _train(self, inputs: np.ndarray, target: np.ndarray,
               weight: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Weights (in x out) and biases of each linear layer after training."""
        import torch

        x = torch.from_numpy(inputs.astype(np.float32))
        t = torch.from_numpy(target.astype(np.float32))[:, None]
        w = torch.from_numpy(weight.astype(np.float32))[:, None]
        threads = torch.get_num_threads()
        torch.set_num_threads(self.n_jobs)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.random_state)
                layers: list[torch.nn.Module] = []
                width = x.shape[1]
                for hidden in self.hidden_layers:
                    layers += [torch.nn.Linear(width, hidden), torch.nn.ReLU()]
                    width = hidden
                net = torch.nn.Sequential(*layers, torch.nn.Linear(width, 1))
                optimizer = torch.optim.Adam(net.parameters(), lr=self.learning_rate,
                                             weight_decay=self.weight_decay)
                batch = min(self.batch_size, len(x))
                for _ in range(self.max_steps):
                    idx = torch.randperm(len(x))[:batch]
                    optimizer.zero_grad()
                    loss = torch.mean(w[idx] * (net(x[idx]) - t[idx]) ** 2)
                    loss.backward()
                    optimizer.step()
        finally:
            torch.set_num_threads(threads)
        linears = [m for m in net if isinstance(m, torch.nn.Linear)]
        return ([m.weight.detach().numpy().T.copy() for m in linears],
                [m.bias.detach().numpy().copy() for m in linears])

    def predict(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        h = ((X - self.input_mean_) / self.input_scale_).astype(np.float32)
        for w, b in zip(self.weights_[:-1], self.biases_[:-1]):
            h = np.maximum(h @ w + b, 0.0)
        out = h @ self.weights_[-1] + self.biases_[-1]
        return out[:, 0].astype(np.float64) * self.target_norm_


ESTIMATORS = {cls.__name__: cls for cls in
              (CostRidgeRegressor, BoostedTreesRegressor, RidgeTreesRegressor, TorchMLPRegressor)}
