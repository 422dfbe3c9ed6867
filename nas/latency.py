"""A latency predictor as the search's `latency_fn`: the one adapter between the two.

The search filters candidates by `latency_fn(archs) -> ms`; a saved predictor
(`predictor.persistence`) predicts a whole batch at once. `PredictedLatency` also
carries the latency statistic the predictor learnt, so a measured check of the winner
compares like with like, and the optional `confidence`: with it, a candidate's latency
is the upper bound of the predictor's interval at that confidence, so that the search
keeps only candidates that fit the limit with that confidence.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from profiler.dataset import NO_REFERENCE
from profiler.errors import SpaceError
from profiler.space import ArchConfig, DesignSpace

#: The statistic of a predictor that does not record one (HAT's label).
DEFAULT_STATISTIC = "trimmed-mean"


class PredictedLatency:
    """`latency_fn` of a predictor: predicted ms per architecture (or its upper bound at
    `confidence`, in (0, 1))."""

    def __init__(self, predictor: Any, confidence: float | None = None) -> None:
        self.predictor = predictor
        self.confidence = confidence

    @classmethod
    def load(cls, path: str | Path, confidence: float | None = None) -> "PredictedLatency":
        """The adapter of a saved predictor file."""
        from predictor.persistence import load_predictor

        return cls(load_predictor(path), confidence)

    @property
    def statistic(self) -> str:
        """The latency statistic the predictor learnt (trimmed mean, median or minimum)."""
        metadata = getattr(self.predictor, "metadata", {}) or {}
        return metadata.get("data", {}).get("latency_statistic", DEFAULT_STATISTIC)

    @property
    def duet(self) -> bool:
        """Whether the predictor learnt duet labels (its rows name a reference model), so that
        a latency measured to check it is timed the same way."""
        metadata = getattr(self.predictor, "metadata", {}) or {}
        return metadata.get("data", {}).get("reference", NO_REFERENCE) != NO_REFERENCE

    def check_space(self, space: DesignSpace, supernet: str | Path) -> None:
        """Refuse a supernet of another design space than the predictor's (by name and content):
        the search would otherwise predict architectures the predictor never saw."""
        own = getattr(self.predictor, "space", None)
        if own is None or (own.name, own.digest) == (space.name, space.digest):
            return
        same = " (same name, other content)" if own.name == space.name else ""
        raise SpaceError(f"the predictor is of space {own.name!r} and the supernet {supernet} of space "
                         f"{space.name!r}{same}; train a supernet of the predictor's space "
                         f"(hatprof supernet train --space {own.name} --out {own.name}.pt), then search it "
                         f"(hatprof search --supernet {own.name}.pt ...)")

    def __call__(self, archs: Sequence[ArchConfig]) -> list[float]:
        archs = list(archs)
        if self.confidence is None:
            return [float(ms) for ms in self.predictor.predict_archs(archs)]
        from predictor.conformal import intervals_of

        predicted, inputs = self.predictor.predict_with_inputs(archs=archs)
        return [float(ms) for ms in intervals_of(self.predictor).bounds(predicted, self.confidence, **inputs)[1]]
