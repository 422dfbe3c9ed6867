"""How far an architecture lies from the rows a predictor was adapted on: its leverage.

In a ridge regression on the rows (standardised features, relative weights 1/y^2, an
intercept), a prediction at x has the relative variance sigma^2 (1 + h(x)) about the
truth, h(x) = z' G^-1 z / p(x)^2 its leverage (G the weighted, penalised Gram matrix).
A row left out of the rows has, in the fit on the others, the leverage h_ii / (1 - h_ii)
(h_ii its leverage in the fit on all of them): large for a row far from every other one,
as the rows of a farthest-point design are. `Leverage.spread` is sqrt(1 + h), the scale by
which `predictor.conformal` divides a row's score and widens a new architecture's interval.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: The ridge penalty on the standardised features (times the mean weight): just enough to
#: keep h below 1 when there are fewer rows than features.
ALPHA = 0.1


def standardise(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column means and standard deviations (1 for a constant column), as the ridge uses."""
    mean, scale = X.mean(axis=0), X.std(axis=0)
    return mean, np.where(scale > 1e-12 * np.maximum(1.0, np.abs(mean)), scale, 1.0)


@dataclass(frozen=True)
class Leverage:
    """The standardisation and the inverse Gram matrix of the rows' ridge."""

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    inverse: tuple[tuple[float, ...], ...]

    @classmethod
    def fit(cls, X: np.ndarray, measured_ms: np.ndarray) -> tuple["Leverage", np.ndarray]:
        """The leverage of the rows `X` (latencies `measured_ms`), and each row's spread
        in the fit on the other rows."""
        mean, scale = standardise(X)
        Z = np.column_stack([np.ones(len(X)), (X - mean) / scale])
        w = 1.0 / np.asarray(measured_ms, dtype=np.float64) ** 2
        G = (Z * w[:, None]).T @ Z
        G[np.diag_indices_from(G)] += np.r_[0.0, np.full(Z.shape[1] - 1, ALPHA * float(np.mean(w)))]
        inverse = np.linalg.inv(G)
        h = np.minimum(w * np.einsum("ij,jk,ik->i", Z, inverse, Z), 1 - 1e-9)
        out = cls(tuple(mean.tolist()), tuple(scale.tolist()), tuple(map(tuple, inverse.tolist())))
        return out, np.sqrt(1.0 + h / (1.0 - h))

    def spread(self, X: np.ndarray, predicted_ms: np.ndarray) -> np.ndarray:
        """sqrt(1 + h(x)) of each row of `X`, predicted `predicted_ms`."""
        Z = np.column_stack([np.ones(len(X)), (X - np.asarray(self.mean)) / np.asarray(self.scale)])
        quad = np.einsum("ij,jk,ik->i", Z, np.asarray(self.inverse), Z)
        with np.errstate(divide="ignore"):
            return np.sqrt(1.0 + quad / np.asarray(predicted_ms, dtype=np.float64) ** 2)

    def to_dict(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "scale": list(self.scale), "inverse": [list(r) for r in self.inverse]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Leverage":
        return cls(tuple(map(float, data["mean"])), tuple(map(float, data["scale"])),
                   tuple(tuple(map(float, r)) for r in data["inverse"]))
