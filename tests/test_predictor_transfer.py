"""Transfer to a new device from a few rows plus another device's predictor."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from profiler.errors import PredictorError
from predictor import adapt, train_predictor
from predictor.transfer import evaluate_transfer
from predictor.synthetic import synthetic_frame


@pytest.fixture(scope="module")
def base():
    return train_predictor(synthetic_frame(200, seed=0))


@pytest.fixture(scope="module")
def new_device() -> pd.DataFrame:
    return synthetic_frame(150, seed=21, device="synthetic-pi")


def _scaled(base, df: pd.DataFrame, enc: tuple[float, float], dec: tuple[float, float]) -> pd.DataFrame:
    """Rows whose parts are exactly affine in the base predictor's parts."""
    parts = base.predict_frame(df)
    out = df.copy()
    out["latency_mean_encoder"] = enc[0] * parts["predicted_encoder_ms"] + enc[1]
    out["latency_mean_decoder"] = dec[0] * parts["predicted_decoder_ms"] + dec[1]
    out["latency_ms"] = out["latency_mean_encoder"] + out["latency_mean_decoder"]
    return out


def test_ratio_is_recovered_exactly(base, new_device):
    few = _scaled(base, new_device.head(12), (3.0, 0.0), (2.0, 0.0))
    adapted = adapt(base, few, method="ratio")
    assert adapted.corrections["encoder"].scale == pytest.approx(3.0)
    assert adapted.corrections["decoder"].scale == pytest.approx(2.0)


def test_auto_picks_the_affine_map_when_there_is_an_offset(base, new_device):
    few = _scaled(base, new_device.head(12), (3.0, 1.5), (2.0, 4.0))
    adapted = adapt(base, few)
    assert adapted.method == "linear"
    decoder = adapted.corrections["decoder"]
    assert (decoder.scale, decoder.offset) == pytest.approx((2.0, 4.0))
    expected = _scaled(base, new_device, (3.0, 1.5), (2.0, 4.0))["latency_ms"]
    np.testing.assert_allclose(adapted.predict_frame(new_device)["predicted_ms"], expected, rtol=1e-9)
    # Exact rows: every leave-one-out prediction is exact, so the intervals have zero width.
    assert adapted.intervals.rows == 12 and adapted.intervals.quantile(0.9) < 1e-9


def test_shrinkage_learns_what_the_base_misses(base, new_device):
    """New device = 2 x base + a cost the base does not scale with (decoder layers x FFN):
    the ratio and affine maps cannot fit it, the shrunk ridge can."""
    df = _scaled(base, new_device, (2.0, 0.0), (2.0, 0.0))
    extra = 40.0 * df["decoder_layer_num"] * df["decoder_ffn_embed_dim_avg"] / 2048
    df["latency_mean_decoder"] += extra
    df["latency_ms"] += extra
    adapted = adapt(base, df.head(30))
    assert adapted.method in ("shrink", "augment")
    rest = df.iloc[30:]
    error = np.abs(adapted.predict_frame(rest)["predicted_ms"] / rest["latency_ms"] - 1)
    linear = adapt(base, df.head(30), method="linear")
    linear_error = np.abs(linear.predict_frame(rest)["predicted_ms"] / rest["latency_ms"] - 1)
    assert error.max() < 0.01 < linear_error.max()


def test_alone_is_a_candidate_and_is_train_exactly(base, new_device):
    """The k rows alone are among `auto`'s candidates, the choice is the lowest leave-one-out
    error or the k rows alone, and "alone" is exactly `predictor train`'s default model."""
    df = new_device.sample(frac=1, random_state=0).head(40)
    auto = adapt(base, df.head(25))
    scores = auto.metadata["loo_rmspe"]
    assert set(scores) == {"ratio", "linear", "shrink", "augment", "alone"}
    assert auto.method in (min(scores, key=scores.get), "alone")
    assert scores[auto.method] <= scores["alone"]
    adapted = adapt(base, df.head(25), method="alone")
    assert adapted.method == "alone" and adapted.corrections == {}
    own = train_predictor(df.head(25))
    np.testing.assert_allclose(adapted.predict_frame(df.tail(15))["predicted_ms"],
                               own.predict_frame(df.tail(15))["predicted_ms"], rtol=1e-12)


