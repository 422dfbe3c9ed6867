"""The search-and-measure entry point, the predictor adapter and the strategy registry."""
from __future__ import annotations

import numpy as np
import pytest

from _archs import TINY_SEARCH_SPACE
from nas.corpus import synthetic_corpus
from nas.evolution import STRATEGIES, EvolutionStrategy, RandomStrategy, make_strategy
from nas.experiment import SearchTask, search_and_measure
from nas.grammar import SyntheticTaskConfig
from nas.latency import PredictedLatency
from nas.measured import MeasuredLatency
from nas.search import SearchSettings
from nas.supernet import SuperTransformer
from profiler.cost import count_macs
from profiler.errors import SearchError

SPACE = TINY_SEARCH_SPACE


class MacPredictor:
    """A stand-in predictor: MACs in millions, as a numpy batch like the real ones."""

    metadata = {"data": {"latency_statistic": "min"}}

    def predict_archs(self, archs):
        return np.array([count_macs(a, SPACE)["total"] / 1e6 for a in archs])


@pytest.fixture(scope="module")
def task():
    corpus = synthetic_corpus(SyntheticTaskConfig(train_size=300))
    return SearchTask(SuperTransformer(SPACE, seed=0), corpus, score_sentences=8, bleu_sentences=4,
                      reference_sentences=8)


def test_the_registry_builds_each_strategy_from_the_settings():
    assert STRATEGIES == {"evolution": EvolutionStrategy, "random": RandomStrategy}
    evolution = make_strategy(SPACE, SearchSettings(population=10, mutation_prob=0.1, seed=3))
    assert isinstance(evolution, EvolutionStrategy) and evolution.mutation_prob == 0.1
    assert (evolution.parents, evolution.mutations, evolution.crossovers) == (2, 4, 4)
    assert isinstance(make_strategy(SPACE, SearchSettings(strategy="random", population=7)), RandomStrategy)
    with pytest.raises(SearchError, match="unknown search strategy 'annealing'"):
        make_strategy(SPACE, SearchSettings(strategy="annealing"))


def test_the_adapter_gives_floats_and_the_learnt_statistic():
    latency = PredictedLatency(MacPredictor())
    archs = [SPACE.largest(), SPACE.smallest()]
    expected = [count_macs(a, SPACE)["total"] / 1e6 for a in archs]
    assert latency(archs) == pytest.approx(expected) and all(type(v) is float for v in latency(archs))
    assert latency.statistic == "min" and latency.confidence is None

    class Bare:
        def predict_archs(self, archs):
            return np.ones(len(archs))

    assert PredictedLatency(Bare()).statistic == "trimmed-mean"  # HAT's label when none is recorded


def test_search_and_measure_keeps_each_winner_within_its_limit_and_measures_it(task):
    strategy = "evolution"  # random search runs through here in tests/test_nas_cli.py
    latency = PredictedLatency(MacPredictor())
    largest_ms = latency([SPACE.largest()])[0]
    limits = [0.5 * largest_ms, 0.9 * largest_ms]
    measured_calls, progress = [], []

    def measure(archs):  # the reference's measurement did not converge, the winners' did
        measured_calls.append([a.arch_id for a in archs])
        return {a.arch_id: MeasuredLatency(2.0 * latency([a])[0], a != SPACE.largest(), 0.01) for a in archs}

    settings = SearchSettings(strategy=strategy, iterations=2, population=6, seed=1)
    steps = []
    record = search_and_measure(task, latency, limits, settings, measure,
                                on_iteration=lambda limit, summary: progress.append((limit, summary["iteration"])),
                                on_step=steps.append)
    assert [s.split(":")[0] for s in steps] == [f"scoring the winner of <= {limits[0]:g} ms",
                                                f"scoring the winner of <= {limits[1]:g} ms",
                                                "scoring the largest SubTransformer"]
    assert all(f"BLEU on {len(task.test)} test sentences" in s for s in steps)
    assert record["settings"]["strategy"] == strategy and record["latency_statistic"] == "min"
    assert progress == [(limits[0], 0), (limits[0], 1), (limits[1], 0), (limits[1], 1)]
    reference = record["reference"]
    assert reference["name"] == "largest" and reference["predicted_latency_ms"] == pytest.approx(largest_ms)
    assert reference["measured_latency_ms"] == pytest.approx(2 * largest_ms) and reference["measured_trusted"] is False
    assert len(measured_calls) == 1 and measured_calls[0][0] == reference["arch_id"]
    for limit, run in zip(limits, record["runs"]):
        winner, search = run["winner"], run["search"]
        assert run["latency_limit_ms"] == limit and winner["predicted_latency_ms"] <= limit
        assert search["strategy"] == strategy and len(search["iterations"]) == 2
        assert winner["valid_loss"] == min(i["best_loss"] for i in search["iterations"])
        assert winner["measured_latency_ms"] == pytest.approx(2 * winner["predicted_latency_ms"])
        assert winner["measured_trusted"] is True and winner["measured_interval"] == 0.01
        assert type(winner["over_limit"]) is bool and winner["over_limit"] == (winner["measured_latency_ms"] > limit)
        assert all(i["feasible"] == search["proposed"] - search["rejected"] for i in search["iterations"][-1:])
    assert [run["winner"]["over_limit"] for run in record["runs"]] != [False, False]
    assert "over_limit" not in reference  # the largest has no limit
