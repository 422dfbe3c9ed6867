"""Predictors for new hardware from a few measured rows plus other devices' predictors.

Latency on a new device is, to a first approximation, a base device's latency times a
factor, part by part; what differs beyond that is learnt from the k measured rows. Per
target (encoder and decoder, or the total), in least squared relative error:

- "ratio": `new = s * base`;
- "linear": `new = s * base + c`;
- "shrink": `new = s * base + c + d . x`, a ridge regression on the predictor's features
  whose coefficients are shrunk toward the rescaled base's (for a linear base, toward
  `s * w_base`: an empirical-Bayes / hierarchical prior), the strength chosen by
  leave-one-out on the k rows; from "linear" (strong prior) to a model of its own;
- "augment": the default model's ridge with the base's prediction as one more feature,
  penalised like the others (close to "alone" when the base says little);
- "alone": the default model fitted on the k rows alone, exactly as `predictor train`
  fits it, so that adapting never has to lose to starting over.

With several bases, each kind is tried on each base, and "shrink" and "augment" also on
all of them at once. `method="auto"` keeps the candidate with the lowest leave-one-out
RMSPE of the total latency on the k rows, except that the k rows alone are kept unless
another candidate beats them by more than one standard error (per-row paired
differences): adapting then loses to starting over only by chance, never by a choice
made on noise. The choice sees the k rows only.
The adapted predictor's intervals (`predictor.conformal`) come from a second, outer
leave-one-out of that whole procedure, choice included (jackknife), so they are honest
about the choice too.
"""
from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from profiler.errors import PredictorError
from profiler.space import ArchConfig, DesignSpace

from predictor import data as _data
from predictor import features as _features
from predictor.conformal import Conformal
from predictor.core import (DEFAULT_MODEL, MIN_ROWS, LatencyPredictor, fit_prepared, jsonable,
                            library_versions, model_spec, prediction_frame, prepare)
from predictor.metrics import latency_metrics
from predictor.models import CostRidgeRegressor, _relative_weights

log = logging.getLogger(__name__)

METHODS = ("ratio", "linear", "shrink", "augment", "alone")
#: Fewest rows each kind of candidate is fitted on.
_MIN_ROWS = {"ratio": 1, "linear": 3, "shrink": 4, "augment": 4, "alone": MIN_ROWS}
#: Ridge penalties of the shrinkage toward the base (on standardised features, relative weights).
_SHRINK_ALPHAS = tuple(float(a) for a in np.logspace(-6, 4, 31))


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
    """Base devices' predictors with a per-target correction for a new device, or (method
    "alone") the new device's own predictor fitted on the k rows."""

    bases: tuple[LatencyPredictor, ...]
    method: str
    corrections: dict[str, Correction]
    own: LatencyPredictor | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    intervals: Conformal | None = None

    @property
    def space(self) -> DesignSpace | None:
        """The bases' design space: an adapted predictor predicts the architectures they do."""
        return self.bases[0].space

    @property
    def base(self) -> LatencyPredictor:
        """The first base (its features carry the shrinkage's correction)."""
        return self.bases[0]

    def predict_archs(self, archs: Sequence[ArchConfig]) -> np.ndarray:
        """Total latency (ms) on the new device of each architecture."""
        if self.own is not None:
            return self.own.predict_archs(archs)
        X = _features.from_archs(self.base.feature_set, archs, self.base.context)
        parts = [b.predict_parts(_features.from_archs(b.feature_set, archs, b.context)) for b in self.bases]
        return self._predict(parts, X)["total"]

    def predict_frame(self, df: pd.DataFrame) -> pd.DataFrame:
        """Predictions for latency rows, with the same columns as `LatencyPredictor`'s."""
        if self.own is not None:
            return self.own.predict_frame(df)
        _data.check_inputs(df)
        X = _features.from_frame(self.base.feature_set, df, self.base.context)
        parts = [_base_parts(b, df) for b in self.bases]
        return prediction_frame(self._predict(parts, X), df.index)

    def _predict(self, parts: list[dict[str, np.ndarray]], X: np.ndarray) -> dict[str, np.ndarray]:
        out = {t: c.apply([p[t] for p in parts], X) for t, c in self.corrections.items()}
        if "total" not in out:
            out["total"] = sum(out.values())
        return out

    def to_payload(self) -> tuple[dict, dict[str, np.ndarray]]:
        arrays: dict[str, np.ndarray] = {}
        bases = []
        for i, b in enumerate(self.bases):
            manifest, part = b.to_payload(prefix=f"base{i}/")
            bases.append(manifest)
            arrays.update(part)
        own = None
        if self.own is not None:
            own, part = self.own.to_payload(prefix="own/")
            arrays.update(part)
        manifest = {"kind": "transfer", "method": self.method,
                    "corrections": {t: jsonable(asdict(c)) for t, c in self.corrections.items()},
                    "metadata": jsonable(self.metadata), "bases": bases, "own": own}
        return manifest, arrays

    @classmethod
    def from_payload(cls, manifest: dict, arrays: dict[str, np.ndarray]) -> "TransferPredictor":
        if "bases" not in manifest:
            raise PredictorError("this adapted predictor was written by an older hatprof, whose "
                                 "corrections this one no longer reads; adapt it again")
        bases = tuple(LatencyPredictor.from_payload(m, arrays, prefix=f"base{i}/")
                      for i, m in enumerate(manifest["bases"]))
        own = (None if manifest.get("own") is None
               else LatencyPredictor.from_payload(manifest["own"], arrays, prefix="own/"))
        corrections = {t: Correction(tuple(map(float, c["scales"])), float(c["offset"]),
                                     tuple(map(float, c["coef"])))
                       for t, c in manifest["corrections"].items()}
        return cls(bases, manifest["method"], corrections, own, manifest.get("metadata", {}))


