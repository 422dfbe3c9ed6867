"""How far an architecture lies from the rows a predictor was adapted on: its leverage.

In a ridge regression on the rows (standardised features, relative weights 1/y^2, an
intercept), an architecture x has the leverage h(x) = z' G^-1 z / p(x)^2 (G the weighted,
penalised Gram matrix): about 1/k at the rows' centre, growing with the squared distance
from it. A row left out of the rows has, in the fit on the others, the leverage
h_ii / (1 - h_ii) (h_ii its leverage in the fit on all of them): large for a row far from
every other one, as the rows of a farthest-point design are.

`Leverage.spread` is 1 + h, the scale by which `predictor.conformal` divides a row's
score and widens a new architecture's interval. An adapted predictor's error is mostly
bias, not noise: the corrections are simple models of a device, and what they miss grows
with the squared distance from the rows, so with h, not with sqrt(1 + h) as noise would (a
faithful variance of the kept fit, tried offline from its smoother weights, barely told edge
rows from central ones). The penalty on the standardised features is one row's worth of
information per feature (a unit-information prior): with fewer rows than features, a much
smaller one makes h mostly the rows' near-singular directions. `bench_transfer.py hat`
reports the intervals' coverage under other penalties and powers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: The ridge penalty on the standardised features (times the mean weight): the information
#: of one row, whose standardised features have unit variance.
ALPHA = 1.0
#: spread = (1 + h) ** SPREAD_POWER; files written before hatprof recorded it used 1/2.
SPREAD_POWER = 1.0
_OLD_SPREAD_POWER = 0.5


def standardise(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column means and standard deviations (1 for a constant column), as the ridge uses."""
    mean, scale = X.mean(axis=0), X.std(axis=0)
    return mean, np.where(scale > 1e-12 * np.maximum(1.0, np.abs(mean)), scale, 1.0)


@dataclass(frozen=True)
class Leverage:
    """The standardisation and the inverse Gram matrix of the rows' ridge, and the power of
    1 + h that is the spread."""

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    inverse: tuple[tuple[float, ...], ...]
    power: float = SPREAD_POWER

    @classmethod
    def fit(cls, X: np.ndarray, measured_ms: np.ndarray, alpha: float = ALPHA,
            power: float = SPREAD_POWER) -> tuple["Leverage", np.ndarray]:
        """The leverage of the rows `X` (latencies `measured_ms`), and each row's spread
        in the fit on the other rows (other `alpha` and `power`: `bench_transfer`'s sweep)."""
        mean, scale = standardise(X)
        Z = np.column_stack([np.ones(len(X)), (X - mean) / scale])
        w = 1.0 / np.asarray(measured_ms, dtype=np.float64) ** 2
        G = (Z * w[:, None]).T @ Z
        G[np.diag_indices_from(G)] += np.r_[0.0, np.full(Z.shape[1] - 1, alpha * float(np.mean(w)))]
        inverse = np.linalg.inv(G)
        h = np.minimum(w * np.einsum("ij,jk,ik->i", Z, inverse, Z), 1 - 1e-9)
        out = cls(tuple(mean.tolist()), tuple(scale.tolist()), tuple(map(tuple, inverse.tolist())), power)
        return out, (1.0 + h / (1.0 - h)) ** out.power

    def spread(self, X: np.ndarray, predicted_ms: np.ndarray) -> np.ndarray:
        """(1 + h(x)) ** power of each row of `X`, predicted `predicted_ms`."""
        Z = np.column_stack([np.ones(len(X)), (X - np.asarray(self.mean)) / np.asarray(self.scale)])
        quad = np.einsum("ij,jk,ik->i", Z, np.asarray(self.inverse), Z)
        with np.errstate(divide="ignore"):
            return (1.0 + quad / np.asarray(predicted_ms, dtype=np.float64) ** 2) ** self.power

    def to_dict(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "scale": list(self.scale), "inverse": [list(r) for r in self.inverse],
                "power": self.power}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Leverage":
        return cls(tuple(map(float, data["mean"])), tuple(map(float, data["scale"])),
                   tuple(tuple(map(float, r)) for r in data["inverse"]),
                   float(data.get("power", _OLD_SPREAD_POWER)))
