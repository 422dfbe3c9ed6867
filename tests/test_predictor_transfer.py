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


def test_twenty_rows_beat_twenty_rows_alone(base, new_device):
    summary = evaluate_transfer(base, new_device, k=20, repeats=3)
    assert summary["held_out"] == 130
    adapted, scratch = summary["adapted"], summary["scratch"]
    assert adapted["mape"] < scratch["mape"]
    assert adapted["within_10"] > scratch["within_10"]


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
    with pytest.raises(PredictorError, match="at least 3 rows"):
        adapt(base, new_device.head(2), method="linear")
    with pytest.raises(PredictorError, match="seq_len=20"):
        adapt(base, new_device.head(10).assign(seq_len=20))
    with pytest.raises(PredictorError, match="not an adapted one"):
        adapt(adapt(base, new_device.head(10)), new_device.head(10))
    with pytest.raises(PredictorError, match="latency_mean_decoder is missing"):
        adapt(base, new_device.head(10).assign(latency_mean_decoder=np.nan))
