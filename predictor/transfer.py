"""Predictors for new hardware from a few measured rows plus other devices' predictors.

Latency on a new device is, to a first approximation, a base device's latency times a
factor, part by part, plus what the base does not scale with; on any device the cost
terms of each part (a fixed cost per layer: kernel launches and dispatch; layers x width;
layers x width x FFN, the MACs) carry most of it. Per target (encoder and decoder, or the
total), in least squared relative error, on the "hat-macs" features x (the default
model's "hat-cost" plus each part's MACs; "hat-cost" alone, and no MACs kinds, when the
base records no design space to count MACs in); every ridge part is on "hat-cost":

- "ratio": `new = s * base`;
- "linear": `new = s * base + c`;
- "shrink": `new = s * base + c + d . x`, a ridge regression whose coefficients are
  shrunk toward the rescaled base's (an empirical-Bayes / hierarchical prior), the
  strength chosen by leave-one-out on the k rows; from "linear" to a model of its own;
- "costs": the default ridge with the cost terms left unpenalised (no base);
- "linear-costs": `new = s * base + c + e . costs`, nothing penalised;
- "shrink-costs": "shrink" with the cost terms unpenalised;
- "macs": `new = a * macs + b * layers + c` per part (no base): a time per MAC and a fixed
  time per layer, nothing penalised: three coefficients where "costs" has many, so a
  few noisy rows pin it down;
- "linear-macs": "macs" plus `s * base`;
- "alone": the default model fitted on the k rows alone, exactly as `predictor train`
  fits it.

With several bases, each kind that uses one is tried on each base, and the "shrink"
kinds also on all of them at once. `method="auto"` combines every candidate instead of
choosing one: stacking (Breiman 1996), the non-negative weights, normalised to sum to 1,
that minimise the squared relative error of the candidates' leave-one-out predictions of
the total latency. It nests "alone" (weight 1), so none of them is picked on noise;
all candidates are linear in the bases and x, so the result is one correction. The rows
alone take part only when their ridge penalty is one leave-one-out can judge (see
`_ALPHAS`); "costs" is that ridge at the floor, with the cost terms free.
The stack's own leave-one-out is optimistic (its weights were fitted to it), and on 5 or
10 rows it weighs the candidates on noise: on HAT's devices the "macs" kind alone beat it
at k = 5 on every pair. So `auto` keeps "macs" alone (`PRIOR_KIND`) unless the stack
predicts the rows better when each is left out of the whole stacking, weights included (an
outer leave-one-out), and better by more than noise: a paired one-sided t-test, at
`CHOICE_LEVEL`, of the rows' absolute relative errors (the MAPE the predictor is judged by).
`metadata["choice"]` records both leave-one-out MAPEs and the test's t. (On HAT's devices,
the stack on any lower outer error left the adapted predictor over 0.05 points of MAPE worse
than "macs" alone in 20 of 48 pair x k x row-choice cases, with the test in 9; a stricter
test, of squared errors at 2.5%, kept "macs" where the stack was better, into the Pi 4 at
k = 40, and there lost to the rows alone.)
The adapted predictor's intervals (`predictor.conformal`) come from an outer leave-one-out
of the whole adaptation, the choice included: each row predicted by what `auto` keeps from
the other rows (about k^2 / 2 stackings, each set of rows stacked once): jackknife+,
normalised by each row's leverage (`predictor.leverage`); the k left-out corrections are
kept for it.
"""
from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from profiler.errors import PredictorError
from profiler.space import ArchConfig, DesignSpace

from predictor import data as _data
from predictor import features as _features
from predictor.conformal import Conformal
from predictor.leverage import Leverage, standardise
from predictor.core import (DEFAULT_MODEL, MIN_ROWS, LatencyPredictor, fit_prepared, jsonable,
                            library_versions, model_spec, prediction_frame, prepare)
from predictor.metrics import latency_metrics, mape, rmspe
from predictor.models import CostRidgeRegressor, _relative_weights

log = logging.getLogger(__name__)

METHODS = ("ratio", "linear", "shrink", "costs", "linear-costs", "shrink-costs", "macs", "linear-macs",
           "alone")
#: The kinds that use no base device.
BASELESS = ("costs", "macs", "alone")
#: The kind `auto` keeps instead of the stack unless the stack, left out whole, predicts better.
PRIOR_KIND = "macs"
#: ... better by a paired one-sided t-test at this level.
CHOICE_LEVEL = 0.10
#: The features every correction is written on: the default model's plus each part's MACs.
FEATURE_SET = "hat-macs"
#: The default model's features: the ridge part of every correction is on these.
PENALISED_SET = "hat-cost"
#: Each part's cost terms (feature names before the "/norm"), unpenalised by the "-costs" kinds.
COST_TERMS = {"encoder": ("encoder_layer_num", "enc_layers_x_dim", "enc_layers_x_dim_x_ffn"),
              "decoder": ("decoder_layer_num", "dec_layers_x_dim", "dec_layers_x_dim_x_ffn")}
