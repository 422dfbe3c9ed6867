"""The duet label: each run of the model measured against the reference runs on either side of it.

Duet benchmarking (Bulej et al., ICPE 2020): the model is timed in alternation with a fixed
reference SubTransformer (the design space's smallest, same runtime, threads and workload),
a reference run before and after every model run (the canary's slot, every run). What slows
the host for a moment slows both, so a run's ratio to its bracket, the geometric mean of the
two reference runs around it, holds where its time does not.

The label stays in milliseconds and stays HAT's statistic: each run's time is restated as
`ratio x scale`, and the label is the trimmed mean of the restated runs. The scale is the
reference's latency at the machine's fast level: `FAST_QUANTILE` of the trimmed means of the
reference's first `CALIBRATION_ROUNDS` rounds on the machine, kept in the artifact cache beside
the canary's history (`profiler.canary_history`), and fixed from then on, so that every later
row of the machine is restated with the same number (a scale that followed the latest rounds
would move every later label with it). The row records its scale,
so a label can be turned back into its ratio, or restated with another scale; delete the
file to calibrate the machine again.

A ratio holds near the host state it was calibrated in, not across every state: on one host
of the development VM (AMD EPYC) runs timed 1.6x slow kept their fast ratio within about 1.5%
(`benchmarks/bench_duet.py`), on another (Intel Xeon) whole rounds timed with the reference
1.1-2.3x slow restated 12-16% low per unit of that slowdown, in every process
(`benchmarks/bench_duet_level.py`): what slows the small reference more than the model does not
cancel. So a round is restated only while the reference ran within `LEVEL_LIMIT` of its scale
(`reference_level`); `profiler.convergence` discards the others.

Coordinator side; the device only times the reference where it would time the canary.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from profiler.canary_history import CanaryHistory
from profiler.errors import ProtocolError
from profiler.protocol import RoundResult, trimmed_mean


def _around(result: RoundResult) -> tuple[np.ndarray, np.ndarray]:
    """The reference run before and the one after each run (a duet round times n + 1
    reference runs around its n runs)."""
    reference = np.asarray(result.canary_ns, dtype=np.float64)
    if len(reference) != len(result.samples_ns) + 1:
        raise ProtocolError(f"a duet round of {len(result.samples_ns)} runs needs {len(result.samples_ns) + 1} "
                            f"reference runs around them, got {len(reference)}")
    return reference[:-1], reference[1:]


def brackets_ns(result: RoundResult) -> np.ndarray:
    """Each run's bracket: the geometric mean of the reference runs just before and just after it."""
    before, after = _around(result)
    return np.sqrt(before * after)


def steady_runs(result: RoundResult, limit: float) -> list[bool]:
    """Which runs the host did not change speed during: those whose two reference runs are
    within `limit` (relative) of each other."""
    before, after = _around(result)
    return [bool(high <= low * (1 + limit))
            for low, high in zip(np.minimum(before, after), np.maximum(before, after))]


def restated(result: RoundResult, scale_ns: float) -> RoundResult:
    """`result` with each run's time restated as its ratio to its bracket times `scale_ns`
    (whole nanoseconds, as timed runs are)."""
    ratios = np.asarray(result.samples_ns, dtype=np.float64) / brackets_ns(result)
    samples = tuple(int(v) for v in np.rint(ratios * scale_ns))
    return RoundResult(samples, result.other_cpu_fraction, result.canary_ns)


def reference_level(results: Mapping[str, RoundResult], scales_ns: Mapping[str, float]) -> float:
    """How slow the reference ran in a round, against its scale: the medians of its runs of
    every part, added, over the scales, added (1: at the machine's fast level). The median, so
    that a burst over fewer than half of the round's runs, which their brackets restate, does
    not move it."""
    return sum(float(np.median(results[part].canary_ns)) for part in scales_ns) / sum(scales_ns.values())


#: Rounds whose reference ran further than this (relative) from its scale, either way, are not
#: restated: at the 12-16% per unit seen on the Intel host, the bias at the limit stays within
#: the default precision (1%); the fast state's rounds fell within 0.98-1.04 of the scale there.
LEVEL_LIMIT = 0.05

#: Rounds of the reference whose fast level becomes the machine's scale, fixed from then on.
CALIBRATION_ROUNDS = 30


class CalibrationHistory(CanaryHistory):
    """A history that keeps the first `CALIBRATION_ROUNDS` probes only: once full, its level is fixed."""

    @staticmethod
    def _kept(probes: list[float]) -> list[float]:
        return probes[:CALIBRATION_ROUNDS]

    def record(self, probe_ns: float | None) -> None:
        """Add a probe while the calibration is not full (after that, nothing is kept or written)."""
        if len(self.probes) < CALIBRATION_ROUNDS:
            super().record(probe_ns)


def reference_kind(reference_id: str, space_digest: str, fmt: str, threads: int, seq_len: int, beam: int) -> str:
    """The name of a reference's history: its latency depends on all of these."""
    facts = [reference_id, space_digest, fmt, threads, seq_len, beam]
    return "reference-" + hashlib.sha256(json.dumps(facts).encode()).hexdigest()[:16]


class ReferenceScale:
    """The reference's fast level per part (`parts`), from its first rounds timed on this
    machine (`histories`, one `CalibrationHistory` per part; in memory only by default)."""

    def __init__(self, parts: Sequence[str], histories: Mapping[str, CanaryHistory] | None = None,
                 trim: float = 0.1) -> None:
        self.histories = dict(histories) if histories is not None else {part: CalibrationHistory() for part in parts}
        self.trim = trim

    @classmethod
    def for_machine(cls, parts: Sequence[str], environment: Mapping[str, Any], kind: str, trim: float,
                    cache_dir: str | Path | None = None) -> "ReferenceScale":
        return cls(parts, {part: CalibrationHistory.for_machine(environment, cache_dir, f"{kind}-{part}")
                           for part in parts}, trim)

    @property
    def calibration_rounds(self) -> int:
        """How many rounds the scale is made of so far (`CALIBRATION_ROUNDS` once fixed)."""
        return min(len(history.probes) for history in self.histories.values())

    def record(self, part: str, result: RoundResult) -> None:
        """Add the trimmed mean of a round's reference runs of `part`."""
        self.histories[part].record(trimmed_mean(result.canary_ns, self.trim))

    def scale_ns(self, part: str) -> float:
        """The reference's latency of `part` at the machine's fast level, as known now."""
        level = self.histories[part].level_ns()
        if level is None:
            raise ProtocolError(f"no duet round of the {part} has been timed yet: no scale to restate it with")
        return level

    def save(self) -> None:
        for history in self.histories.values():
            history.save()
