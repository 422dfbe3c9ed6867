"""Metrics on known numbers, HAT's split, k-fold, comparison, learning curve and plot."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from profiler.errors import PredictorError
from predictor.evaluation import (compare, cross_validate, learning_curve, learning_sizes, order_drift,
                                  plot_evaluation, run_comparison)
from predictor.metrics import METRIC_KEYS, kfold_indices, latency_metrics, split_indices
from predictor.synthetic import synthetic_frame

_FAST = {"gbt": {"n_estimators": 30}, "ridge-gbt": {"n_estimators": 30},
         "mlp": {"max_steps": 50}, "hat-mlp": {"max_steps": 20, "hidden_layers": (16,)}}


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return synthetic_frame(160, seed=4)


def test_metrics_on_hand_computed_values():
    measured = np.array([10.0, 20.0, 40.0, 50.0])
    predicted = np.array([11.0, 19.0, 40.0, 60.0])  # errors +10%, -5%, 0%, +20%
    m = latency_metrics(measured, predicted)
    assert m["n"] == 4
    assert m["rmse_ms"] == pytest.approx(math.sqrt((1 + 1 + 0 + 100) / 4))
    assert m["mape"] == pytest.approx(100 * (0.10 + 0.05 + 0 + 0.20) / 4)
    assert m["rmspe"] == pytest.approx(100 * math.sqrt((0.01 + 0.0025 + 0 + 0.04) / 4))
    assert m["within_5"] == 0.5 and m["within_10"] == 0.75
    assert m["kendall_tau"] == pytest.approx(1.0) and m["spearman_rho"] == pytest.approx(1.0)
    assert set(m) == set(METRIC_KEYS)


def test_rank_metrics_see_order_errors():
    m = latency_metrics(np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0]))
    assert m["kendall_tau"] == pytest.approx(-1.0) and m["spearman_rho"] == pytest.approx(-1.0)
    assert latency_metrics(np.array([1.0]), np.array([1.0]))["kendall_tau"] is None
    with pytest.raises(PredictorError, match="positive"):
        latency_metrics(np.array([0.0, 1.0]), np.array([1.0, 1.0]))


def test_split_is_hats_shuffled_80_10_10():
    train, valid, test = split_indices(100, seed=0)
    assert (len(train), len(valid), len(test)) == (80, 10, 10)
    assert sorted(np.concatenate([train, valid, test])) == list(range(100))
    again = split_indices(100, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip((train, valid, test), again))
    assert not np.array_equal(split_indices(100, seed=1)[2], test)
    assert not np.array_equal(train, np.arange(80))


def test_kfold_tests_each_row_once():
    folds = kfold_indices(23, k=5, seed=0)
    tested = np.concatenate([test for _, test in folds])
    assert sorted(tested) == list(range(23))
    assert all(not set(train) & set(test) for train, test in folds)


def test_compare_scores_every_model_on_the_same_rows(frame):
    table = compare(frame, ["ridge", "gbt", "hat-mlp"], params=_FAST)
    assert list(table.index) == ["ridge", "gbt", "hat-mlp"]
    assert set(METRIC_KEYS) <= set(table.columns)
    assert (table["n"] == 16).all()
    assert table["features"].to_dict() == {"ridge": "hat-cost", "gbt": "arch", "hat-mlp": "hat"}
    assert table["targets"].to_dict() == {"ridge": "encoder+decoder", "gbt": "encoder+decoder",
                                          "hat-mlp": "total"}
    # An untrained-ish HAT MLP (20 steps) must lose to ridge on cost features.
    assert table.loc["ridge", "mape"] < table.loc["hat-mlp", "mape"]


def test_cross_validation_has_one_row_per_fold_and_a_mean(frame):
    table = cross_validate(frame, "ridge", k=4)
    assert list(table.index) == [0, 1, 2, 3, "mean"]
    assert table.loc["mean", "mape"] == pytest.approx(table.loc[[0, 1, 2, 3], "mape"].mean())
    assert table["n"].iloc[:4].sum() == len(frame)


def test_learning_curve_improves_with_rows(frame):
    assert learning_sizes(128) == [20, 40, 80, 128]
    curve = learning_curve(frame, ["ridge"], sizes=[8, 128])
    assert curve["n_train"].tolist() == [8, 128]
    assert curve["mape"].iloc[1] < curve["mape"].iloc[0]
    with pytest.raises(PredictorError, match="sizes must lie"):
        learning_curve(frame, ["ridge"], sizes=[500])


def test_plot_writes_a_png(frame, tmp_path):
    comparison = run_comparison(frame, ["ridge", "gbt"], params=_FAST)
    curve = learning_curve(frame, ["ridge"], sizes=[20, 40])
    path = tmp_path / "eval.png"
    plot_evaluation(comparison, curve, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_order_drift_sees_a_device_slowing_down_and_nothing_without_it():
    df = synthetic_frame(300, 3)
    df["measured_at"] = pd.date_range("2026-01-01", periods=len(df), freq="s").strftime("%Y-%m-%dT%H:%M:%S")
    steady = order_drift(df)
    slowing = df.copy()
    factor = 1 + 0.2 * np.arange(len(df)) / len(df)  # the last rows 20% slow
    for column in ("latency_mean_encoder", "latency_mean_decoder", "latency_ms"):
        slowing[column] = df[column] * factor
    drifted = order_drift(slowing)
    assert abs(steady["spearman_order_vs_residual"]) < 0.2
    assert drifted["spearman_order_vs_residual"] < -0.6
    assert drifted["mean_residual_first_fifth"] > 0.05 > -0.05 > drifted["mean_residual_last_fifth"]
    assert order_drift(df.drop(columns="measured_at")) is None
