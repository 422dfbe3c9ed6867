"""Clean rounds and converging measurement: which rounds a label is made of, and when it is known.

On a shared or throttling machine the runs of a round can all be slowed together (other
processes on the CPU, a host that slows the VM for a few hundred milliseconds, a hot board).
A round so disturbed is not averaged in: it is discarded and another round is timed. A round
is disturbed when
- `contention`: other processes took more than `OTHER_CPU_LIMIT` of the timed CPUs;
- `canary`: less than half of its runs are clean. The reference kernel (the canary) is timed
  before, between every `canary_every` runs and after them; the runs between two canaries
  are clean when neither canary ran more than `CANARY_LIMIT` slower than the session's
  typical (median) canary, or than the machine's fast level when that is lower (the gate's
  probes, `profiler.canary_history`). Runs that are not clean are left out of the label even
  in an accepted round: the canary is independent of the model, so choosing runs by it judges the
  machine, not the architecture, and a burst of a few hundred milliseconds costs only the
  runs it touched;
- `thermal`: the gate's wait for a cool, unthrottled board ran out;
- `slow`: the gate's wait for the host to be back at its fast level ran out (`profiler.gate`,
  `profiler.canary_history`: a host can be slow for longer than a process measures, and the
  session's own canaries then look typical);
- `outlier`: its total (encoder + decoder trimmed mean of its clean runs) is further from the
  median of the other clean rounds than `OUTLIER_FLOOR` and `OUTLIER_MADS` robust deviations
  (judged only with at least `MIN_ROUNDS_FOR_OUTLIERS` clean rounds, and on both sides).

In duet mode (`profiler.duet`) the reference model takes the canary's place: a run is clean
when its two reference runs are within `CANARY_LIMIT` of each other (the host did not change
speed during it), a round with less than half of its runs clean is discarded (`bracket`), and
every run's time is restated by its bracket. A round whose reference ran further than
`profiler.duet.LEVEL_LIMIT` from its scale is discarded too (`reference`): a ratio timed in
another state of the host than the scale's need not be the fast state's ratio.

The label's uncertainty is a 95% Student-t interval of the mean of the accepted rounds'
totals: rounds are timed minutes apart, interleaved with other architectures and spread
over several measuring processes, so their spread is the real repeatability of the label
(an interval from the runs of one round would understate it about tenfold on a shared VM).
"""
from __future__ import annotations

import dataclasses
import math
import statistics
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from profiler.canary_history import CanaryHistory
from profiler.duet import LEVEL_LIMIT, ReferenceScale, reference_level, restated, steady_runs
from profiler.protocol import OTHER_CPU_LIMIT, Measurement, RoundResult, TimingProtocol, trimmed_mean
from profiler.target import RoundPair

#: Runs next to a canary this much slower than the session's typical (median) canary are not clean.
CANARY_LIMIT = 0.25
#: A round with less than this share of clean runs (in either part) is discarded whole.
MIN_CLEAN_SHARE = 0.5
#: Round totals within this relative distance of the median are never outliers.
OUTLIER_FLOOR = 0.02
#: ... and beyond this many robust standard deviations (1.4826 MAD) they are.
OUTLIER_MADS = 4.0
MIN_ROUNDS_FOR_OUTLIERS = 4
PARTS = ("encoder", "decoder")
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