COST_TERMS["total"] = COST_TERMS["encoder"] + COST_TERMS["decoder"]
#: Each part's MACs and layer count, the free columns of the "macs" kinds.
MACS_TERMS = {"encoder": ("gmacs_encoder", "encoder_layer_num"), "decoder": ("gmacs_decoder", "decoder_layer_num")}
MACS_TERMS["total"] = MACS_TERMS["encoder"] + MACS_TERMS["decoder"]
#: Ridge penalties of the fitted candidates (standardised features, relative weights). None
#: below 1e-2: with fewer rows than features, leave-one-out favours near-interpolation it
#: cannot see fail (20 random rows of HAT's Xeon: 0.6% leave-one-out, 19% held-out MAPE).
_ALPHAS = tuple(float(a) for a in np.logspace(-2, 4, 19))


@dataclass(frozen=True)
class Correction:
    """One target on the new device: `sum_j scales[j] * base_j + offset + coef . x`."""

    scales: tuple[float, ...]
    offset: float = 0.0
    coef: tuple[float, ...] = ()

    @property
    def scale(self) -> float:
        """The first base's factor."""
        return self.scales[0]

    def apply(self, base: Sequence[np.ndarray], X: np.ndarray) -> np.ndarray:
        out = sum(s * b for s, b in zip(self.scales, base) if s) + self.offset
        if self.coef:
            out = out + X @ np.asarray(self.coef)
        return np.asarray(out, dtype=np.float64) * np.ones(len(X))


