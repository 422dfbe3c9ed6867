from __future__ import annotations

import random

import pytest

from nas.evolution import EvolutionStrategy, RandomStrategy
from nas.search import History, LatencyFilter, Trial, pareto_front, run_search
from profiler.cost import count_macs
from profiler.errors import HatprofError, SearchError
from profiler.space import ArchConfig, load_space
from profiler.vocabulary import DECODER_LAYER_GENES, ENCODER_LAYER_GENES, SCALAR_GENES

SPACE = load_space("compact")


def mac_latency(archs: list[ArchConfig]) -> list[float]:
    """A fake predictor: millions of MACs of the latency workload, read as milliseconds."""
    return [count_macs(a, SPACE)["total"] / 1e6 for a in archs]


def gene_distance(a: ArchConfig, b: ArchConfig) -> float:
    """Genes that differ, a missing layer counting as different: zero only for a == b."""
    d = sum(getattr(a, g) != getattr(b, g) for g in SCALAR_GENES)
    for g in ENCODER_LAYER_GENES + DECODER_LAYER_GENES:
        x, y = getattr(a, g), getattr(b, g)
        d += sum(i >= len(x) or i >= len(y) or x[i] != y[i] for i in range(max(len(x), len(y))))
    return float(d)


class CountingScore:
    """A fake scorer with a known optimum (`target`), counting what it scores."""

    def __init__(self, target: ArchConfig):
        self.target = target
        self.scored: list[ArchConfig] = []

    def __call__(self, archs: list[ArchConfig]) -> list[float]:
        self.scored += archs
        return [gene_distance(a, self.target) for a in archs]


@pytest.mark.parametrize("seed", [0, 1])
def test_evolution_finds_known_optimum_and_beats_random(seed: int) -> None:
    target = SPACE.sample(random.Random(100 + seed))
    limit = mac_latency([target])[0] * 1.1
    evo = run_search(EvolutionStrategy(SPACE, seed=seed), mac_latency, CountingScore(target), limit, 30)
    assert evo.best.arch == target and evo.best.loss == 0.0
    baseline = run_search(RandomStrategy(SPACE, seed=seed), mac_latency, CountingScore(target), limit,
                          iterations=1000, max_evaluations=evo.evaluated)
    assert baseline.evaluated == evo.evaluated
    assert baseline.best.loss > evo.best.loss


def test_every_scored_candidate_is_within_the_limit_and_scored_once() -> None:
    target = SPACE.sample(random.Random(7))
    limit = mac_latency([SPACE.largest()])[0] / 2
    score = CountingScore(target)
    result = run_search(EvolutionStrategy(SPACE, population=20, seed=3), mac_latency, score, limit, 5)
    assert all(ms <= limit for ms in mac_latency(score.scored))
    assert len({a.arch_id for a in score.scored}) == len(score.scored) == result.evaluated
    assert [s["iteration"] for s in result.iterations] == list(range(5))
    best_losses = [s["best_loss"] for s in result.iterations]
    assert best_losses == sorted(best_losses, reverse=True)
    assert result.best.latency_ms <= limit


def test_the_loop_owns_the_evaluation_budget() -> None:
    score = CountingScore(SPACE.smallest())
    result = run_search(RandomStrategy(SPACE, population=30, seed=0), mac_latency, score, 1e9,
                        iterations=100, max_evaluations=70)
    assert len(score.scored) == result.evaluated == 70
    assert len(result.iterations) == 3


def test_search_is_reproducible_from_its_seed() -> None:
    def once(seed: int) -> list[str]:
        score = CountingScore(SPACE.largest())
        run_search(EvolutionStrategy(SPACE, population=20, seed=seed), mac_latency, score, 300.0, 4)
        return [a.arch_id for a in score.scored]

    assert once(5) == once(5)
    assert once(5) != once(6)


def test_infeasible_limit_raises_quickly_with_the_smallest_latency_seen() -> None:
    calls = []

    def latency(archs: list[ArchConfig]) -> list[float]:
        calls.append(len(archs))
        return mac_latency(archs)

    smallest_ms = mac_latency([SPACE.smallest()])[0]
    with pytest.raises(SearchError, match=r"smallest predicted latency seen was") as info:
        run_search(EvolutionStrategy(SPACE, seed=0), latency, CountingScore(SPACE.smallest()), 1.0,
                   iterations=30, max_attempts=2000)
    assert isinstance(info.value, HatprofError)
    assert sum(calls) <= 2000
    seen = float(str(info.value).rsplit("was ", 1)[1].split(" ms")[0])
    assert seen >= smallest_ms * 0.999


def test_bad_score_fn_and_limits_are_errors() -> None:
    with pytest.raises(SearchError, match="returned 0 values"):
        run_search(RandomStrategy(SPACE, population=4), mac_latency, lambda archs: [], 1e9, 1)
    with pytest.raises(SearchError, match="must be positive"):
        LatencyFilter(mac_latency, 0.0, 10)
    with pytest.raises(SearchError):
        EvolutionStrategy(SPACE, population=10, parents=20)


def test_history_is_read_only_for_strategies() -> None:
    history = History()
    assert history.last_generation == () and history.best() is None
    assert not hasattr(history, "append") and isinstance(history.generations, tuple)


def test_pareto_front() -> None:
    archs = SPACE.sample_many(4, seed=0)
    trials = [Trial(archs[0], 1.0, 3.0, 0), Trial(archs[1], 2.0, 2.0, 0), Trial(archs[2], 3.0, 2.5, 0),
              Trial(archs[3], 4.0, 1.0, 0)]
    assert [t.arch for t in pareto_front(trials)] == [archs[0], archs[1], archs[3]]