def test_several_bases_at_once(new_device):
    desktop = train_predictor(synthetic_frame(200, seed=3))
    pi = train_predictor(synthetic_frame(200, seed=4, device="synthetic-pi"))
    df = new_device.copy()
    parts = {name: b.predict_frame(df) for name, b in (("desktop", desktop), ("pi", pi))}
    for part in ("encoder", "decoder"):
        df[f"latency_mean_{part}"] = (0.5 * parts["desktop"][f"predicted_{part}_ms"]
                                      + 0.2 * parts["pi"][f"predicted_{part}_ms"])
    df["latency_ms"] = df["latency_mean_encoder"] + df["latency_mean_decoder"]
    adapted = adapt([desktop, pi], df.head(20))
    assert adapted.method == "shrink[all]"
    assert adapted.corrections["decoder"].scales == pytest.approx((0.5, 0.2), rel=1e-3)
    assert adapted.metadata["base_device"] == ["synthetic-desktop", "synthetic-pi"]
    np.testing.assert_allclose(adapted.predict_frame(df.iloc[20:])["predicted_ms"], df["latency_ms"].iloc[20:],
                               rtol=1e-3)


def test_twenty_rows_beat_twenty_rows_alone(base, new_device):
    summary = evaluate_transfer(base, new_device, k=20, repeats=3)
    assert summary["held_out"] == 130
    adapted, scratch = summary["adapted"], summary["scratch"]
    assert adapted["mape"] < scratch["mape"]
    assert adapted["within_10"] > scratch["within_10"]
    assert 0.6 <= adapted["coverage_90"] <= 1.0


def test_leave_one_out_is_exact(base, new_device):
    """The closed-form leave-one-out the choice relies on equals refitting without each row."""
    from predictor.transfer import _Candidate, _Rows
    from predictor import features

    df = new_device.head(12)
    rows = _Rows([base.predict_parts(features.from_frame(base.feature_set, df, base.context))],
                 features.from_frame(base.feature_set, df, base.context), None,
                 {t: df[c].to_numpy() for t, c in (("encoder", "latency_mean_encoder"),
                                                   ("decoder", "latency_mean_decoder"),
                                                   ("total", "latency_ms"))},
                 ("encoder", "decoder"), None)
    cand = _Candidate("linear", "linear", (0,))
    _, loo = rows.fit(cand, np.arange(12))
    refit = [rows.predict(cand, rows.fit(cand, np.delete(np.arange(12), i))[0], np.array([i]))[0]
             for i in range(12)]
    np.testing.assert_allclose(loo, refit, rtol=1e-8)


def test_adapted_predictor_predicts_archs(base, new_device):
    from profiler.space import ArchConfig

    adapted = adapt(base, new_device.head(15))
    archs = [ArchConfig.from_json(s) for s in new_device["arch"].head(5)]
    np.testing.assert_allclose(adapted.predict_archs(archs),
                               adapted.predict_frame(new_device.head(5))["predicted_ms"], rtol=1e-12)
    assert adapted.metadata["base_device"] == "synthetic-desktop"
    assert adapted.metadata["data"]["device"] == "synthetic-pi"


def test_few_rows_and_mismatched_workloads(base, new_device):
    assert adapt(base, new_device.head(2)).method == "ratio"
    assert adapt(base, new_device.head(2)).intervals is not None
    with pytest.raises(PredictorError, match="at least 3 rows"):
        adapt(base, new_device.head(2), method="linear")
    with pytest.raises(PredictorError, match="seq_len=20"):
        adapt(base, new_device.head(10).assign(seq_len=20))
    with pytest.raises(PredictorError, match="not an adapted one"):
        adapt(adapt(base, new_device.head(10)), new_device.head(10))
    with pytest.raises(PredictorError, match="latency_mean_decoder is missing"):
        adapt(base, new_device.head(10).assign(latency_mean_decoder=np.nan))