@dataclass
class TransferPredictor:
    """Base devices' predictors with a per-target correction for a new device, written on
    the `feature_set` features (corrections that do not use a base have zero scales)."""

    bases: tuple[LatencyPredictor, ...]
    method: str
    corrections: dict[str, Correction]
    feature_set: str = FEATURE_SET
    metadata: dict[str, Any] = field(default_factory=dict)
    intervals: Conformal | None = None
    left_out: tuple[dict[str, Correction], ...] = ()
    leverage: Leverage | None = None

    @property
    def space(self) -> DesignSpace | None:
        """The bases' design space: an adapted predictor predicts the architectures they do."""
        return self.bases[0].space

    @property
    def base(self) -> LatencyPredictor:
        return self.bases[0]

    def predict_archs(self, archs: Sequence[ArchConfig]) -> np.ndarray:
        """Total latency (ms) on the new device of each architecture."""
        return _predict(self.corrections, *self._inputs(archs=archs))["total"]

    def predict_frame(self, df: pd.DataFrame) -> pd.DataFrame:
        """Predictions for latency rows, with the same columns as `LatencyPredictor`'s."""
        _data.check_inputs(df)
        return prediction_frame(_predict(self.corrections, *self._inputs(df=df)), df.index)

    def predict_with_inputs(self, df: pd.DataFrame | None = None, archs: Sequence[ArchConfig] | None = None
                            ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Total latency (ms) of rows or architectures, and what their jackknife+ intervals
        need beyond it (`Conformal.bounds`): each left-out correction's prediction and the
        spread. The bases predict them once for both."""
        if df is not None:
            _data.check_inputs(df)
        parts, X = self._inputs(df, archs)
        predicted = _predict(self.corrections, parts, X)["total"]
        if not self.left_out or self.leverage is None:
            return predicted, {}
        return predicted, {"left_out_ms": np.array([_predict(c, parts, X)["total"] for c in self.left_out]),
                           "spread": self.leverage.spread(X, predicted)}

    def interval_inputs(self, df: pd.DataFrame | None = None,
                        archs: Sequence[ArchConfig] | None = None) -> dict[str, np.ndarray]:
        """What jackknife+ intervals need beyond the prediction (`predict_with_inputs`, when
        the prediction is wanted too)."""
        if not self.left_out or self.leverage is None:
            return {}
        return self.predict_with_inputs(df, archs)[1]

    def _inputs(self, df: pd.DataFrame | None = None,
                archs: Sequence[ArchConfig] | None = None) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
        """Each base's predicted parts and the correction's features, of rows or architectures."""
        if df is not None:
            return [_base_parts(b, df) for b in self.bases], _features.from_frame(self.feature_set, df, self.base.context)
        parts = [b.predict_parts(_features.from_archs(b.feature_set, archs, b.context)) for b in self.bases]
        return parts, _features.from_archs(self.feature_set, archs, self.base.context)

    def to_payload(self) -> tuple[dict, dict[str, np.ndarray]]:
        arrays: dict[str, np.ndarray] = {}
        bases = []
        for i, b in enumerate(self.bases):
            manifest, part = b.to_payload(prefix=f"base{i}/")
            bases.append(manifest)
            arrays.update(part)
        manifest = {"kind": "transfer", "method": self.method, "feature_set": self.feature_set,
                    "corrections": _corrections_dict(self.corrections),
                    "left_out": [_corrections_dict(c) for c in self.left_out],
                    "leverage": None if self.leverage is None else self.leverage.to_dict(),
                    "metadata": jsonable(self.metadata), "bases": bases}
        return manifest, arrays

    @classmethod
    def from_payload(cls, manifest: dict, arrays: dict[str, np.ndarray]) -> "TransferPredictor":
        if "bases" not in manifest:
            raise PredictorError("this adapted predictor was written by an older hatprof, whose "
                                 "corrections this one no longer reads; adapt it again")
        bases = tuple(LatencyPredictor.from_payload(m, arrays, prefix=f"base{i}/")
                      for i, m in enumerate(manifest["bases"]))
        corrections = _corrections_of(manifest["corrections"])
        feature_set = manifest.get("feature_set", bases[0].feature_set)
        if manifest.get("own") is not None:  # an "alone" predictor written before corrections held it
            own = LatencyPredictor.from_payload(manifest["own"], arrays, prefix="own/")
            corrections = {t: _ridge_correction(e, len(bases)) for t, e in own.estimators.items()}
            feature_set = own.feature_set
        leverage = manifest.get("leverage")
        return cls(bases, manifest["method"], corrections, feature_set, manifest.get("metadata", {}),
                   left_out=tuple(_corrections_of(c) for c in manifest.get("left_out", [])),
                   leverage=None if leverage is None else Leverage.from_dict(leverage))


def _predict(corrections: dict[str, Correction], parts: list[dict[str, np.ndarray]],
             X: np.ndarray) -> dict[str, np.ndarray]:
    out = {t: c.apply([p[t] for p in parts], X) for t, c in corrections.items()}
    if "total" not in out:
        out["total"] = sum(out.values())
    return out


def _corrections_dict(corrections: dict[str, Correction]) -> dict[str, Any]:
    return {t: jsonable(asdict(c)) for t, c in corrections.items()}


def _corrections_of(data: dict[str, Any]) -> dict[str, Correction]:
    return {t: Correction(tuple(map(float, c["scales"])), float(c["offset"]), tuple(map(float, c["coef"])))
            for t, c in data.items()}


def _base_parts(base: LatencyPredictor, df: pd.DataFrame) -> dict[str, np.ndarray]:
    return base.predict_parts(_features.from_frame(base.feature_set, df, base.context))


def _ridge_correction(est: CostRidgeRegressor, n_bases: int, width: int | None = None) -> Correction:
    """A fitted ridge on the first of the correction's `width` features (zero on the rest)
    as a correction that uses no base."""
    coef = np.asarray(est.coef_, dtype=float)
    coef = np.r_[coef, np.zeros((width or len(coef)) - len(coef))]
    return Correction((0.0,) * n_bases, float(est.intercept_), tuple(coef.tolist()))


# -- fitting on arrays --------------------------------------------------------------------------


@dataclass(frozen=True)
class _RidgeBasis:
    """The weighted design of `min sum w (y - [free pen] b)^2 + alpha |b_pen|^2`, decomposed
    once for every penalty: with the free columns' span (orthonormal Q) projected out of the
    penalised ones, B = (I - QQ') pen = U S V', the hat matrix is QQ' + U diag(s^2 / (s^2 +
    alpha)) U'. Collinear free columns get the least-norm solution."""

    root: np.ndarray
    pen: np.ndarray
    Q: np.ndarray
    s_free: np.ndarray
    Vt_free: np.ndarray
    U: np.ndarray
    s: np.ndarray
    Vt: np.ndarray

    @classmethod
    def of(cls, free: np.ndarray, penalised: np.ndarray, w: np.ndarray) -> "_RidgeBasis":
        root = np.sqrt(w)
        A_free, A_pen = free * root[:, None], penalised * root[:, None]
        U_free, s_free, Vt_free = np.linalg.svd(A_free, full_matrices=False)
        rank = int(np.sum(s_free > s_free.max(initial=0.0) * max(A_free.shape) * np.finfo(np.float64).eps))
        Q = U_free[:, :rank]
        U, s, Vt = np.linalg.svd(A_pen - Q @ (Q.T @ A_pen), full_matrices=False)
        return cls(root, A_pen, Q, s_free[:rank], Vt_free[:rank], U, s, Vt)

    def _shrink(self, alphas: np.ndarray) -> np.ndarray:
        """s^2 / (s^2 + alpha), a row per penalty."""
        return _ratio(self.s ** 2, self.s ** 2 + alphas[:, None])

    def leverage(self, alphas: np.ndarray) -> np.ndarray:
        """The hat matrix's diagonal, a column per penalty."""
        return np.sum(self.Q ** 2, axis=1)[:, None] + self.U ** 2 @ self._shrink(alphas).T

    def residuals(self, y: np.ndarray, alphas: np.ndarray) -> np.ndarray:
        """y less its fit (unweighted), a column per penalty."""
        y_w = y * self.root
        fitted = (self.Q @ (self.Q.T @ y_w))[:, None] + self.U @ (self._shrink(alphas) * (self.U.T @ y_w)).T
        return (y_w[:, None] - fitted) / self.root[:, None]

    def coefficients(self, y: np.ndarray, alpha: float) -> np.ndarray:
        """b: the free columns' coefficients, then the penalised ones'."""
        y_w = y * self.root
        b_pen = self.Vt.T @ (_ratio(self.s, self.s ** 2 + alpha) * (self.U.T @ y_w))
        return np.r_[self.Vt_free.T @ ((self.Q.T @ (y_w - self.pen @ b_pen)) / self.s_free), b_pen]


