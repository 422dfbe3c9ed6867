"""How good a latency model is on given data: split comparison, k-fold CV, learning curve,
and whether the data drifted while it was measured.

Every figure is measured on rows the model did not see, in the metrics of
`predictor.metrics` (RMSE in ms, MAPE and RMSPE in %, shares within +-5%/+-10%, Kendall's
tau, Spearman's rho) on the total latency.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from profiler.errors import PredictorError

from predictor.core import (DEFAULT_MODEL, MIN_ROWS, MODELS, Prepared, fit_prepared, model_spec, prepare,
                            train_predictor)
from predictor.metrics import kfold_indices, latency_metrics, split_indices

log = logging.getLogger(__name__)

Params = dict[str, dict[str, Any]]


@dataclass(frozen=True)
class Comparison:
    """Models fitted on the train part of one split and scored on its test part."""

    table: pd.DataFrame
    measured_ms: np.ndarray
    predicted_ms: dict[str, np.ndarray]


class _Features:
    """Prepared data per model's feature set and targets, computed once per frame."""

    def __init__(self, df: pd.DataFrame, targets: str | None = None):
        self.df, self.targets, self.cache = df, targets, {}

    def __call__(self, model: str) -> Prepared:
        spec = model_spec(model)
        key = (spec.feature_set, self.targets or spec.targets)
        if key not in self.cache:
            self.cache[key] = prepare(self.df, *key)
        return self.cache[key]


def run_comparison(df: pd.DataFrame, models: Sequence[str] | None = None, seed: int = 0,
                   params: Params | None = None, targets: str | None = None,
                   on_model: Callable[[str, int, int], None] | None = None) -> Comparison:
    """Fit each model on the 80% of HAT's seeded split; score all on the same 10% test rows.

    `targets` ("auto" or "total") overrides each model's own; `on_model(name, index, count)`
    is told before each model is fitted (a forest or boosting takes a while)."""
    models = list(models or MODELS)
    params = params or {}
    prepared = _Features(df, targets)
    train, _, test = split_indices(len(df), seed)
    rows, predictions = [], {}
    measured = None
    for index, name in enumerate(models):
        if on_model is not None:
            on_model(name, index, len(models))
        prep = prepared(name)
        measured = prep.ys["total"][test]
        start = time.perf_counter()
        pred = fit_prepared(prep, train, name, params.get(name), seed)
        fit_s = time.perf_counter() - start
        predictions[name] = pred.predict_parts(prep.X[test])["total"]
        rows.append({"model": name, "features": prep.feature_set, "targets": "+".join(pred.targets),
                     **latency_metrics(measured, predictions[name]), "fit_s": round(fit_s, 3)})
        log.info("compared %s: fitted in %.1f s", name, fit_s)
    return Comparison(pd.DataFrame(rows).set_index("model"), measured, predictions)


def compare(df: pd.DataFrame, models: Sequence[str] | None = None, seed: int = 0,
            params: Params | None = None) -> pd.DataFrame:
    """One row of held-out metrics per model, all on the same split."""
    return run_comparison(df, models, seed, params).table


def cross_validate(df: pd.DataFrame, model: str, k: int = 5, seed: int = 0,
                   params: dict[str, Any] | None = None) -> pd.DataFrame:
    """Metrics of each of k shuffled folds, plus a "mean" row."""
    spec = model_spec(model)
    prep = prepare(df, spec.feature_set, spec.targets)
    rows = []
    for fold, (train, test) in enumerate(kfold_indices(len(df), k, seed)):
        pred = fit_prepared(prep, train, model, params, seed)
        rows.append({"fold": fold, **latency_metrics(prep.ys["total"][test],
                                                     pred.predict_parts(prep.X[test])["total"])})
    table = pd.DataFrame(rows).set_index("fold")
    table.loc["mean"] = table.mean(numeric_only=True)
    return table


def learning_sizes(n_train: int) -> list[int]:
    """Training-set sizes of a learning curve: doubling from 20 up to all `n_train` rows."""
    if n_train < MIN_ROWS:
        raise PredictorError(f"a learning curve needs at least {MIN_ROWS} training rows")
    sizes, size = [], 20
    while size < n_train:
        sizes.append(size)
        size *= 2
    return sizes + [n_train]


