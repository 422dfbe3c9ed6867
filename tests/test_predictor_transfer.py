"""Transfer to a new device from a few rows plus another device's predictor."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from profiler.errors import PredictorError
from predictor import adapt, features, train_predictor
from predictor.transfer import (CHOICE_LEVEL, FEATURE_SET, METHODS, PENALISED_SET, _paired_t, _ridge_path,
                                evaluate_transfer, stack_weights)
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


def test_auto_stacks_the_exact_candidates_when_there_is_an_offset(base, new_device):
    few = _scaled(base, new_device.head(12), (3.0, 1.5), (2.0, 4.0))
    adapted = adapt(base, few)
    weights = adapted.metadata["weights"]
    # Only candidates that can be exact keep weight: not the ratio, not the rows alone.
    assert weights.get("ratio", 0) < 1e-6 and weights.get("alone", 0) < 1e-6
    assert sum(weights.values()) == pytest.approx(1.0, abs=1e-3)
    decoder = adapted.corrections["decoder"]
    assert decoder.scale == pytest.approx(2.0, rel=1e-6)
    expected = _scaled(base, new_device, (3.0, 1.5), (2.0, 4.0))["latency_ms"]
    np.testing.assert_allclose(adapted.predict_frame(new_device)["predicted_ms"], expected, rtol=1e-6)
    # Exact rows: each row left out is predicted exactly where the adaptation without it keeps
    # the stack, and as "macs" alone predicts it where the evidence on 11 rows is too weak.
    macs = adapt(base, few, method="macs").intervals.scores
    scores = adapted.intervals.scores
    assert adapted.intervals.rows == 12 and np.median(scores) < 1e-6
    assert all(s < 1e-6 or s == pytest.approx(m, rel=1e-6) for s, m in zip(scores, macs))


def test_costs_learn_a_fixed_cost_per_layer(base, new_device):
    """New device = 2 x base + 5 ms per decoder layer (a dispatch cost the base does not
    have): "linear-costs" recovers both; "linear" cannot."""
    df = _scaled(base, new_device, (2.0, 0.0), (2.0, 0.0))
    extra = 5.0 * df["decoder_layer_num"]
    df["latency_mean_decoder"] += extra
    df["latency_ms"] += extra
    adapted = adapt(base, df.head(20), method="linear-costs")
    decoder = adapted.corrections["decoder"]
    names = features.feature_names(FEATURE_SET, base.context)
    layers = names.index(next(n for n in names if n.startswith("decoder_layer_num/")))
    norm = float(names[layers].split("/")[1])
    assert decoder.scale == pytest.approx(2.0, rel=1e-6)
    assert decoder.coef[layers] == pytest.approx(5.0 * norm, rel=1e-6)
    rest = df.iloc[20:]
    for method, worst in (("linear-costs", 1e-6), ("auto", 1e-3)):
        predicted = adapt(base, df.head(20), method=method, intervals=False).predict_frame(rest)["predicted_ms"]
        assert np.abs(predicted / rest["latency_ms"] - 1).max() < worst
    # the stack, left out whole, is near exact; "macs" (no base) is not, so auto keeps the stack
    choice = adapt(base, df.head(20), intervals=False).metadata["choice"]
    assert choice["chosen"] == "stack" and choice["stack"] < 0.1 < choice["macs"]
    linear = adapt(base, df.head(20), method="linear", intervals=False).predict_frame(rest)["predicted_ms"]
    assert np.abs(linear / rest["latency_ms"] - 1).max() > 0.01


def _roofline(base, df: pd.DataFrame, noise: float = 0.0, seed: int = 0) -> pd.DataFrame:
    """Rows of a device whose parts cost a fixed time per layer plus a time per MAC, times
    `noise`-wide log-normal measurement noise."""
    out = df.copy()
    macs = features.cost_counts(features.encode_archs(features.parse_archs(out), 4, 4), base.context.space,
                                base.context.seq_len, base.context.beam)
    scatter = np.exp(np.random.default_rng(seed).normal(0.0, noise, (2, len(out))))
    out["latency_mean_encoder"] = (0.3 + 2.0 * out["encoder_layer_num"] + 4e-9 * macs["macs_encoder"]) * scatter[0]
    out["latency_mean_decoder"] = (1.0 + 5.0 * out["decoder_layer_num"] + 9e-9 * macs["macs_decoder"]) * scatter[1]
    out["latency_ms"] = out["latency_mean_encoder"] + out["latency_mean_decoder"]
    return out


def test_macs_learn_a_roofline_device(base, new_device):
    """A device whose parts cost a fixed time per layer plus a time per MAC (none of the
    base's shape): "macs" recovers it exactly from 12 rows, on features counted from HAT's
    averages alone, and auto comes within 0.1%."""
    df = _roofline(base, new_device)
    rest = df.iloc[12:]
    exact = adapt(base, df.head(12), method="macs")
    assert exact.feature_set == "hat-macs"
    np.testing.assert_allclose(exact.predict_frame(rest)["predicted_ms"], rest["latency_ms"], rtol=1e-7)
    hat_only = df.drop(columns="arch")
    np.testing.assert_allclose(exact.predict_frame(hat_only.iloc[12:])["predicted_ms"], rest["latency_ms"], rtol=1e-7)
    # auto keeps "macs" alone: the stack, left out whole, cannot predict the rows better than exactly
    auto = adapt(base, df.head(12), intervals=False)
    assert auto.metadata["choice"]["chosen"] == "macs" and auto.metadata["weights"] == {"macs": 1.0}
    assert auto.metadata["choice"]["macs"] < 1e-6
    predicted = auto.predict_frame(rest)["predicted_ms"]
    assert np.abs(predicted / rest["latency_ms"] - 1).max() < 1e-7
    ratio = adapt(base, df.head(12), method="ratio").predict_frame(rest)["predicted_ms"]
    assert np.abs(ratio / rest["latency_ms"] - 1).max() > 0.01


def test_paired_t_is_students():
    """The choice's statistic is the one-sample t of the rows' paired gains, as scipy computes it."""
    gain = np.random.default_rng(3).normal(0.2, 1.0, 17)
    assert _paired_t(gain) == pytest.approx(stats.ttest_1samp(gain, 0.0).statistic, rel=1e-12)
    # identical gains: as significant as a float can say, and finite (predictor files are strict JSON)
    assert 1e15 < _paired_t(np.full(5, 0.5)) < np.inf and -np.inf < _paired_t(np.full(5, -0.5)) < -1e15
    assert _paired_t(np.zeros(5)) == 0.0


def test_auto_leaves_macs_only_for_a_significant_gain(base, new_device):
    """On a noisy roofline device ("macs" is the true model) the stack's outer error is at
    times the lower one, by chance: auto keeps the stack only when the paired t of the gain
    exceeds Student's quantile at the choice's level, and the t's sign is that of the MAPE difference."""
    lower_but_kept, chosen = 0, set()
    for seed in (0, 1, 15, 24):  # noise draws where macs is better, and where the stack is (3 times)
        choice = adapt(base, _roofline(base, new_device, 0.04, seed).head(10), intervals=False).metadata["choice"]
        assert np.sign(choice["t"]) == np.sign(choice["macs"] - choice["stack"])
        assert choice["chosen"] == ("stack" if choice["t"] > stats.t.ppf(1 - CHOICE_LEVEL, 9) else "macs")
        lower_but_kept += choice["stack"] < choice["macs"] and choice["chosen"] == "macs"
        chosen.add(choice["chosen"])
    assert lower_but_kept > 0 and chosen == {"stack", "macs"}


def test_no_macs_without_a_space(new_device):
    """MACs need the space's attention width and vocabulary: a base that records no space
    adapts on the default model's features, without the MACs kinds."""
    spaceless = new_device.drop(columns=["arch", "space", "space_digest"], errors="ignore")
    base = train_predictor(synthetic_frame(200, seed=0).drop(columns=["arch", "space", "space_digest"],
                                                             errors="ignore"))
    assert base.context.space is None
    adapted = adapt(base, spaceless.head(20), intervals=False)
    assert adapted.feature_set == PENALISED_SET
    assert not any(name.endswith("macs") for name in adapted.metadata["loo_rmspe"])
    assert adapted.metadata["choice"] is None
    with pytest.raises(PredictorError, match="design space"):
        adapt(base, spaceless.head(20), method="macs")


def test_shrinkage_learns_what_the_base_misses(base, new_device):
    """New device = 2 x base + a cost the base does not scale with (decoder layers x FFN):
    the affine map cannot fit it; the shrunk ridge and auto cut its worst error tenfold (not
    to zero: their penalties have a floor)."""
    df = _scaled(base, new_device, (2.0, 0.0), (2.0, 0.0))
    extra = 40.0 * df["decoder_layer_num"] * df["decoder_ffn_embed_dim_avg"] / 2048
    df["latency_mean_decoder"] += extra
    df["latency_ms"] += extra
    rest = df.iloc[30:]
    errors = {}
    for method in ("auto", "shrink", "linear"):
        predicted = adapt(base, df.head(30), method=method, intervals=False).predict_frame(rest)["predicted_ms"]
        errors[method] = np.abs(predicted / rest["latency_ms"] - 1).max()
    assert errors["linear"] > 0.1
    assert max(errors["auto"], errors["shrink"]) < errors["linear"] / 10


def test_alone_is_a_candidate_and_is_train_exactly(base, new_device):
    """The k rows alone are among `auto`'s candidates, and "alone" is exactly `predictor
    train`'s default model (a correction that uses no base)."""
    df = new_device.sample(frac=1, random_state=0).head(40)
    auto = adapt(base, df.head(25), intervals=False)
    assert min(e.alpha_ for e in train_predictor(df.head(25)).estimators.values()) >= 1e-2
    assert set(auto.metadata["loo_rmspe"]) == {*METHODS, "stack", "auto"}
    adapted = adapt(base, df.head(25), method="alone", intervals=False)
    assert adapted.metadata["weights"] == {"alone": 1.0}
    assert all(c.scales == (0.0,) for c in adapted.corrections.values())
    own = train_predictor(df.head(25))
    np.testing.assert_allclose(adapted.predict_frame(df.tail(15))["predicted_ms"],
                               own.predict_frame(df.tail(15))["predicted_ms"], rtol=1e-12)


def test_rows_alone_under_the_penalty_floor_are_left_out(base, new_device):
    """Rows whose default ridge picks a penalty under 1e-2 (here: latency exactly linear in
    the features, so the least penalty wins) leave the rows alone out of auto, not of "alone"."""
    df = new_device.head(25).copy()
    X = features.from_frame(PENALISED_SET, df, base.context)
    df["latency_mean_encoder"] = 5.0 + X @ np.linspace(1.0, 2.0, X.shape[1])
    df["latency_mean_decoder"] = 20.0 + X @ np.linspace(3.0, 1.0, X.shape[1])
    df["latency_ms"] = df["latency_mean_encoder"] + df["latency_mean_decoder"]
    assert max(e.alpha_ for e in train_predictor(df).estimators.values()) < 1e-2
    assert "alone" not in adapt(base, df, intervals=False).metadata["loo_rmspe"]
    assert adapt(base, df, "alone", intervals=False).metadata["weights"] == {"alone": 1.0}


def test_stack_weights():
    """Stacking recovers the mixture that is exact, and a candidate that is exact alone."""
    rng = np.random.default_rng(0)
    y = rng.uniform(50, 100, 30)
    a, b = y * rng.uniform(0.8, 1.2, 30), y * rng.uniform(0.8, 1.2, 30)
    mixed = (y - 0.3 * a) / 0.7  # so that 0.3 a + 0.7 mixed == y
    np.testing.assert_allclose(stack_weights(np.column_stack([a, mixed]), y), [0.3, 0.7], atol=1e-9)
    np.testing.assert_allclose(stack_weights(np.column_stack([a, y, b]), y), [0, 1, 0], atol=1e-9)
    # No positive weight (predictions of the wrong sign): the candidate of lowest error.
    np.testing.assert_allclose(stack_weights(np.column_stack([-a, -2 * b]), y), [1, 0])


def test_several_bases_at_once(new_device):
    desktop = train_predictor(synthetic_frame(200, seed=3))
    pi = train_predictor(synthetic_frame(200, seed=4, device="synthetic-pi"))
    df = new_device.copy()
    parts = {name: b.predict_frame(df) for name, b in (("desktop", desktop), ("pi", pi))}
    for part in ("encoder", "decoder"):
        df[f"latency_mean_{part}"] = (0.5 * parts["desktop"][f"predicted_{part}_ms"]
                                      + 0.2 * parts["pi"][f"predicted_{part}_ms"])
    df["latency_ms"] = df["latency_mean_encoder"] + df["latency_mean_decoder"]
    adapted = adapt([desktop, pi], df.head(20), intervals=False)
    assert sum(w for name, w in adapted.metadata["weights"].items() if name.endswith("[all]")) > 0.99
    assert adapted.corrections["decoder"].scales == pytest.approx((0.5, 0.2), rel=1e-2)
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

    df = new_device.head(12)
    rows = _Rows([base.predict_parts(features.from_frame(base.feature_set, df, base.context))],
                 features.from_frame(FEATURE_SET, df, base.context),
                 {t: df[c].to_numpy() for t, c in (("encoder", "latency_mean_encoder"),
                                                   ("decoder", "latency_mean_decoder"),
                                                   ("total", "latency_ms"))},
                 ("encoder", "decoder"), None, features.feature_names(FEATURE_SET, base.context),
                 len(features.feature_names(PENALISED_SET, base.context)))
    # Unpenalised kinds: a refit would choose its own penalty and standardisation.
    for kind in ("linear", "linear-costs", "linear-macs"):
        cand = _Candidate(kind, kind, (0,))
        _, loo = rows.fit(cand, np.arange(12))
        refit = [rows.predict(cand, rows.fit(cand, np.delete(np.arange(12), i))[0], np.array([i]))[0]
                 for i in range(12)]
        np.testing.assert_allclose(loo, refit, rtol=1e-8)


def _ridge_by_normal_equations(free, pen, y, w, alpha):
    """The partly penalised weighted ridge solved directly (least norm on the free columns)."""
    Z = np.column_stack([free, pen]) * np.sqrt(w)[:, None]
    penalty = np.sqrt(alpha) * np.eye(Z.shape[1])[free.shape[1]:]
    return np.linalg.lstsq(np.vstack([Z, penalty]), np.r_[y * np.sqrt(w), np.zeros(len(penalty))], rcond=None)[0]


def test_ridge_path_is_the_best_penalty_refitted_without_each_row():
    """Every penalty's leave-one-out by refitting (a row only one free column sees, which the fit
    passes through, included); the path keeps the least weighted one, with its coefficients."""
    rng = np.random.default_rng(3)
    n = 9
    free = np.column_stack([np.ones(n), rng.uniform(1, 2, n), np.eye(n)[4]])
    pen = rng.normal(size=(n, 4))
    y = free[:, :2] @ [2.0, 3.0] + pen @ [0.5, -0.2, 0.1, 0.0] + rng.normal(0, 0.3, n) + 10
    w = 1 / y ** 2
    alphas = (0.01, 0.3, 10.0)
    best = None
    for alpha in alphas:
        loo = np.array([y[i] - np.r_[free[i], pen[i]] @ _ridge_by_normal_equations(
            np.delete(free, i, 0), np.delete(pen, i, 0), np.delete(y, i), np.delete(w, i), alpha) for i in range(n)])
        if best is None or np.sum(w * loo ** 2) < best[0]:
            best = (np.sum(w * loo ** 2), _ridge_by_normal_equations(free, pen, y, w, alpha), loo)
    beta, loo = _ridge_path(free, pen, y, w, alphas)
    np.testing.assert_allclose(loo, best[2], rtol=1e-8)
    np.testing.assert_allclose(beta, best[1], rtol=1e-8, atol=1e-10)
    assert abs(loo[4]) > 0.01  # the row the third column alone sees: predicted without it, not 0


def test_progress_is_reported_once_per_left_out_row(base, new_device):
    calls = []
    adapted = adapt(base, new_device.head(12), progress=lambda: calls.append(len(calls)))
    assert len(calls) == 12 == adapted.intervals.rows


def test_adapted_predictor_predicts_archs(base, new_device):
    from profiler.space import ArchConfig

    adapted = adapt(base, new_device.head(15), intervals=False)
    archs = [ArchConfig.from_json(s) for s in new_device["arch"].head(5)]
    np.testing.assert_allclose(adapted.predict_archs(archs),
                               adapted.predict_frame(new_device.head(5))["predicted_ms"], rtol=1e-12)
    assert adapted.metadata["base_device"] == "synthetic-desktop"
    assert adapted.metadata["data"]["device"] == "synthetic-pi"


def test_few_rows_and_mismatched_workloads(base, new_device):
    assert adapt(base, new_device.head(2)).metadata["weights"] == {"ratio": 1.0}
    assert adapt(base, new_device.head(2)).intervals is not None
    with pytest.raises(PredictorError, match="at least 3 rows"):
        adapt(base, new_device.head(2), method="linear")
    with pytest.raises(PredictorError, match="seq_len=20"):
        adapt(base, new_device.head(10).assign(seq_len=20))
    with pytest.raises(PredictorError, match="not an adapted one"):
        adapt(adapt(base, new_device.head(10)), new_device.head(10))
    with pytest.raises(PredictorError, match="latency_mean_decoder is missing"):
        adapt(base, new_device.head(10).assign(latency_mean_decoder=np.nan))


def test_search_bounds_predict_each_base_once(base, new_device, monkeypatch):
    # `search --confidence`: the upper bound of an adapted predictor's interval, from one
    # prediction of the bases per batch (the prediction and the intervals' inputs share it).
    from nas.latency import PredictedLatency
    from profiler.space import ArchConfig

    adapted = adapt(base, new_device.head(15))
    archs = [ArchConfig.from_json(s) for s in new_device["arch"].iloc[20:30]]
    expected = adapted.intervals.bounds(adapted.predict_archs(archs), 0.9, **adapted.interval_inputs(archs=archs))[1]
    calls = []
    predict_parts = type(base).predict_parts
    monkeypatch.setattr(type(base), "predict_parts", lambda self, X: calls.append(len(X)) or predict_parts(self, X))
    upper = PredictedLatency(adapted, confidence=0.9)(archs)
    assert calls == [10]
    np.testing.assert_allclose(upper, expected, rtol=1e-12)
    assert (np.asarray(upper) > adapted.predict_archs(archs)).all()
    predicted, inputs = adapted.predict_with_inputs(new_device.iloc[20:30])
    np.testing.assert_allclose(predicted, adapted.predict_archs(archs), rtol=1e-12)
    assert inputs["left_out_ms"].shape == (15, 10) and inputs["spread"].shape == (10,)