def clean_runs(result: RoundResult, canary_every: int, reference_ns: float | None) -> list[bool]:
    """Which runs of a part are clean: those whose two bracketing canaries were both within
    `CANARY_LIMIT` of the reference (all of them without canaries or a reference yet)."""
    n = len(result.samples_ns)
    if not result.canary_ns or not canary_every or not reference_ns:
        return [True] * n
    limit = reference_ns * (1 + CANARY_LIMIT)
    calm = [c <= limit for c in result.canary_ns]
    return [calm[i // canary_every] and calm[min(i // canary_every + 1, len(calm) - 1)] for i in range(n)]


def _kept(result: RoundResult, mask: list[bool]) -> RoundResult:
    return RoundResult(tuple(s for s, keep in zip(result.samples_ns, mask) if keep), result.other_cpu_fraction,
                       result.canary_ns)


def disturbance(pair: RoundPair) -> str | None:
    """Why this round must not be averaged in, whatever its canaries say; None when nothing does."""
    if any(r.other_cpu_fraction is not None and r.other_cpu_fraction > OTHER_CPU_LIMIT
           for r in (pair.encoder, pair.decoder)):
        return "contention"
    gate = pair.gate or {}
    if gate.get("timed_out"):
        return "slow" if gate.get("unfit") == "slow" else "thermal"
    return None


def round_level(pair: RoundPair, scales_ns: dict[str, float]) -> float:
    """How slow a duet round's reference ran against its scale (`profiler.duet.reference_level`)."""
    return reference_level({part: getattr(pair, part) for part in PARTS}, scales_ns)


def outliers(totals: Sequence[float]) -> set[int]:
    """Indices of round totals far from the others (see the module docstring)."""
    if len(totals) < MIN_ROUNDS_FOR_OUTLIERS:
        return set()
    median = statistics.median(totals)
    mad = statistics.median(abs(t - median) for t in totals)
    limit = max(OUTLIER_FLOOR, OUTLIER_MADS * 1.4826 * mad / median)
    return {i for i, t in enumerate(totals) if abs(t / median - 1) > limit}


class CanaryReference:
    """The canary time runs are judged against: the session's typical (median) canary of its
    last `window` runs, or the machine's fast level (`CanaryHistory`, from the gate's probes)
    when that is lower. Judging against the typical time rather than the fastest keeps a
    machine's ordinary jitter from discarding everything; the machine's fast level keeps a
    session that is mostly slow from passing its slow rounds as typical."""

    def __init__(self, window: int = 2000, history: CanaryHistory | None = None) -> None:
        self._samples: deque[int] = deque(maxlen=window)
        self.history = history if history is not None else CanaryHistory()

    @property
    def typical_ns(self) -> float | None:
        if not self._samples:
            return None
        session, fast = statistics.median(self._samples), self.history.fast_ns
        return session if fast is None else min(session, fast)

    def update(self, pair: RoundPair) -> None:
        self._samples.extend(pair.encoder.canary_ns + pair.decoder.canary_ns)


@dataclass(frozen=True)
class JudgedRound:
    """One timed round, its verdict (None: accepted), which runs of each part are clean and,
    in duet mode, the reference's scale per part that its runs are restated with."""

    pair: RoundPair
    verdict: str | None
    masks: dict[str, list[bool]]
    scales_ns: dict[str, float] | None = None

    def _timed(self, part: str) -> RoundResult:
        result = getattr(self.pair, part)
        return result if self.scales_ns is None else restated(result, self.scales_ns[part])

    def kept(self, masks: dict[str, list[bool]]) -> RoundPair:
        """The round with the runs of `masks` only (restated, in duet mode)."""
        return dataclasses.replace(self.pair, **{part: _kept(self._timed(part), mask) for part, mask in masks.items()})

    @property
    def clean(self) -> RoundPair:
        """The round with its clean runs only."""
        return self.kept(self.masks)

    @property
    def every_run(self) -> dict[str, list[bool]]:
        """Masks that keep every run of the round."""
        return {part: [True] * len(mask) for part, mask in self.masks.items()}

    @property
    def dropped(self) -> dict[str, list[int]]:
        """The samples of the runs left out for their canaries, by part."""
        return {part: [s for s, keep in zip(getattr(self.pair, part).samples_ns, mask) if not keep]
                for part, mask in self.masks.items()}


@dataclass
class ArchRounds:
    """The rounds of one architecture so far, and whether its label is known. Rounds are
    judged afresh on every question, against the session's canary reference as it is then."""

    protocol: TimingProtocol
    reference: CanaryReference = field(default_factory=CanaryReference)
    pairs: list[RoundPair] = field(default_factory=list)
    seconds: float = 0.0
    #: Duet mode: the reference model's scale (its rounds are recorded there, not in `reference`).
    duet: ReferenceScale | None = None

    def add(self, pair: RoundPair, seconds: float) -> str | None:
        """Record one timed round (and its canaries, or its reference runs, in the reference);
        its verdict as of now."""
        if self.duet is None:
            self.reference.update(pair)
        else:
            for part in PARTS:
                self.duet.record(part, getattr(pair, part))
        self.pairs.append(pair)
        self.seconds += seconds
        return self.judged()[-1].verdict

    def _masks(self, pair: RoundPair, reference_ns: float | None) -> dict[str, list[bool]]:
        p = self.protocol
        if self.duet is None:
            return {part: clean_runs(getattr(pair, part), p.canary_every, reference_ns) for part in PARTS}
        return {part: steady_runs(getattr(pair, part), CANARY_LIMIT) if p.converging
                else [True] * len(getattr(pair, part).samples_ns) for part in PARTS}

    def judged(self) -> list[JudgedRound]:
        p = self.protocol
        reference = self.reference.typical_ns if p.converging else None
        scales = None if self.duet is None or not self.pairs else {part: self.duet.scale_ns(part) for part in PARTS}
        rounds = []
        for pair in self.pairs:
            masks = self._masks(pair, reference)
            verdict = disturbance(pair) if p.converging else None
            if (verdict is None and p.converging and scales is not None
                    and abs(round_level(pair, scales) - 1) > LEVEL_LIMIT):
                verdict = "reference"
            if verdict is None and min(sum(m) / len(m) for m in masks.values()) < MIN_CLEAN_SHARE:
                verdict = "canary" if self.duet is None else "bracket"
            rounds.append(JudgedRound(pair, verdict, masks, scales))
        if not p.converging:
            return rounds
        kept = [i for i, r in enumerate(rounds) if r.verdict is None]
        for k in outliers([round_total_ms(rounds[i].clean, p.trim) for i in kept]):
            rounds[kept[k]] = dataclasses.replace(rounds[kept[k]], verdict="outlier")
        return rounds

    def accepted(self) -> list[RoundPair]:
        """The clean runs of the accepted rounds."""
        return [r.clean for r in self.judged() if r.verdict is None]

    def label_rounds(self) -> list[tuple[JudgedRound, dict[str, list[bool]]]]:
        """The rounds the label is made of, each with the runs it keeps: the clean runs of the
        accepted rounds (every run in the fixed protocol), or every run of every round when
        none was accepted (such a row is flagged, never silently wrong)."""
        judged = self.judged()
        accepted = [(r, r.masks) for r in judged if r.verdict is None]
        return accepted or [(r, r.every_run) for r in judged]

    def discarded(self) -> Counter:
        return Counter(r.verdict for r in self.judged() if r.verdict is not None)

    def interval(self) -> float | None:
        return interval([round_total_ms(p, self.protocol.trim) for p in self.accepted()])

    @property
    def converged(self) -> bool:
        """Enough clean runs in enough clean rounds, and the interval within the precision."""
        p = self.protocol
        if not p.converging:
            return len(self.pairs) >= p.rounds
        accepted = self.accepted()
        runs = min(sum(len(getattr(a, part).samples_ns) for a in accepted) for part in PARTS)
        half = interval([round_total_ms(a, p.trim) for a in accepted])
        return len(accepted) >= p.rounds and runs >= p.runs and half is not None and half <= p.precision

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
        """The label's encoder and decoder measurements: the runs of `label_rounds`, restated
        by their brackets in duet mode."""
        rounds = [r.kept(masks) for r, masks in self.label_rounds()]
        return (Measurement.from_rounds([r.encoder for r in rounds], self.protocol.trim),
                Measurement.from_rounds([r.decoder for r in rounds], self.protocol.trim))
