"""Clean rounds and converging measurement: which rounds a label is made of, and when it is known.

On a shared or throttling machine the runs of a round can all be slowed together (other
processes on the CPU, a host that slows the VM for a few hundred milliseconds, a hot board).
A round so disturbed is not averaged in: it is discarded and another round is timed. A round
is disturbed when
- `contention`: other processes took more than `OTHER_CPU_LIMIT` of the timed CPUs;
- `canary`: the reference kernel timed between its runs was, by its median, more than
  `CANARY_LIMIT` slower than the fastest canary this session has seen (the canary is
  independent of the model, so it judges the machine, not the architecture);
- `thermal`: the thermal gate's wait for a cool, unthrottled board ran out;
- `outlier`: its total (encoder + decoder trimmed mean) is further from the median of the
  other clean rounds than `OUTLIER_FLOOR` and `OUTLIER_MADS` robust deviations (judged only
  with at least `MIN_ROUNDS_FOR_OUTLIERS` clean rounds, and on both sides).

The label's uncertainty is a 95% Student-t interval of the mean of the accepted rounds'
totals: rounds are timed minutes apart, interleaved with other architectures and spread
over several measuring processes, so their spread is the real repeatability of the label
(an interval from the runs of one round would understate it about tenfold on a shared VM).
"""
from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from profiler.protocol import OTHER_CPU_LIMIT, Measurement, TimingProtocol, trimmed_mean
from profiler.target import RoundPair

#: A round whose canary runs (median) are this much slower than the session's fastest is disturbed.
CANARY_LIMIT = 0.15
#: Round totals within this relative distance of the median are never outliers.
OUTLIER_FLOOR = 0.02
#: ... and beyond this many robust standard deviations (1.4826 MAD) they are.
OUTLIER_MADS = 4.0
MIN_ROUNDS_FOR_OUTLIERS = 4
#: Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom; beyond, 30's (conservative).
_T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
          2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
          2.052, 2.048, 2.045, 2.042)


def t_975(dof: int) -> float:
    return _T_975[min(dof, len(_T_975)) - 1]


def interval(totals: Sequence[float]) -> float | None:
    """Relative half-width of the 95% interval of the mean of `totals`; None for fewer than 2."""
    if len(totals) < 2:
        return None
    mean = statistics.fmean(totals)
    if mean <= 0:
        return math.inf
    return t_975(len(totals) - 1) * statistics.stdev(totals) / math.sqrt(len(totals)) / mean


def round_total_ms(pair: RoundPair, trim: float) -> float:
    """A round's label: the trimmed means of its encoder and decoder runs, added."""
    return (trimmed_mean(pair.encoder.samples_ns, trim) + trimmed_mean(pair.decoder.samples_ns, trim)) / 1e6


def canary_median_ns(pair: RoundPair) -> float | None:
    samples = pair.encoder.canary_ns + pair.decoder.canary_ns
    return statistics.median(samples) if samples else None


def disturbance(pair: RoundPair, canary_reference_ns: float | None) -> str | None:
    """Why this round, on its own, must not be averaged in; None when nothing says so."""
    if any(r.other_cpu_fraction is not None and r.other_cpu_fraction > OTHER_CPU_LIMIT
           for r in (pair.encoder, pair.decoder)):
        return "contention"
    if (pair.gate or {}).get("timed_out"):
        return "thermal"
    median = canary_median_ns(pair)
    if median is not None and canary_reference_ns and median > canary_reference_ns * (1 + CANARY_LIMIT):
        return "canary"
    return None


def outliers(totals: Sequence[float]) -> set[int]:
    """Indices of round totals far from the others (see the module docstring)."""
    if len(totals) < MIN_ROUNDS_FOR_OUTLIERS:
        return set()
    median = statistics.median(totals)
    mad = statistics.median(abs(t - median) for t in totals)
    limit = max(OUTLIER_FLOOR, OUTLIER_MADS * 1.4826 * mad / median)
    return {i for i, t in enumerate(totals) if abs(t / median - 1) > limit}


class CanaryReference:
    """The fastest canary run seen in a measuring session: the machine at its quietest."""

    def __init__(self) -> None:
        self.fastest_ns: int | None = None

    def update(self, pair: RoundPair) -> None:
        samples = pair.encoder.canary_ns + pair.decoder.canary_ns
        if samples:
            fastest = min(samples)
            self.fastest_ns = fastest if self.fastest_ns is None else min(self.fastest_ns, fastest)


@dataclass
class ArchRounds:
    """The rounds of one architecture so far, judged, and whether its label is known."""

    protocol: TimingProtocol
    pairs: list[RoundPair] = field(default_factory=list)
    reasons: list[str | None] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, pair: RoundPair, seconds: float, canary_reference_ns: float | None) -> str | None:
        """Record one timed round; the reason it is discarded on its own, if any."""
        reason = disturbance(pair, canary_reference_ns) if self.protocol.converging else None
        self.pairs.append(pair)
        self.reasons.append(reason)
        self.seconds += seconds
        return reason

    def verdicts(self) -> list[str | None]:
        """Each round's reason to be discarded (None: accepted), outliers included."""
        verdicts = list(self.reasons)
        if not self.protocol.converging:
            return verdicts
        clean = [i for i, r in enumerate(verdicts) if r is None]
        totals = [round_total_ms(self.pairs[i], self.protocol.trim) for i in clean]
        for k in outliers(totals):
            verdicts[clean[k]] = "outlier"
        return verdicts

    def accepted(self) -> list[RoundPair]:
        return [p for p, v in zip(self.pairs, self.verdicts()) if v is None]

    def discarded(self) -> Counter:
        return Counter(v for v in self.verdicts() if v is not None)

    def interval(self) -> float | None:
        return interval([round_total_ms(p, self.protocol.trim) for p in self.accepted()])

    @property
    def converged(self) -> bool:
        """Enough clean runs in enough clean rounds, and the interval within the precision."""
        p = self.protocol
        if not p.converging:
            return len(self.pairs) >= p.rounds
        accepted = self.accepted()
        half = self.interval()
        return (len(accepted) >= p.rounds and sum(len(a.encoder.samples_ns) for a in accepted) >= p.runs
                and half is not None and half <= p.precision)

    @property
    def budget_spent(self) -> bool:
        p = self.protocol
        if not p.converging:
            return len(self.pairs) >= p.rounds
        return len(self.pairs) >= p.max_rounds or (p.max_seconds is not None and self.seconds >= p.max_seconds)

    @property
    def done(self) -> bool:
        return self.converged or self.budget_spent

    def measurements(self) -> tuple[Measurement, Measurement]:
        """The label's encoder and decoder measurements: the accepted rounds (all rounds in the
        fixed protocol, or when none was accepted: such a row is flagged, never silently wrong)."""
        rounds = self.accepted() or self.pairs
        return (Measurement.from_rounds([r.encoder for r in rounds], self.protocol.trim),
                Measurement.from_rounds([r.decoder for r in rounds], self.protocol.trim))
