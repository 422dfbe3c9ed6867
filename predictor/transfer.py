"""Predictors for new hardware from a few measured rows plus another device's predictor.

Latency on a new device is, to a first approximation, the base device's latency times a
factor, part by part (an encoder is slower by one factor, a decoder, dominated by many
small operators, by another). The adapted predictor keeps the base predictor and fits,
per target, on the k rows (least squared relative error):

- "ratio": `new = a * base`;
- "linear": `new = a * base + b`;
- "residual": `new = a * base * (1 + w . x + c)`, the ratio model times a ridge
  correction on the base's own features, its strength chosen by leave-one-out; it goes
  from the pure ratio (strong penalty) to a model of its own where k rows allow it.

With `method="auto"` the one with the lowest leave-one-out error on the k rows is kept.
"""
from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from profiler.errors import PredictorError
from profiler.space import ArchConfig

from predictor import data as _data
from predictor import features as _features
from predictor.core import (DEFAULT_MODEL, LatencyPredictor, fit_prepared, jsonable, library_versions,
                            model_spec, prediction_frame, prepare)
from predictor.metrics import latency_metrics
from predictor.models import CostRidgeRegressor

log = logging.getLogger(__name__)

METHODS = ("ratio", "linear", "residual")
#: Ridge penalties of the residual correction; the largest leave it close to zero.
_RESIDUAL_ALPHAS = tuple(float(a) for a in np.logspace(-3, 6, 19))


@dataclass(frozen=True)
class Correction:
    """`(scale * base + offset) * (1 + coef . x + intercept)`; `coef` empty means none."""

    scale: float
    offset: float = 0.0
    coef: tuple[float, ...] = ()
    intercept: float = 0.0

    def apply(self, base: np.ndarray, X: np.ndarray) -> np.ndarray:
        out = self.scale * base + self.offset
        if self.coef:
            out = out * (1.0 + X @ np.asarray(self.coef) + self.intercept)
        return out


@dataclass
class TransferPredictor:
    """A base device's predictor with a per-target correction for a new device."""

    base: LatencyPredictor
    method: str
    corrections: dict[str, Correction]
    metadata: dict[str, Any] = field(default_factory=dict)

    def predict_archs(self, archs: Sequence[ArchConfig]) -> np.ndarray:
        """Total latency (ms) on the new device of each architecture."""
        return self._predict(_features.from_archs(self.base.feature_set, archs, self.base.context))["total"]

    def predict_frame(self, df: pd.DataFrame) -> pd.DataFrame:
        """Predictions for latency rows, with the same columns as `LatencyPredictor`'s."""
        _data.check_inputs(df)
        return prediction_frame(self._predict(_features.from_frame(self.base.feature_set, df,
                                                                    self.base.context)), df.index)

    def _predict(self, X: np.ndarray) -> dict[str, np.ndarray]:
        base = self.base.predict_parts(X)
        out = {t: c.apply(base[t], X) for t, c in self.corrections.items()}
        if "total" not in out:
            out["total"] = sum(out.values())
        return out

    def to_payload(self) -> tuple[dict, dict[str, np.ndarray]]:
        base, arrays = self.base.to_payload(prefix="base/")
        manifest = {"kind": "transfer", "method": self.method,
                    "corrections": {t: jsonable(asdict(c)) for t, c in self.corrections.items()},
                    "metadata": jsonable(self.metadata), "base": base}
        return manifest, arrays

    @classmethod
    def from_payload(cls, manifest: dict, arrays: dict[str, np.ndarray]) -> "TransferPredictor":
        base = LatencyPredictor.from_payload(manifest["base"], arrays, prefix="base/")
        corrections = {t: Correction(float(c["scale"]), float(c["offset"]), tuple(map(float, c["coef"])),
                                     float(c["intercept"]))
                       for t, c in manifest["corrections"].items()}
        return cls(base, manifest["method"], corrections, manifest.get("metadata", {}))


def _fit(method: str, base: np.ndarray, X: np.ndarray, y: np.ndarray) -> Correction:
    """The correction of `method` fitted on rows with base predictions `base`, targets `y`."""
    r = base / y
    if method == "linear":
        (a, b), *_ = np.linalg.lstsq(np.column_stack([r, 1.0 / y]), np.ones_like(y), rcond=None)
        return Correction(float(a), float(b))
    ratio = Correction(float(np.sum(r) / np.sum(r * r)))
    if method == "ratio":
        return ratio
    ridge = CostRidgeRegressor(alphas=_RESIDUAL_ALPHAS, relative=False)
    ridge.fit(X, y / ratio.apply(base, X) - 1.0)
    return Correction(ratio.scale, 0.0, tuple(ridge.coef_.tolist()), ridge.intercept_)


