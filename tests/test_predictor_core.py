"""Training predictors and querying them, on generated latency rows and on bad input."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from profiler.cost import count_macs
from profiler.errors import PredictorError, SpaceError
from profiler.space import HAT_FEATURES, load_space
from predictor import train_predictor
from predictor.core import fit_prepared, prepare
from predictor.metrics import latency_metrics, split_indices
from predictor.synthetic import synthetic_frame

SPACE = load_space("compact")


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return synthetic_frame(200, seed=1)


@pytest.fixture(scope="module")
def trained(frame):
    return train_predictor(frame)


def _mac_latency_frame(n: int, seed: int) -> pd.DataFrame:
    """Rows whose latency is an affine function of profiler.cost's MACs, with 2% noise."""
    archs = SPACE.sample_many(n, seed)
    rng = np.random.default_rng(seed)
    enc = np.array([count_macs(a, SPACE)["encoder"] for a in archs]) / 4e8 + 0.3
    dec = np.array([count_macs(a, SPACE)["decoder"] for a in archs]) / 1e8 + 2.0
    enc *= rng.lognormal(0, 0.02, n)
    dec *= rng.lognormal(0, 0.02, n)
    return pd.DataFrame({"latency_mean_encoder": enc, "latency_mean_decoder": dec,
                         "latency_ms": enc + dec, "arch": [a.canonical_json() for a in archs],
                         "space": "compact"})


def test_default_model_learns_a_mac_driven_latency():
    df = _mac_latency_frame(150, seed=5)
    pred = train_predictor(df)
    holdout = pred.metadata["metrics"]["holdout"]
    assert holdout["n"] == 15
    assert holdout["within_10"] >= 0.95
    assert holdout["kendall_tau"] > 0.8


def test_predictor_metadata(trained, frame):
    meta = trained.metadata
    assert trained.feature_set == "hat-cost" and trained.targets == ("encoder", "decoder")
    assert trained.space.name == "compact"
    assert meta["data"]["device"] == "synthetic-desktop" and meta["data"]["rows"] == len(frame)
    assert len(meta["data"]["sha256"]) == 64
    assert meta["metrics"]["split"] == {"seed": 0, "train": 160, "test": 20}
    assert {"numpy", "scikit-learn", "python"} <= set(meta["versions"])


def test_predict_archs_agrees_with_predict_frame(trained, frame):
    archs = SPACE.sample_many(len(frame), seed=1)  # the archs of `frame`, in order
    by_frame = trained.predict_frame(frame)
    np.testing.assert_allclose(trained.predict_archs(archs), by_frame["predicted_ms"], rtol=1e-12)
    np.testing.assert_allclose(by_frame["predicted_encoder_ms"] + by_frame["predicted_decoder_ms"],
                               by_frame["predicted_ms"], rtol=1e-12)


def test_predict_archs_of_no_archs_is_empty(trained):
    assert trained.predict_archs([]).shape == (0,)


def test_predict_archs_refuses_archs_outside_the_space(trained):
    arch = load_space("wmt14.en-de").sample_many(1, seed=0)[0]
    with pytest.raises(SpaceError):
        trained.predict_archs([arch])


def test_hat_format_rows_train_every_model_kind():
    df = synthetic_frame(60, seed=2, hat_only=True)
    archs = SPACE.sample_many(5, seed=8)
    for model, params in (("ridge", None), ("gbt", {"n_estimators": 20}),
                          ("hat-mlp", {"max_steps": 20, "hidden_layers": (32,)})):
        pred = train_predictor(df, model, params=params)
        assert pred.feature_set == ("hat" if model == "hat-mlp" else "hat-cost")
        assert pred.predict_archs(archs).shape == (5,)
        assert np.isfinite(pred.predict_frame(df)["predicted_ms"]).all()


def test_total_target_fits_one_estimator(frame):
    pred = train_predictor(frame.drop(columns=["latency_mean_encoder", "latency_mean_decoder"]))
    assert pred.targets == ("total",)
    assert list(pred.predict_frame(frame).columns) == ["predicted_ms"]


def test_training_is_deterministic_for_a_seed(frame):
    params = {"max_steps": 30}
    a = train_predictor(frame, "mlp", params=params, seed=3).predict_frame(frame)
    b = train_predictor(frame, "mlp", params=params, seed=3).predict_frame(frame)
    pd.testing.assert_frame_equal(a, b)


def test_fit_prepared_uses_only_the_given_rows(frame):
    prep = prepare(frame, "richest")
    train, _, test = split_indices(len(frame), 0)
    pred = fit_prepared(prep, train, "ridge")
    assert pred.metadata["data"]["rows"] == len(train)
    assert latency_metrics(prep.ys["total"][test], pred.predict_parts(prep.X[test])["total"])["mape"] < 5


@pytest.mark.parametrize("mutate, message", [
    (lambda df: df.iloc[0:0], "no rows"),
    (lambda df: df.drop(columns=["arch", *HAT_FEATURES[:2]]), "missing: encoder_embed_dim"),
    (lambda df: df.drop(columns=["latency_mean_decoder", "latency_ms"]), "no latency target"),
    (lambda df: df.assign(latency_mean_encoder=df["latency_mean_encoder"].where(df.index != 4)),
     r"latency_mean_encoder is missing.*1 of 200 row\(s\) \(first: row 4\)"),
    (lambda df: df.assign(device=["a", "b"] * 100), "mixes 2 values of 'device'"),
    (lambda df: df.head(4), "at least 5 rows"),
    (lambda df: df.assign(arch=df["arch"].where(df.index != 0, '{"encoder_embed_dim": 1}')),
     "row 0: bad architecture"),
])
def test_bad_training_data_is_a_clear_error(frame, mutate, message):
    with pytest.raises(PredictorError, match=message):
        train_predictor(mutate(frame))


def test_unknown_model_is_a_clear_error(frame):
    with pytest.raises(PredictorError, match="unknown model 'xgb'"):
        train_predictor(frame, "xgb")
