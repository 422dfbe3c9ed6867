"""The search loop: ask/tell architecture search under a latency limit, bounded.

The loop owns the budget (iterations, evaluations, rejection attempts) and the history;
a strategy (`nas.evolution`) only proposes candidates from a read-only `History`. Any
`latency_fn(archs) -> ms` (a predictor, a MAC count, a real measurement) and any
`score_fn(archs) -> losses` (the supernet's validation loss, a fake in tests) plug in.

Candidates over the limit are dropped before scoring, as in HAT; unlike HAT, the
rejection sampling is bounded: when no candidate fits after `max_attempts` proposals,
`SearchError` says what the smallest predicted latency seen was.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

from profiler.errors import SearchError
from profiler.space import ArchConfig

logger = logging.getLogger(__name__)

LatencyFn = Callable[[Sequence[ArchConfig]], Sequence[float]]
ScoreFn = Callable[[Sequence[ArchConfig]], Sequence[float]]


@dataclass(frozen=True)
class SearchSettings:
    """How to search: the strategy by name (`nas.evolution.STRATEGIES`), its budget and seed.

    Defaults are HAT's: 30 iterations of 125 candidates, mutation p=0.3, crossover p=0.5.
    """

    strategy: str = "evolution"
    iterations: int = 30
    population: int = 125
    mutation_prob: float = 0.3
    crossover_prob: float = 0.5
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Trial:
    """A scored candidate of one iteration."""

    arch: ArchConfig
    latency_ms: float
    loss: float
    iteration: int

    def to_dict(self) -> dict[str, Any]:
        return {"arch_id": self.arch.arch_id, "arch": self.arch.to_dict(), "latency_ms": self.latency_ms,
                "loss": self.loss, "iteration": self.iteration}


class History:
    """The scored generations so far; strategies read it, only the loop appends."""

    def __init__(self) -> None:
        self._generations: list[tuple[Trial, ...]] = []

    @property
    def generations(self) -> tuple[tuple[Trial, ...], ...]:
        return tuple(self._generations)

    @property
    def last_generation(self) -> tuple[Trial, ...]:
        return self._generations[-1] if self._generations else ()

    def trials(self) -> list[Trial]:
        return [t for generation in self._generations for t in generation]

    def best(self) -> Trial | None:
        """The lowest-loss trial (the earliest among equals)."""
        return min(self.trials(), key=lambda t: t.loss, default=None)

    def _append(self, generation: tuple[Trial, ...]) -> None:
        self._generations.append(generation)


class LatencyFilter:
    """Predicted latencies (cached per arch) and bounded rejection sampling against the limit."""

    def __init__(self, latency_fn: LatencyFn, limit_ms: float, max_attempts: int):
        if not limit_ms > 0:
            raise SearchError(f"the latency limit must be positive, got {limit_ms} ms")
        self.latency_fn = latency_fn
        self.limit_ms = limit_ms
        self.max_attempts = max_attempts
        self.proposed = 0
        self.rejected = 0
        self.min_latency_ms = math.inf
        self._cache: dict[str, float] = {}

    def latency_ms(self, archs: Sequence[ArchConfig]) -> list[float]:
        todo = list({a.arch_id: a for a in archs if a.arch_id not in self._cache}.values())
        if todo:
            values = [float(v) for v in self.latency_fn(todo)]
            if len(values) != len(todo):
                raise SearchError(f"latency_fn returned {len(values)} values for {len(todo)} architectures")
            self._cache.update((a.arch_id, v) for a, v in zip(todo, values))
            self.min_latency_ms = min(self.min_latency_ms, *values)
        return [self._cache[a.arch_id] for a in archs]

    def fill(self, propose: Callable[[int], list[ArchConfig]], n: int) -> list[ArchConfig]:
        """Up to `n` candidates within the limit, drawn from `propose(k)` in batches.

        Stops after `max_attempts` proposals: returns the feasible ones found (fewer than
        `n`, with a warning), or raises `SearchError` if there are none.
        """
        found: list[ArchConfig] = []
        attempts = 0
        while len(found) < n and attempts < self.max_attempts:
            batch = propose(min(max(2 * (n - len(found)), 16), self.max_attempts - attempts))
            attempts += len(batch)
            feasible = [a for a, ms in zip(batch, self.latency_ms(batch)) if ms <= self.limit_ms]
            self.rejected += len(batch) - len(feasible)
            found += feasible
        self.proposed += attempts
        if not found:
            raise SearchError(
                f"no architecture within the latency limit of {self.limit_ms:.3g} ms after {attempts} "
                f"candidates; the smallest predicted latency seen was {self.min_latency_ms:.3g} ms")
        if len(found) < n:
            logger.warning("only %d of %d candidates within %.3g ms after %d attempts",
                           len(found), n, self.limit_ms, attempts)
        return found[:n]


class Strategy(Protocol):
    """Proposes the next generation from the history; `feasible.fill` does the latency filtering."""

    name: str

    def ask(self, history: History, feasible: LatencyFilter) -> list[ArchConfig]: ...


@dataclass(frozen=True)
class SearchResult:
    """The winner, the per-iteration summaries and the loss-latency front of all scored trials."""

    strategy: str
    latency_limit_ms: float
    best: Trial
    iterations: tuple[dict[str, Any], ...]
    evaluated: int
    proposed: int
    rejected: int
    pareto: tuple[Trial, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "latency_limit_ms": self.latency_limit_ms,
            "best": self.best.to_dict(),
            "evaluated": self.evaluated,
            "proposed": self.proposed,
            "rejected": self.rejected,
            "iterations": list(self.iterations),
            "pareto": [{"arch_id": t.arch.arch_id, "latency_ms": t.latency_ms, "loss": t.loss} for t in self.pareto],
        }


def pareto_front(trials: Sequence[Trial]) -> tuple[Trial, ...]:
    """Trials that no other trial beats on both latency and loss, by increasing latency."""
    front: list[Trial] = []
    for trial in sorted({t.arch.arch_id: t for t in trials}.values(), key=lambda t: (t.latency_ms, t.loss)):
        if not front or trial.loss < front[-1].loss:
            front.append(trial)
    return tuple(front)


def _scores(score_fn: ScoreFn, archs: list[ArchConfig]) -> list[float]:
    values = [float(v) for v in score_fn(archs)] if archs else []
    if len(values) != len(archs):
        raise SearchError(f"score_fn returned {len(values)} values for {len(archs)} architectures")
    bad = sum(not math.isfinite(v) for v in values)
    if bad:
        logger.warning("%d candidates scored a non-finite loss; they rank last", bad)
    return [v if math.isfinite(v) else math.inf for v in values]


def run_search(strategy: Strategy, latency_fn: LatencyFn, score_fn: ScoreFn, latency_limit_ms: float,
               iterations: int, max_evaluations: int | None = None, max_attempts: int = 20_000,
               on_iteration: Callable[[dict[str, Any]], None] | None = None) -> SearchResult:
    """Ask, filter, score and record for `iterations` generations or `max_evaluations` scorings.

    An architecture is scored once (losses are cached by arch id), so evolution's surviving
    parents cost nothing; `evaluated` counts distinct scored architectures.
    """
    history = History()
    feasible = LatencyFilter(latency_fn, latency_limit_ms, max_attempts)
    losses: dict[str, float] = {}
    summaries: list[dict[str, Any]] = []
    for iteration in range(iterations):
        if max_evaluations is not None and len(losses) >= max_evaluations:
            break
        candidates = strategy.ask(history, feasible)
        new = list({a.arch_id: a for a in candidates if a.arch_id not in losses}.values())
        if max_evaluations is not None and len(losses) + len(new) > max_evaluations:
            new = new[: max_evaluations - len(losses)]
            keep = {a.arch_id for a in new} | set(losses)
            candidates = [a for a in candidates if a.arch_id in keep]
        losses.update((a.arch_id, v) for a, v in zip(new, _scores(score_fn, new)))
        latencies = feasible.latency_ms(candidates)
        generation = tuple(Trial(a, ms, losses[a.arch_id], iteration) for a, ms in zip(candidates, latencies))
        history._append(generation)
        best = history.best()
        summary = {
            "iteration": iteration,
            "evaluated": len(losses),
            "new": len(new),
            "generation_best_loss": min(t.loss for t in generation),
            "generation_mean_loss": sum(t.loss for t in generation) / len(generation),
            "best_loss": best.loss,
            "best_latency_ms": best.latency_ms,
            "feasible": feasible.proposed - feasible.rejected,
            "rejected": feasible.rejected,
        }
        summaries.append(summary)
        logger.info("iteration %d: best loss %.4f at %.3g ms (%d evaluated)", iteration, best.loss,
                    best.latency_ms, len(losses))
        if on_iteration is not None:
            on_iteration(summary)
    best = history.best()
    if best is None:
        raise SearchError("the search ran no iteration (iterations or max_evaluations is 0)")
    return SearchResult(strategy.name, latency_limit_ms, best, tuple(summaries), len(losses),
                        feasible.proposed, feasible.rejected, pareto_front(history.trials()))
