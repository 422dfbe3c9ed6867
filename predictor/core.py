"""Named latency models, training, and `LatencyPredictor`, the object a search queries.

A predictor is one feature set plus one fitted estimator per target: the encoder and
the decoder when the data timed them apart (their predictions are summed), else the
total latency.
"""
from __future__ import annotations

import datetime as _dt
import logging
import platform
from dataclasses import dataclass, field
from importlib import metadata as _metadata
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from profiler.errors import PredictorError
from profiler.space import HAT_FEATURES, ArchConfig, DesignSpace

from predictor import data as _data
from predictor import features as _features
from predictor.conformal import COVERAGE_KEY, INTERVAL_CONFIDENCE, Conformal
from predictor.metrics import latency_metrics, split_indices
from predictor.models import (ESTIMATORS, BoostedTreesRegressor, CostRidgeRegressor, RidgeTreesRegressor,
                              TorchMLPRegressor)

log = logging.getLogger(__name__)

#: Fewest rows a predictor is trained on; the held-out metrics need at least 20.
MIN_ROWS = 5
MIN_ROWS_FOR_METRICS = 20
#: Input columns kept from the training rows, for the self-check of saved predictors.
CHECK_ROWS = 8


@dataclass(frozen=True)
class ModelSpec:
    """A named model: its feature set ("hat", or "richest" available), its estimator, and
    its targets ("auto": encoder and decoder apart when timed apart; "total": their sum)."""

    feature_set: str
    make: Callable[[], BaseEstimator]
    description: str
    targets: str = "auto"


MODELS: dict[str, ModelSpec] = {
    "hat-mlp": ModelSpec("hat", TorchMLPRegressor,
                         "HAT's predictor: 10 normalised features, 4x400 ReLU MLP, Adam 1e-5, "
                         "batch 128, 5,000 steps, on the total latency (as HAT fits it)",
                         targets="total"),
    "ridge": ModelSpec("hat-cost", CostRidgeRegressor,
                       "ridge on HAT's features and the layer products MACs and parameters are "
                       "linear in, least relative squares"),
    "gbt": ModelSpec("richest", BoostedTreesRegressor,
                     "gradient-boosted trees (300, depth 3), least relative squares"),
    "ridge-gbt": ModelSpec("richest", RidgeTreesRegressor,
                           "ridge, times boosted trees (100, depth 3) on its relative residual"),
    "mlp": ModelSpec("richest", lambda: TorchMLPRegressor(
        hidden_layers=(64, 64), learning_rate=3e-3, max_steps=2000, standardize=True,
        relative=True, weight_decay=1e-4),
                     "2x64 ReLU MLP on standardised cost features, relative error, Adam 3e-3 "
                     "with weight decay 1e-4, 2,000 steps"),
}
#: Chosen by measurement (benchmarks/bench_predictor.py, to be rerun on measured data): the
#: most accurate here from ~80 rows up, on full and on HAT-format rows, and by far the
#: fastest to fit and to query.
DEFAULT_MODEL = "ridge"


def model_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise PredictorError(f"unknown model {name!r} (known: {', '.join(MODELS)})") from None


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries that fit and evaluate predictors."""
    versions = {"python": platform.python_version()}
    for dist in ("hatprof", "numpy", "scikit-learn", "torch", "pandas", "scipy"):
        try:
            versions[dist] = _metadata.version(dist)
        except _metadata.PackageNotFoundError:
            versions[dist] = "absent"
    return versions


def jsonable(value: Any) -> Any:
    """`value` with tuples as lists and numpy scalars and arrays as Python values."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def prediction_frame(parts: dict[str, np.ndarray], index: pd.Index) -> pd.DataFrame:
    """`predicted_ms` (the total), then `predicted_<part>_ms` for each other target."""
    columns = {f"predicted_{k}_ms": v for k, v in parts.items() if k != "total"}
    return pd.DataFrame({"predicted_ms": parts["total"], **columns}, index=index)