def learning_curve(df: pd.DataFrame, models: Sequence[str] | None = None,
                   sizes: Sequence[int] | None = None, seed: int = 0,
                   params: Params | None = None,
                   on_model: Callable[[str, int, int], None] | None = None) -> pd.DataFrame:
    """Test metrics against training rows: each model is fitted on the first m rows of the
    shuffled 80% train part (nested subsets) and scored on the fixed 10% test part;
    `on_model(name, index, count)` is told before each model's fits."""
    models = list(models or MODELS)
    params = params or {}
    prepared = _Features(df)
    train, _, test = split_indices(len(df), seed)
    sizes = list(sizes or learning_sizes(len(train)))
    if max(sizes) > len(train) or min(sizes) < MIN_ROWS:
        raise PredictorError(f"learning-curve sizes must lie in [{MIN_ROWS}, {len(train)}], "
                             f"got {sizes}")
    rows = []
    for index, name in enumerate(models):
        if on_model is not None:
            on_model(name, index, len(models))
        prep = prepared(name)
        for size in sizes:
            pred = fit_prepared(prep, train[:size], name, params.get(name), seed)
            rows.append({"model": name, "n_train": size, **latency_metrics(
                prep.ys["total"][test], pred.predict_parts(prep.X[test])["total"])})
    return pd.DataFrame(rows)


def plot_evaluation(comparison: Comparison, curve: pd.DataFrame | None, path: str) -> None:
    """PNG: predicted against measured (test rows) with the +-10% band, and the learning curve."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12 if curve is not None else 6, 5.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2 if curve is not None else 1, squeeze=False)[0]
    ax = axes[0]
    y = comparison.measured_ms
    line = np.linspace(0.9 * y.min(), 1.1 * y.max(), 50)
    ax.fill_between(line, 0.9 * line, 1.1 * line, color="0.88", label="±10%")
    ax.plot(line, line, color="0.4", lw=1)
    for name, pred in comparison.predicted_ms.items():
        within = comparison.table.loc[name, "within_10"]
        ax.scatter(y, pred, s=12, alpha=0.7, label=f"{name} ({100 * within:.0f}% within ±10%)")
    ax.set(xlabel="measured latency (ms)", ylabel="predicted latency (ms)",
           title=f"held-out rows (n={len(y)})")
    ax.legend(fontsize=8)
    if curve is not None:
        ax = axes[1]
        for name, rows in curve.groupby("model", sort=False):
            ax.plot(rows["n_train"], 100 * rows["within_10"], marker="o", label=name)
        sizes = sorted(curve["n_train"].unique())
        ax.set(xscale="log", xlabel="training rows", ylabel="% of test rows within ±10%",
               title="learning curve", ylim=(0, 102))
        ax.set_xticks(sizes, labels=[str(n) for n in sizes])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    try:
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise PredictorError(f"cannot write plot {path}: {exc.strerror or exc}") from None


def order_drift(df: pd.DataFrame, model: str = DEFAULT_MODEL, seed: int = 0) -> dict[str, float] | None:
    """Did the device drift during the collection? Spearman's rho between the measurement
    order (`measured_at`) and the relative residual of `model` fitted on every row, and the
    mean residual of the first and last fifth of the rows: all near 0 when nothing drifted,
    negative rho when later rows were measured slower. None without `measured_at`."""
    if "measured_at" not in df.columns:
        return None
    order = pd.to_datetime(df["measured_at"]).rank(method="first").to_numpy()
    predicted = train_predictor(df, model, seed=seed).predict_frame(df)["predicted_ms"].to_numpy()
    residual = predicted / df["latency_ms"].to_numpy(dtype=float) - 1
    by_order = residual[np.argsort(order)]
    fifth = max(1, len(df) // 5)
    return {"spearman_order_vs_residual": float(stats.spearmanr(order, residual).statistic),
            "mean_residual_first_fifth": float(by_order[:fifth].mean()),
            "mean_residual_last_fifth": float(by_order[-fifth:].mean())}