def _base_parts(base: LatencyPredictor, df: pd.DataFrame) -> dict[str, np.ndarray]:
    return base.predict_parts(_features.from_frame(base.feature_set, df, base.context))


# -- fitting on arrays --------------------------------------------------------------------------


def _weighted_ridge(free: np.ndarray, penalised: np.ndarray, y: np.ndarray, w: np.ndarray,
                    alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients of `min sum w (y - [free pen] b)^2 + alpha |b_pen|^2` and the exact
    leave-one-out residuals (e_i / (1 - h_ii) of the weighted hat matrix)."""
    Z = np.column_stack([free, penalised])
    A = Z * np.sqrt(w)[:, None]
    G = A.T @ A
    penalty = np.r_[np.zeros(free.shape[1]), np.full(penalised.shape[1], alpha)]
    # A whisker of ridge on the free columns keeps G invertible when they are collinear.
    G[np.diag_indices_from(G)] += penalty + 1e-10 * max(float(np.trace(G)) / len(G), 1e-300)
    G_inv = np.linalg.inv(G)
    beta = G_inv @ (A.T @ (y * np.sqrt(w)))
    leverage = np.einsum("ij,jk,ik->i", A, G_inv, A)
    return beta, (y - Z @ beta) / np.maximum(1.0 - leverage, 1e-9)


def standardise(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column means and standard deviations (1 for a constant column), as the ridge uses."""
    mean, scale = X.mean(axis=0), X.std(axis=0)
    return mean, np.where(scale > 1e-12 * np.maximum(1.0, np.abs(mean)), scale, 1.0)


@dataclass(frozen=True)
class _Candidate:
    """A kind of correction on some of the bases (none for "alone")."""

    name: str
    kind: str
    bases: tuple[int, ...]


@dataclass
class _Rows:
    """The new device's rows as arrays: each base's predictions, features, targets."""

    base: list[dict[str, np.ndarray]]
    X: np.ndarray
    X_own: np.ndarray | None
    ys: dict[str, np.ndarray]
    targets: tuple[str, ...]
    own_alpha: dict[str, float] | None

    def _columns(self, cand: _Candidate, target: str,
                 rows: np.ndarray) -> tuple[list[np.ndarray], np.ndarray | None]:
        """The free columns (unpenalised) and the raw penalised matrix of `cand` on `rows`."""
        bases = [self.base[j][target][rows] for j in cand.bases]
        ones = np.ones(len(rows))
        if cand.kind == "alone":
            return [ones], self.X_own[rows]
        if cand.kind == "augment":
            return [ones], np.column_stack([self.X[rows], *bases])
        free = bases if cand.kind == "ratio" else [*bases, ones]
        return free, self.X[rows] if cand.kind == "shrink" else None

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
                alphas = (self.own_alpha[t],) if cand.kind == "alone" else _SHRINK_ALPHAS
            best = None
            for alpha in alphas:
                beta, loo = _weighted_ridge(F, pen, y, w, alpha)
                score = float(np.sum(w * loo ** 2))
                if best is None or score < best[0]:
                    best = (score, beta, loo)
            _, beta, loo = best
            fitted[t] = (beta, norms, mean, scale)
            loo_total += y - loo
        return fitted, loo_total

    def correction(self, cand: _Candidate, state: tuple) -> Correction:
        """A fitted state as a `Correction` on raw features and every base."""
        beta, norms, mean, scale = state
        nf = len(norms)
        free = beta[:nf] / np.asarray(norms)
        scales = [0.0] * len(self.base)
        offset = 0.0
        for j, b in zip(cand.bases if cand.kind in ("ratio", "linear", "shrink") else (), free):
            scales[j] = float(b)
        if cand.kind != "ratio":
            offset = float(free[-1])
        coef: tuple[float, ...] = ()
        if mean is not None:
            raw = beta[nf:] / scale
            offset -= float(mean @ raw)
            n_x = self.X.shape[1]
            if cand.kind == "augment":
                for j, b in zip(cand.bases, raw[n_x:]):
                    scales[j] = float(b)
            coef = tuple(raw[:n_x].tolist())
        return Correction(tuple(scales), offset, coef)

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

    def choose(self, candidates: Sequence[_Candidate],
               rows: np.ndarray) -> tuple[_Candidate, dict[str, tuple], dict[str, float]]:
        """The candidate of lowest leave-one-out RMSPE (total latency) on `rows`; the k rows
        alone, when a candidate, unless another beats them by more than one standard error
        of the paired per-row difference (the one-standard-error rule, toward the default)."""
        usable = [c for c in candidates if len(rows) >= _MIN_ROWS[c.kind] + max(len(c.bases) - 1, 0)]
        if not usable:
            raise PredictorError(f"no correction can be fitted on {len(rows)} rows")
        y = self.ys["total"][rows]
        results, errors = {}, {}
        for cand in usable:
            fitted, loo = self.fit(cand, rows)
            results[cand.name] = (cand, fitted)
            errors[cand.name] = np.square(loo / y - 1.0)
        scores = {name: float(100 * np.sqrt(np.mean(e))) for name, e in errors.items()}
        name = min(scores, key=scores.get)
        if "alone" in errors and name != "alone":
            gain = errors["alone"] - errors[name]
            if gain.mean() <= gain.std(ddof=1) / np.sqrt(len(gain)):
                name = "alone"
        return results[name][0], results[name][1], scores

    def jackknife(self, candidates: Sequence[_Candidate]) -> np.ndarray:
        """Total latency (ms) of each row predicted by the whole choice made without it."""
        n = len(self.ys["total"])
        predicted = np.empty(n)
        for i in range(n):
            rows = np.delete(np.arange(n), i)
            cand, fitted, _ = self.choose(candidates, rows)
            predicted[i] = self.predict(cand, fitted, np.array([i]))[0]
        return predicted


def _candidates(method: str, n_bases: int, devices: Sequence[str]) -> list[_Candidate]:
    kinds = METHODS if method == "auto" else (method,)
    out = []
    for kind in kinds:
        if kind == "alone":
            out.append(_Candidate("alone", kind, ()))
            continue
        for j in range(n_bases):
            out.append(_Candidate(kind if n_bases == 1 else f"{kind}[{devices[j]}]", kind, (j,)))
        if kind in ("shrink", "augment") and n_bases > 1:
            out.append(_Candidate(f"{kind}[all]", kind, tuple(range(n_bases))))
    return out


# -- the public entry points --------------------------------------------------------------------


def adapt(base: LatencyPredictor | Sequence[LatencyPredictor], df: pd.DataFrame,
          method: str = "auto", intervals: bool = True) -> TransferPredictor:
    """Adapt one or several base predictors to the device the rows of `df` were measured on.

    The outer leave-one-out (each row predicted by the whole adaptation, choice included,
    made without it) gives the intervals and `metadata["cross_validation"]`, the honest
    error estimate; `intervals=False` skips it (k times the work of the adaptation).
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
    fewest = min(_MIN_ROWS[m] for m in (METHODS if method == "auto" else (method,)))
    if k < fewest:
        raise PredictorError(f"the {method} correction needs at least {fewest} rows, got {k}")
    names = _data.target_names(df)
    if names != _data.PART_TARGETS or any("total" in b.targets for b in bases):
        names = _data.TOTAL_TARGET
    ys = _data.targets(df, names)
    own, X_own, own_alpha = None, None, None
    if method in ("auto", "alone") and k >= MIN_ROWS:
        prep = prepare(df, model_spec(DEFAULT_MODEL).feature_set, "total" if names == _data.TOTAL_TARGET else "auto")
        own = fit_prepared(prep, None, DEFAULT_MODEL)
        X_own, own_alpha = _own_alphas(own, prep.X)
    devices = [str(b.metadata.get("data", {}).get("device")) for b in bases]
    candidates = [c for c in _candidates(method, len(bases), devices)
                  if c.kind != "alone" or X_own is not None]
    rows = _Rows([_base_parts(b, df) for b in bases],
                 _features.from_frame(bases[0].feature_set, df, bases[0].context), X_own, ys, names, own_alpha)
    everything = np.arange(k)
    chosen, fitted, loo = rows.choose(candidates, everything)
    conformal, cv = None, None
    if intervals and k - 1 >= fewest:
        predicted = rows.jackknife(candidates)
        conformal = Conformal.from_residuals(ys["total"], predicted, "jackknife (leave-one-out of the adaptation)")
        cv = latency_metrics(ys["total"], predicted)
    corrections = {} if chosen.kind == "alone" else {t: rows.correction(chosen, s) for t, s in fitted.items()}
    log.info("adapted %s to %s from %d rows: %s (leave-one-out RMSPE %s)", ", ".join(devices),
             settings.get("device"), k, chosen.name, {n: round(v, 2) for n, v in loo.items()})
    metadata = {
        "model": f"{bases[0].model}+{chosen.name}" if chosen.kind != "alone" else f"{DEFAULT_MODEL} (k rows alone)",
        "base_device": devices[0] if len(devices) == 1 else devices,
        "data": {**settings, "rows": k},
        "loo_rmspe": loo,
        "cross_validation": cv,
        "adapted_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": library_versions(),
    }
    return TransferPredictor(bases, chosen.name, corrections, own if chosen.kind == "alone" else None,
                             metadata, conformal)


def _own_alphas(own: LatencyPredictor, X: np.ndarray) -> tuple[np.ndarray | None, dict[str, float] | None]:
    """The k-rows-alone model's features and ridge penalties, when it is the ridge whose
    leave-one-out error `_weighted_ridge` computes exactly; else no "alone" candidate."""
    ests = own.estimators
    if not all(isinstance(e, CostRidgeRegressor) and e.relative for e in ests.values()):
        log.warning("the default model %s is not a relative ridge: no k-rows-alone candidate", DEFAULT_MODEL)
        return None, None
    return X, {t: float(e.alpha_) for t, e in ests.items()}


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
    chosen: dict[str, int] = {}
    coverage = []
    for _ in range(repeats):
        order = rng.permutation(len(df))
        few, rest = order[:k], order[k:]
        measured = prep.ys["total"][rest]
        adapted = adapt(base, df.iloc[few], method)
        chosen[adapted.method] = chosen.get(adapted.method, 0) + 1
        predicted = adapted.predict_frame(df.iloc[rest])["predicted_ms"].to_numpy()
        runs["adapted"].append(latency_metrics(measured, predicted))
        if adapted.intervals is not None and adapted.intervals.rows >= adapted.intervals.min_rows(confidence):
            coverage.append(adapted.intervals.coverage(measured, predicted, confidence))
        scratch = fit_prepared(prep, few, scratch_model, seed=seed)
        runs["scratch"].append(latency_metrics(measured, scratch.predict_parts(prep.X[rest])["total"]))
    summary: dict[str, Any] = {"k": k, "repeats": repeats, "held_out": len(df) - k,
                               "scratch_model": scratch_model, "methods_chosen": chosen}
    for name, metrics in runs.items():
        summary[name] = {key: _mean([m[key] for m in metrics]) for key in metrics[0] if key != "n"}
    summary["adapted"][f"coverage_{round(100 * confidence)}"] = _mean(coverage)
    return summary


def _mean(values: list) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None