def _loo_rmspe(method: str, base: np.ndarray, X: np.ndarray, y: np.ndarray) -> float:
    """Leave-one-out RMSPE (%) of a correction method on the k rows."""
    errors = []
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        c = _fit(method, base[keep], X[keep], y[keep])
        errors.append(c.apply(base[i:i + 1], X[i:i + 1])[0] / y[i] - 1.0)
    return float(100 * np.sqrt(np.mean(np.square(errors))))


def adapt(base: LatencyPredictor, df: pd.DataFrame, method: str = "auto") -> TransferPredictor:
    """Adapt `base` to the device the rows of `df` were measured on."""
    if method not in ("auto", *METHODS):
        raise PredictorError(f"unknown transfer method {method!r} (known: auto, {', '.join(METHODS)})")
    if not isinstance(base, LatencyPredictor):
        raise PredictorError("the base of an adaptation must be a trained predictor, "
                             "not an adapted one")
    _data.check_inputs(df, "the new device's data")
    settings = _data.data_settings(df)
    _check_workload(base, settings)
    names = _data.target_names(df)
    if names != _data.PART_TARGETS or "total" in base.targets:
        names = _data.TOTAL_TARGET
    ys = _data.targets(df, names)
    X = _features.from_frame(base.feature_set, df, base.context)
    base_parts = base.predict_parts(X)
    k = len(df)
    if k < 3 and method in ("linear", "residual"):
        raise PredictorError(f"the {method} correction needs at least 3 rows, got {k}")
    methods = METHODS if method == "auto" and k >= 3 else ("ratio",) if method == "auto" else (method,)
    loo = ({m: float(np.mean([_loo_rmspe(m, base_parts[t], X, ys[t]) for t in names])) for m in methods}
           if k >= 3 else {})
    chosen = min(methods, key=lambda m: loo.get(m, 0.0))
    corrections = {t: _fit(chosen, base_parts[t], X, ys[t]) for t in names}
    base_device = base.metadata.get("data", {}).get("device")
    log.info("adapted the %s predictor to %s from %d rows: %s correction (leave-one-out RMSPE %s)",
             base_device, settings.get("device"), k, chosen, loo)
    metadata = {
        "model": f"{base.model}+{chosen}",
        "base_device": base_device,
        "data": {**settings, "rows": k},
        "loo_rmspe": loo,
        "adapted_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": library_versions(),
    }
    return TransferPredictor(base, chosen, corrections, metadata)


def _check_workload(base: LatencyPredictor, settings: dict[str, Any]) -> None:
    """Refuse rows timed on another workload or space than the base predictor's."""
    ctx = base.context
    for key, expected in (("seq_len", ctx.seq_len), ("beam", ctx.beam),
                          ("space", ctx.space.name if ctx.space else None)):
        value = settings.get(key)
        if value is not None and expected is not None and str(value) != str(expected):
            raise PredictorError(f"the new device's rows have {key}={value}, the base predictor "
                                 f"was trained with {key}={expected}")


def evaluate_transfer(base: LatencyPredictor, df: pd.DataFrame, k: int = 20, repeats: int = 10,
                      seed: int = 0, scratch_model: str = DEFAULT_MODEL,
                      method: str = "auto") -> dict[str, Any]:
    """Adapted predictor vs `scratch_model` fitted on the same k rows alone, both scored
    on the rows left out; metrics averaged over `repeats` random draws of the k rows."""
    if not 3 <= k < len(df) - 1:
        raise PredictorError(f"k must be between 3 and rows - 2 ({len(df) - 2}), got {k}")
    spec = model_spec(scratch_model)
    prep = prepare(df, spec.feature_set, spec.targets)
    rng = np.random.default_rng(seed)
    runs: dict[str, list[dict]] = {"adapted": [], "scratch": []}
    chosen: dict[str, int] = {}
    for _ in range(repeats):
        order = rng.permutation(len(df))
        few, rest = order[:k], order[k:]
        measured = prep.ys["total"][rest]
        adapted = adapt(base, df.iloc[few], method)
        chosen[adapted.method] = chosen.get(adapted.method, 0) + 1
        runs["adapted"].append(latency_metrics(
            measured, adapted.predict_frame(df.iloc[rest])["predicted_ms"].to_numpy()))
        scratch = fit_prepared(prep, few, scratch_model, seed=seed)
        runs["scratch"].append(latency_metrics(measured, scratch.predict_parts(prep.X[rest])["total"]))
    summary: dict[str, Any] = {"k": k, "repeats": repeats, "held_out": len(df) - k,
                               "scratch_model": scratch_model, "methods_chosen": chosen}
    for name, metrics in runs.items():
        summary[name] = {key: _mean([m[key] for m in metrics]) for key in metrics[0] if key != "n"}
    return summary


def _mean(values: list) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None
