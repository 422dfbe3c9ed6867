"""Choosing the rows to measure on a new device."""
from __future__ import annotations

import numpy as np
import pytest

from profiler.errors import PredictorError
from profiler.space import load_space
from predictor import train_predictor
from predictor.suggest import farthest_point, suggest_archs, suggest_rows
from predictor.synthetic import synthetic_frame


def test_farthest_point_starts_central_then_takes_the_ends():
    X = np.linspace(0.0, 1.0, 11)[:, None]
    chosen = farthest_point(X, 4)
    assert chosen[0] == 5 and set(chosen[1:3]) == {0, 10}
    assert chosen[3] in (2, 3, 7, 8)  # the middle of a remaining gap


def test_farthest_point_uses_standardised_distances():
    # The second column's scale is 1000x larger; standardised, both count alike.
    X = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1000.0], [0.5, 500.0]])
    chosen = farthest_point(X, 2)
    assert chosen[0] == 3 and chosen[1] in (0, 1, 2)


def test_farthest_point_refuses_impossible_requests():
    with pytest.raises(PredictorError, match="cannot choose 5 of 3"):
        farthest_point(np.zeros((3, 2)), 5)


@pytest.fixture(scope="module")
def base():
    return train_predictor(synthetic_frame(200, seed=0))


def test_suggested_archs_are_distinct_members_of_the_space(base):
    archs = suggest_archs(base, 10, n_candidates=300, seed=1)
    space = load_space("compact")
    assert len({a.arch_id for a in archs}) == 10
    for a in archs:
        a.validate(space)
    # The design spreads out: the suggested rows span most of the predicted range.
    predicted = base.predict_archs(archs)
    sample = base.predict_archs(space.sample_many(300, 1))
    assert predicted.max() / predicted.min() > 0.8 * sample.max() / sample.min()
    assert [a.arch_id for a in suggest_archs(base, 10, n_candidates=300, seed=1)] == [a.arch_id for a in archs]


def test_suggested_rows_teach_more_than_random_rows(base):
    """Adapting with 12 suggested rows of a new device beats 12 random rows (5 draws)."""
    from predictor import adapt

    df = synthetic_frame(400, seed=5, device="synthetic-pi")
    errors = {"suggested": [], "random": []}
    for draw in range(5):
        order = np.random.default_rng(draw).permutation(len(df))
        pool, held = order[:300], order[300:]
        picks = {"suggested": pool[suggest_rows(base, df.iloc[pool], 12)],
                 "random": pool[:12]}
        for name, few in picks.items():
            adapted = adapt(base, df.iloc[few], intervals=False)
            predicted = adapted.predict_frame(df.iloc[held])["predicted_ms"]
            errors[name].append(float(np.mean(np.abs(predicted / df["latency_ms"].iloc[held] - 1))))
    assert np.mean(errors["suggested"]) < np.mean(errors["random"])