@dataclass
class LatencyPredictor:
    """Predicts the latency (ms) of architectures on the one device it was trained for."""

    model: str
    feature_set: str
    context: _features.FeatureContext
    estimators: dict[str, BaseEstimator]
    metadata: dict[str, Any] = field(default_factory=dict)
    check_rows: pd.DataFrame | None = None
    intervals: Conformal | None = None

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(self.estimators)

    @property
    def space(self) -> DesignSpace | None:
        return self.context.space

    def predict_archs(self, archs: Sequence[ArchConfig]) -> np.ndarray:
        """Total latency (ms) of each architecture; one outside the space is a SpaceError."""
        return self.predict_parts(_features.from_archs(self.feature_set, archs, self.context))["total"]

    def interval_inputs(self, df: pd.DataFrame | None = None,
                        archs: Sequence[ArchConfig] | None = None) -> dict[str, np.ndarray]:
        """Nothing: split-conformal intervals need only the prediction (`Conformal.bounds`)."""
        return {}

    def predict_with_inputs(self, df: pd.DataFrame | None = None, archs: Sequence[ArchConfig] | None = None
                            ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Total latency (ms) of rows or architectures, and `interval_inputs` (nothing)."""
        if df is None:
            return self.predict_archs(archs), {}
        return self.predict_frame(df)["predicted_ms"].to_numpy(), {}

    def predict_frame(self, df: pd.DataFrame) -> pd.DataFrame:
        """Predictions for latency rows: `predicted_ms`, and per part when the model has parts."""
        _data.check_inputs(df)
        return prediction_frame(self.predict_parts(_features.from_frame(self.feature_set, df, self.context)),
                                df.index)

    def predict_parts(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """Predictions by target for a feature matrix, with "total" always present."""
        if not len(X):
            return {name: np.empty(0) for name in (*self.estimators, "total")}
        out = {name: est.predict(X) for name, est in self.estimators.items()}
        if "total" not in out:
            out["total"] = sum(out[name] for name in self.estimators)
        return out

    def to_payload(self, prefix: str = "") -> tuple[dict, dict[str, np.ndarray]]:
        """A JSON-ready description and the named arrays of the fitted state."""
        arrays: dict[str, np.ndarray] = {}
        estimators = {}
        for target, est in self.estimators.items():
            estimators[target] = {"class": type(est).__name__, "params": jsonable(est.get_params())}
            arrays.update({f"{prefix}{target}/{k}": v for k, v in est.portable_state().items()})
        ctx = self.context
        rows = self.check_rows
        manifest = {
            "kind": "latency",
            "model": self.model,
            "feature_set": self.feature_set,
            "features_version": _features.FEATURES_VERSION,
            "context": {"space": ctx.space.to_dict() if ctx.space else None,
                        "seq_len": ctx.seq_len, "beam": ctx.beam},
            "estimators": estimators,
            "metadata": jsonable(self.metadata),
            "check_rows": None if rows is None else {"columns": list(rows.columns),
                                                     "data": jsonable(rows.to_numpy().tolist())},
        }
        return manifest, arrays

    @classmethod
    def from_payload(cls, manifest: dict, arrays: dict[str, np.ndarray],
                     prefix: str = "") -> "LatencyPredictor":
        """Rebuild a predictor from `to_payload`'s output."""
        if manifest.get("features_version") != _features.FEATURES_VERSION:
            raise PredictorError(
                f"the predictor's features are version {manifest.get('features_version')}, this "
                f"hatprof computes version {_features.FEATURES_VERSION}; retrain it")
        ctx_data = manifest["context"]
        space = DesignSpace.from_dict(ctx_data["space"]) if ctx_data["space"] else None
        ctx = _features.FeatureContext(space, int(ctx_data["seq_len"]), int(ctx_data["beam"]))
        estimators = {}
        for target, spec in manifest["estimators"].items():
            est_cls = ESTIMATORS.get(spec["class"])
            if est_cls is None:
                raise PredictorError(f"the predictor uses estimator {spec['class']!r}, unknown to "
                                     f"this hatprof (known: {', '.join(ESTIMATORS)})")
            head = f"{prefix}{target}/"
            state = {k[len(head):]: v for k, v in arrays.items() if k.startswith(head)}
            try:
                estimators[target] = est_cls.from_portable(spec["params"], state)
            except (KeyError, TypeError) as exc:
                raise PredictorError(f"estimator {target!r} of the predictor is incomplete: "
                                     f"{exc}") from None
        rows = manifest.get("check_rows")
        check = None if rows is None else pd.DataFrame(rows["data"], columns=rows["columns"])
        return cls(manifest["model"], manifest["feature_set"], ctx, estimators,
                   manifest.get("metadata", {}), check)


@dataclass(frozen=True)
class Prepared:
    """Latency rows turned into a feature matrix and targets, ready for fitting."""

    frame: pd.DataFrame
    feature_set: str
    context: _features.FeatureContext
    settings: dict[str, Any]
    X: np.ndarray
    ys: dict[str, np.ndarray]
    targets: tuple[str, ...]


def prepare(df: pd.DataFrame, feature_set: str, targets: str = "auto") -> Prepared:
    """Check the rows and extract features ("richest": the best the data allows).

    `targets`: "auto" fits the encoder and decoder apart when the data has both, "total"
    fits their sum.
    """
    if targets not in ("auto", "total"):
        raise PredictorError(f"targets must be 'auto' or 'total', got {targets!r}")
    _data.check_inputs(df)
    settings = _data.data_settings(df)
    ctx = _features.context_from_settings(settings)
    fset = _features.richest_set(df, ctx) if feature_set == "richest" else feature_set
    names = _data.target_names(df) if targets == "auto" else _data.TOTAL_TARGET
    ys = _data.targets(df, names)
    X = _features.from_frame(fset, df, ctx)
    return Prepared(df, fset, ctx, settings, X, ys, names)


def _check_rows(n: int) -> None:
    if n < MIN_ROWS:
        raise PredictorError(f"need at least {MIN_ROWS} rows to train a predictor, got {n}")


def fit_prepared(prep: Prepared, rows: np.ndarray | None, model: str,
                 params: dict[str, Any] | None = None, seed: int = 0) -> LatencyPredictor:
    """Fit `model` on `rows` (all when None) of prepared data; no metrics."""
    spec = model_spec(model)
    rows = np.arange(len(prep.X)) if rows is None else np.asarray(rows)
    _check_rows(len(rows))
    estimators = {}
    for target in prep.targets:
        est = spec.make()
        if "random_state" in est.get_params():
            est.set_params(random_state=seed)
        est.set_params(**(params or {}))
        estimators[target] = est.fit(prep.X[rows], prep.ys[target][rows])
    frame = prep.frame.iloc[rows]
    inputs = [c for c in (_data.ARCH_COLUMN, *HAT_FEATURES) if c in frame.columns]
    metadata = {
        "model": model,
        "params": dict(params or {}),
        "seed": seed,
        "feature_names": _features.feature_names(prep.feature_set, prep.context),
        "data": {**prep.settings, "rows": int(len(rows)), "has_arch": _data.has_arch(frame),
                 "sha256": _data.data_hash(prep.X[rows], {t: prep.ys[t][rows] for t in prep.ys})},
        "metrics": None,
        "trained_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": library_versions(),
    }
    return LatencyPredictor(model, prep.feature_set, prep.context, estimators, metadata,
                            frame[inputs].head(CHECK_ROWS).reset_index(drop=True))


def train_predictor(df: pd.DataFrame, model: str = DEFAULT_MODEL,
                    params: dict[str, Any] | None = None, seed: int = 0,
                    targets: str | None = None) -> LatencyPredictor:
    """Fit `model` on all rows; with 20 rows or more, first measure it on HAT's split.

    The held-out metrics (test part of the seeded 80/10/10 split, fitted on the 80%)
    go into `metadata["metrics"]`, the validation part's relative residuals into the
    prediction intervals (split conformal, `predictor.conformal`), with their coverage of
    the test part; the returned predictor is then refitted on every row (so its intervals
    are, if anything, slightly wide). `targets` overrides the model's own ("auto" or "total").
    """
    spec = model_spec(model)
    prep = prepare(df, spec.feature_set, targets or spec.targets)
    _check_rows(len(df))  # before any warning about too few rows for metrics
    metrics, intervals = None, None
    if len(df) >= MIN_ROWS_FOR_METRICS:
        train, validation, test = split_indices(len(df), seed)
        held = fit_prepared(prep, train, model, params, seed)
        predicted = held.predict_parts(prep.X[test])["total"]
        intervals = Conformal.from_residuals(prep.ys["total"][validation],
                                             held.predict_parts(prep.X[validation])["total"],
                                             "split conformal (validation part of HAT's split)")
        metrics = {"holdout": latency_metrics(prep.ys["total"][test], predicted),
                   "split": {"seed": seed, "train": int(len(train)), "test": int(len(test))}}
        if intervals.rows >= intervals.min_rows(INTERVAL_CONFIDENCE):
            metrics["holdout"][COVERAGE_KEY] = intervals.coverage(prep.ys["total"][test], predicted,
                                                                  INTERVAL_CONFIDENCE)
        log.info("%s on the held-out %d rows: MAPE %.2f%%, within 10%% %.3f", model, len(test),
                 metrics["holdout"]["mape"], metrics["holdout"]["within_10"])
    else:
        log.warning("only %d rows: the predictor is saved without held-out metrics", len(df))
    predictor = fit_prepared(prep, None, model, params, seed)
    predictor.metadata["metrics"] = metrics
    predictor.intervals = intervals
    return predictor