def _ridge_path(free: np.ndarray, penalised: np.ndarray, y: np.ndarray, w: np.ndarray,
                alphas: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Of the ridge (`_RidgeBasis`) at each of `alphas`, the one of least weighted leave-one-out
    error (the first, on a tie): its coefficients and its exact leave-one-out residuals,
    e_i / (1 - h_ii) of the weighted hat matrix; a row the fit passes through whatever it is
    (h_ii = 1) by a refit without it."""
    basis, alphas = _RidgeBasis.of(free, penalised, w), np.asarray(alphas, dtype=np.float64)
    h = basis.leverage(alphas)
    loo = basis.residuals(y, alphas) / np.maximum(1.0 - h, 1e-9)
    for i, j in zip(*np.nonzero(h > 1.0 - 1e-9)):
        rest = np.arange(len(y)) != i
        b = _RidgeBasis.of(free[rest], penalised[rest], w[rest]).coefficients(y[rest], alphas[j])
        loo[i, j] = y[i] - np.r_[free[i], penalised[i]] @ b
    best = int(np.argmin(w @ loo ** 2))
    return basis.coefficients(y, alphas[best]), loo[:, best]


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a / b (broadcast), 0 where b is 0 (a direction of no data and no penalty)."""
    a, b = np.broadcast_arrays(a, b)
    return np.divide(a, b, out=np.zeros(b.shape), where=b > 0)


def stack_weights(loo_ms: np.ndarray, y_ms: np.ndarray) -> np.ndarray:
    """Stacking weights of candidates (columns of `loo_ms`, their leave-one-out predictions):
    the non-negative least squares of the relative error, normalised to sum to 1; the one
    of lowest relative error alone when none gets a positive weight."""
    from scipy.optimize import nnls

    rel = loo_ms / y_ms[:, None]
    weights, _ = nnls(rel, np.ones(len(y_ms)))
    if weights.sum() <= 0:
        weights = np.eye(rel.shape[1])[int(np.argmin(np.mean((rel - 1) ** 2, axis=0)))]
    return weights / weights.sum()


@dataclass(frozen=True)
class _Candidate:
    """A kind of correction on some of the bases (none for the kinds that use no base)."""

    name: str
    kind: str
    bases: tuple[int, ...]

    @property
    def terms(self) -> dict[str, tuple[str, ...]] | None:
        """Its unpenalised feature columns per target: the cost terms or the MACs, if any."""
        if self.kind.endswith("costs"):
            return COST_TERMS
        return MACS_TERMS if self.kind.endswith("macs") else None

    def free_columns(self, terms: int) -> int:
        """Unpenalised columns: the bases' predictions, `terms` feature columns, the intercept."""
        return len(self.bases) + terms + (self.kind != "ratio")

    @property
    def penalised(self) -> bool:
        """Whether it has a ridge part on the features."""
        return self.kind in ("shrink", "costs", "shrink-costs", "alone")

    def fewest_rows(self, terms: int) -> int:
        """Fewest rows it is fitted on: a row per base for the ratio, else one more than its
        unpenalised columns."""
        if self.kind == "alone":
            return MIN_ROWS
        return len(self.bases) if self.kind == "ratio" else self.free_columns(terms) + 1


@dataclass
class _Rows:
    """The new device's rows as arrays: each base's predictions, features (the first
    `penalised_columns` are the default model's), targets, and the k-rows-alone ridge (its
    fitted estimators, whose penalties it keeps) when there is one. Each stacking is made
    once per set of rows: the nested leave-one-out asks for every set without two rows twice."""

    base: list[dict[str, np.ndarray]]
    X: np.ndarray
    ys: dict[str, np.ndarray]
    targets: tuple[str, ...]
    own: dict[str, CostRidgeRegressor] | None
    names: list[str]
    penalised_columns: int
    _combined: dict[tuple, "_Fit"] = field(default_factory=dict, init=False, repr=False)
    _columns_of: dict[tuple[str, ...], np.ndarray] = field(default_factory=dict, init=False, repr=False)

    def terms(self, cand: _Candidate, target: str) -> np.ndarray:
        """Column indices in X of the candidate's unpenalised feature columns for the target."""
        names = (cand.terms or {}).get(target, ())
        if names not in self._columns_of:
            self._columns_of[names] = np.array([i for i, n in enumerate(self.names) if n.split("/")[0] in names],
                                               dtype=int)
        return self._columns_of[names]

    def fewest_rows(self, cand: _Candidate) -> int:
        """Fewest rows `cand` is fitted on, here."""
        return cand.fewest_rows(len(self.terms(cand, self.targets[0])))

    def _columns(self, cand: _Candidate, target: str,
                 rows: np.ndarray) -> tuple[list[np.ndarray], np.ndarray | None]:
        """The free columns (unpenalised) and the raw penalised matrix of `cand` on `rows`."""
        free = [self.base[j][target][rows] for j in cand.bases]
        free += list(self.X[np.ix_(rows, self.terms(cand, target))].T)
        if cand.kind != "ratio":
            free.append(np.ones(len(rows)))
        return free, self.X[rows, :self.penalised_columns] if cand.penalised else None

    def fit(self, cand: _Candidate, rows: np.ndarray) -> tuple[dict[str, tuple], np.ndarray]:
        """Per-target fitted state of `cand` on `rows`, and its leave-one-out total (ms)."""
        fitted, loo_total = {}, np.zeros(len(rows))
        for t in self.targets:
            y = self.ys[t][rows]
            w = _relative_weights(y)
            free, raw = self._columns(cand, t, rows)
            norms = [float(np.mean(np.abs(f))) or 1.0 for f in free]
            F = np.column_stack([f / n for f, n in zip(free, norms)])
            if raw is None:
                mean, scale, pen, alphas = None, None, np.empty((len(rows), 0)), (0.0,)
            else:
                mean, scale = standardise(raw)
                pen = (raw - mean) / scale
                alphas = (self.own[t].alpha_,) if cand.kind == "alone" else _ALPHAS
            beta, loo = _ridge_path(F, pen, y, w, alphas)
            fitted[t] = (beta, norms, mean, scale)
            loo_total += y - loo
        return fitted, loo_total

    def correction(self, cand: _Candidate, target: str, state: tuple, exact: bool = True) -> Correction:
        """A fitted state as a `Correction` on raw features and every base; "alone" is the
        k-rows-alone ridge itself when `exact` (else its fit on the state's rows)."""
        if cand.kind == "alone" and exact:
            return _ridge_correction(self.own[target], len(self.base), self.X.shape[1])
        beta, norms, mean, scale = state
        free = beta[:len(norms)] / np.asarray(norms)
        scales = [0.0] * len(self.base)
        for j, b in zip(cand.bases, free):
            scales[j] = float(b)
        coef = np.zeros(self.X.shape[1])
        terms = self.terms(cand, target)
        coef[terms] = free[len(cand.bases):len(cand.bases) + len(terms)]
        offset = float(free[-1]) if cand.kind != "ratio" else 0.0
        if mean is not None:
            raw = beta[len(norms):] / scale
            offset -= float(mean @ raw)
            coef[:self.penalised_columns] += raw
        return Correction(tuple(scales), offset, tuple(coef.tolist()))

    def predict(self, cand: _Candidate, fitted: dict[str, tuple], rows: np.ndarray) -> np.ndarray:
        """Total latency (ms) of `rows` from a fitted state."""
        total = np.zeros(len(rows))
        for t, (beta, norms, mean, scale) in fitted.items():
            free, raw = self._columns(cand, t, rows)
            out = np.column_stack([f / n for f, n in zip(free, norms)]) @ beta[:len(norms)]
            if mean is not None:
                out = out + (raw - mean) / scale @ beta[len(norms):]
            total += out
        return total

    def combine(self, candidates: Sequence[_Candidate], rows: np.ndarray) -> "_Fit":
        """Every candidate that `rows` suffice for, fitted, and their stacking weights."""
        key = (tuple(c.name for c in candidates), tuple(rows.tolist()))
        if key not in self._combined:
            self._combined[key] = self._combine(candidates, rows)
        return self._combined[key]

    def _combine(self, candidates: Sequence[_Candidate], rows: np.ndarray) -> "_Fit":
        usable = [c for c in candidates if len(rows) >= self.fewest_rows(c)]
        if not usable:
            raise PredictorError(f"no correction can be fitted on {len(rows)} rows")
        y = self.ys["total"][rows]
        fits = [self.fit(c, rows) for c in usable]
        loo = np.column_stack([f[1] for f in fits])
        weights = stack_weights(loo, y) if len(usable) > 1 else np.ones(1)
        scores = {c.name: rmspe(y, loo[:, i]) for i, c in enumerate(usable)}
        scores["stack"] = rmspe(y, loo @ weights)
        return _Fit(usable, [f[0] for f in fits], weights, scores, loo @ weights)

    def jackknife(self, fit: Callable[[np.ndarray], "_Fit"], rows: np.ndarray,
                  progress: Callable[[], None] | None = None) -> tuple[np.ndarray, list["_Fit"]]:
        """Total latency (ms) of each of `rows` predicted by `fit` made on the others, and
        those fits; `progress` is called after each row."""
        predicted, fits = np.empty(len(rows)), []
        for i, row in enumerate(rows):
            fits.append(fit(np.delete(rows, i)))
            predicted[i] = fits[-1].predict(self, np.array([row]))[0]
            if progress is not None:
                progress()
        return predicted, fits


@dataclass
class _Fit:
    """Fitted candidates, their stacking weights, leave-one-out RMSPE (% of the total) and
    the stack's leave-one-out predictions of the total (ms)."""

    candidates: list[_Candidate]
    states: list[dict[str, tuple]]
    weights: np.ndarray
    scores: dict[str, float]
    loo_ms: np.ndarray

    def predict(self, rows_data: _Rows, rows: np.ndarray) -> np.ndarray:
        return sum(w * rows_data.predict(c, s, rows)
                   for c, s, w in zip(self.candidates, self.states, self.weights) if w > 0)

    def corrections(self, rows_data: _Rows, exact: bool = True) -> dict[str, Correction]:
        """The weighted sum of the candidates' corrections, per target."""
        out = {}
        for t in rows_data.targets:
            parts = [(w, rows_data.correction(c, t, s[t], exact))
                     for c, s, w in zip(self.candidates, self.states, self.weights) if w > 0]
            out[t] = Correction(tuple(float(v) for v in sum(w * np.asarray(c.scales) for w, c in parts)),
                                float(sum(w * c.offset for w, c in parts)),
                                tuple(float(v) for v in sum(w * np.asarray(c.coef) for w, c in parts)))
        return out


def _candidates(method: str, n_bases: int, devices: Sequence[str], alone: bool, macs: bool) -> list[_Candidate]:
    kinds = METHODS if method == "auto" else (method,)
    out = []
    for kind in kinds:
        if kind.endswith("macs") and not macs:
            continue
        if kind in BASELESS:
            if kind != "alone" or alone:
                out.append(_Candidate(kind, kind, ()))
            continue
        for j in range(n_bases):
            out.append(_Candidate(kind if n_bases == 1 else f"{kind}[{devices[j]}]", kind, (j,)))
        if kind.startswith("shrink") and n_bases > 1:
            out.append(_Candidate(f"{kind}[all]", kind, tuple(range(n_bases))))
    return out


# -- the public entry points --------------------------------------------------------------------


def adapt(base: LatencyPredictor | Sequence[LatencyPredictor], df: pd.DataFrame,
          method: str = "auto", intervals: bool = True,
          progress: Callable[[], None] | None = None) -> TransferPredictor:
    """Adapt one or several base predictors to the device the rows of `df` were measured on.

    The outer leave-one-out (each row predicted by the whole adaptation, weights included,
    made without it) gives the intervals and `metadata["cross_validation"]`, the honest
    error estimate; `intervals=False` skips it (about k / 2 times the adaptation's own work).
    `progress` is called as each row's left-out adaptation is done.
    """
    if method not in ("auto", *METHODS):
        raise PredictorError(f"unknown transfer method {method!r} (known: auto, {', '.join(METHODS)})")
    bases = (base,) if not isinstance(base, (list, tuple)) else tuple(base)
    if not bases or not all(isinstance(b, LatencyPredictor) for b in bases):
        raise PredictorError("the base of an adaptation must be a trained predictor, "
                             "not an adapted one")
    _data.check_inputs(df, "the new device's data")
    settings = _data.data_settings(df)
    for b in bases:
        _check_workload(b, settings)
    k = len(df)
    names = _data.target_names(df)
    if names != _data.PART_TARGETS or any("total" in b.targets for b in bases):
        names = _data.TOTAL_TARGET
    ys = _data.targets(df, names)
    ctx = bases[0].context
    own = _own_ridge(df, names) if method in ("auto", "alone") and k >= MIN_ROWS else None
    devices = [str(b.metadata.get("data", {}).get("device")) for b in bases]
    # Under the penalties' floor the rows alone's leave-one-out cannot judge them (see _ALPHAS):
    # auto then leaves them out (the "costs" kind is their ridge at the floor, and more).
    trusted = own is not None and (method == "alone" or min(e.alpha_ for e in own.values()) >= _ALPHAS[0])
    # MACs need the space's attention width and vocabulary.
    feature_set = FEATURE_SET if ctx.space is not None else PENALISED_SET
    if method.endswith("macs") and feature_set != FEATURE_SET:
        raise PredictorError(f"the {method} correction needs the base predictor's design space to count MACs")
    candidates = _candidates(method, len(bases), devices, trusted, feature_set == FEATURE_SET)
    rows = _Rows([_base_parts(b, df) for b in bases], _features.from_frame(feature_set, df, ctx), ys, names,
                 own, _features.feature_names(feature_set, ctx), len(_features.feature_names(PENALISED_SET, ctx)))
    fewest = min((rows.fewest_rows(c) for c in candidates), default=MIN_ROWS)
    if k < fewest:
        raise PredictorError(f"the {method} correction needs at least {fewest} rows, got {k}")
    auto, everything = method == "auto", np.arange(k)
    combined, stacked, choice = _kept(rows, candidates, everything, auto)
    conformal, cv, left_out, leverage = None, None, (), None
    if intervals and k - 1 >= fewest:
        predicted, fits = rows.jackknife(lambda rest: _kept(rows, candidates, rest, auto)[0], everything, progress)
        left_out = [f.corrections(rows, exact=False) for f in fits]
        leverage, spread = Leverage.fit(rows.X, ys["total"])
        conformal = Conformal.from_residuals(ys["total"], predicted, "jackknife+ (leave-one-out of the "
                                             "adaptation, normalised by leverage)", spread)
        cv = latency_metrics(ys["total"], predicted)
    weights = {c.name: round(float(w), 4) for c, w in zip(combined.candidates, combined.weights) if w > 0}
    log.info("adapted %s to %s from %d rows: %s (leave-one-out RMSPE %s)", ", ".join(devices),
             settings.get("device"), k, weights, {n: round(v, 2) for n, v in stacked.scores.items()})
    metadata = {
        "model": f"{bases[0].model}+{method}",
        "base_device": devices[0] if len(devices) == 1 else devices,
        "data": {**settings, "rows": k},
        "weights": weights,
        "loo_rmspe": {**stacked.scores, method: combined.scores["stack"]},
        "choice": choice,
        "cross_validation": cv,
        "adapted_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": library_versions(),
    }
    return TransferPredictor(bases, method, combined.corrections(rows), feature_set, metadata, conformal,
                             tuple(left_out), leverage)


def _kept(rows: _Rows, candidates: Sequence[_Candidate], idx: np.ndarray,
          auto: bool) -> tuple[_Fit, _Fit, dict[str, Any] | None]:
    """What `adapt` keeps from the rows `idx`, the stack of the candidates, and with `auto`
    the choice: the stack when its outer leave-one-out (each row predicted by the whole
    stacking made without it) beats the prior kind's leave-one-out by a paired t-test (t
    of the rows' gain in absolute relative error over Student's 1 - `CHOICE_LEVEL`
    quantile), else the prior kind alone (no choice when there is no prior kind or too few
    rows to leave one out)."""
    stacked = rows.combine(candidates, idx)
    prior = [c for c in candidates if c.kind == PRIOR_KIND]
    if not auto or not prior or len(idx) - 1 < rows.fewest_rows(prior[0]):
        return stacked, stacked, None
    outer, _ = rows.jackknife(lambda rest: rows.combine(candidates, rest), idx)
    alone = rows.combine(prior, idx)
    y = rows.ys["total"][idx]
    gain = np.abs(alone.loo_ms / y - 1) - np.abs(outer / y - 1)
    choice = {"stack": mape(y, outer), PRIOR_KIND: mape(y, alone.loo_ms), "t": _paired_t(gain)}
    choice["chosen"] = "stack" if choice["t"] > stats.t.ppf(1 - CHOICE_LEVEL, len(idx) - 1) else PRIOR_KIND
    return (alone if choice["chosen"] == PRIOR_KIND else stacked), stacked, choice


def _paired_t(gain: np.ndarray) -> float:
    """Student's t of the mean of paired differences: finite (the predictor file's JSON holds
    it), differences that agree to the last bit taken as the float resolution apart."""
    scale = float(np.max(np.abs(gain)))
    if scale == 0:
        return 0.0
    sd = max(float(np.std(gain, ddof=1)), float(np.finfo(np.float64).eps) * scale)
    return float(np.mean(gain) / (sd / np.sqrt(len(gain))))


def _own_ridge(df: pd.DataFrame, names: tuple[str, ...]) -> dict[str, CostRidgeRegressor] | None:
    """`predictor train`'s default model on the rows, when it is the relative ridge on the
    corrections' penalised features (whose leave-one-out `_ridge_path` computes exactly); else
    there is no k-rows-alone candidate."""
    spec = model_spec(DEFAULT_MODEL)
    if spec.feature_set != PENALISED_SET:
        log.warning("the default model %s is not on %s features: no k-rows-alone candidate", DEFAULT_MODEL,
                    PENALISED_SET)
        return None
    own = fit_prepared(prepare(df, spec.feature_set, "total" if names == _data.TOTAL_TARGET else "auto"),
                       None, DEFAULT_MODEL)
    ests = own.estimators
    if not all(isinstance(e, CostRidgeRegressor) and e.relative for e in ests.values()):
        log.warning("the default model %s is not a relative ridge: no k-rows-alone candidate", DEFAULT_MODEL)
        return None
    return dict(ests)


def _check_workload(base: LatencyPredictor, settings: dict[str, Any]) -> None:
    """Refuse rows timed on another workload or space than the base predictor's."""
    ctx = base.context
    for key, expected in (("seq_len", ctx.seq_len), ("beam", ctx.beam),
                          ("space", ctx.space.name if ctx.space else None)):
        value = settings.get(key)
        if value is not None and expected is not None and str(value) != str(expected):
            raise PredictorError(f"the new device's rows have {key}={value}, the base predictor "
                                 f"was trained with {key}={expected}")


def evaluate_transfer(base: LatencyPredictor | Sequence[LatencyPredictor], df: pd.DataFrame, k: int = 20,
                      repeats: int = 10, seed: int = 0, scratch_model: str = DEFAULT_MODEL,
                      method: str = "auto", confidence: float = 0.9) -> dict[str, Any]:
    """Adapted predictor vs `scratch_model` fitted on the same k rows alone, both scored
    on the rows left out; metrics averaged over `repeats` random draws of the k rows, with
    the adapted intervals' coverage at `confidence`."""
    if not 3 <= k < len(df) - 1:
        raise PredictorError(f"k must be between 3 and rows - 2 ({len(df) - 2}), got {k}")
    spec = model_spec(scratch_model)
    prep = prepare(df, spec.feature_set, spec.targets)
    rng = np.random.default_rng(seed)
    runs: dict[str, list[dict]] = {"adapted": [], "scratch": []}
    weights: dict[str, float] = {}
    coverage = []
    for _ in range(repeats):
        order = rng.permutation(len(df))
        few, rest = order[:k], order[k:]
        measured = prep.ys["total"][rest]
        adapted = adapt(base, df.iloc[few], method)
        for name, w in adapted.metadata["weights"].items():
            weights[name] = weights.get(name, 0.0) + w / repeats
        predicted, inputs = adapted.predict_with_inputs(df.iloc[rest])
        runs["adapted"].append(latency_metrics(measured, predicted))
        if adapted.intervals is not None and adapted.intervals.rows >= adapted.intervals.min_rows(confidence):
            coverage.append(adapted.intervals.coverage(measured, predicted, confidence, **inputs))
        scratch = fit_prepared(prep, few, scratch_model, seed=seed)
        runs["scratch"].append(latency_metrics(measured, scratch.predict_parts(prep.X[rest])["total"]))
    summary: dict[str, Any] = {"k": k, "repeats": repeats, "held_out": len(df) - k,
                               "scratch_model": scratch_model, "mean_weights": weights}
    for name, metrics in runs.items():
        summary[name] = {key: _mean([m[key] for m in metrics]) for key in metrics[0] if key != "n"}
    summary["adapted"][f"coverage_{round(100 * confidence)}"] = _mean(coverage)
    return summary


def _mean(values: list) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None
