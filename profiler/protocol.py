"""The trimmed-mean timing protocol: settings, timed runs, and self-judging measurements.

HAT's protocol (latency_dataset.py): a few untimed warm-up runs, then `runs` timed
runs; sort; drop the fastest and the slowest `trim` fraction; the mean of the
middle is the latency and its (population) standard deviation is reported beside
it. hatprof keeps that number, but splits the runs into `rounds` blocks (so slow
drift on a shared machine shows up as a spread across rounds), times a fixed
reference kernel (the `canary`) between the runs, keeps every raw sample, and records
how much CPU other processes took from the timed CPUs. Which rounds and runs a label
is made of, and when it has converged, is `profiler.convergence`'s to judge.

This module runs on the device side too, so it imports only numpy and the
standard library: never torch, pandas or scikit-learn.
"""
from __future__ import annotations

import dataclasses
import gc
import logging
import math
import os
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from profiler.errors import ProtocolError
from profiler.metadata import current_affinity

logger = logging.getLogger(__name__)

#: A measurement whose trimmed middle varies more than this (std/mean) is unstable (pyperf warns at 10%).
CV_LIMIT = 0.10
#: Other processes using more than this share of the timed CPUs during any round make it unstable.
OTHER_CPU_LIMIT = 0.10
#: Per-round trimmed means that disagree by more than this (max-min over median) make it unstable.
#: Sampling noise alone cannot get there: a round holds ~100 samples, so even at the largest CV we
#: accept (10%) a round's trimmed mean has a standard error near 1%, and the range of three such
#: means exceeds 4% less than 1% of the time (at the ~2% CV typical here, under 1%). A larger
#: spread is drift or contention between rounds (the 9% seen on this shared machine), which is
#: exactly what makes a latency label move; a looser limit would miss it.
ROUND_SPREAD_LIMIT = 0.05

_NS_PER_MS = 1e6


def trim_count(n: int, trim: float) -> int:
    """How many samples to drop at each end: floor(trim x n).

    A tiny tolerance keeps decimal trims exact (0.29 x 100 is 28.999... in binary floating point).
    """
    return math.floor(trim * n + 1e-9)


def _check_trim(trim: Any) -> float:
    if isinstance(trim, bool) or not isinstance(trim, (int, float)) or not 0 <= trim < 0.5:
        raise ProtocolError(f"trim must be in [0, 0.5), got {trim!r}")
    return float(trim)


def _check_count(name: str, value: Any, lowest: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
        kind = "a non-negative" if lowest == 0 else "a positive"
        raise ProtocolError(f"{name} must be {kind} integer, got {value!r}")


def _trimmed(sorted_samples: Sequence[int], trim: float) -> Sequence[int]:
    n = len(sorted_samples)
    k = trim_count(n, trim)
    if n - 2 * k < 1:
        raise ProtocolError(f"trim {trim} leaves no samples out of {n}")
    return sorted_samples[k:n - k]


def trimmed_mean(samples: Sequence[float], trim: float) -> float:
    """HAT's latency: sort, drop floor(trim x n) fastest and as many slowest, mean of the rest.

    Unlike HAT's slicing (`[k:-max(1, k)]`), trim=0 keeps every sample.
    """
    trim = _check_trim(trim)
    if len(samples) == 0:
        raise ProtocolError("cannot take the trimmed mean of no samples")
    middle = _trimmed(sorted(samples), trim)
    return sum(middle) / len(middle)


def _check_number(name: str, value: Any, lowest: float, highest: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lowest <= value < highest:
        bounds = f"[{lowest:g}, {highest:g})" if math.isfinite(highest) else f"at least {lowest:g}"
        raise ProtocolError(f"{name} must be a number {bounds}, got {value!r}")
    return float(value)


_COUNT_FIELDS = {"warmup": 0, "runs": 1, "rounds": 1, "seq_len": 1, "beam": 1, "threads": 1,
                 "max_rounds": 1, "canary_every": 0}


@dataclass(frozen=True)
class TimingProtocol:
    """How one SubTransformer is timed; the same values go into every dataset row.

    Converging (the default, `precision` > 0): rounds of `round_runs` timed runs go on,
    interleaved over architectures, until at least `runs` runs in at least `rounds` clean
    rounds are accepted and the 95% confidence interval of the label across rounds is within
    ±`precision`, or `max_rounds` rounds (clean or not) or `max_seconds` are spent. Rounds
    disturbed by other load (the canary timed every `canary_every` runs, CPU taken by other
    processes, heat or clock throttling, a round mean far from the others) are measured
    again instead of averaged in. The label stays HAT's: the trimmed mean of the accepted runs.

    Fixed (`precision` 0): HAT's protocol exactly: `runs` timed runs in `rounds` rounds,
    every one kept.

    `duet`: a reference SubTransformer is timed before and after every run, in the canary's
    place, and each run is restated by it (`profiler.duet`).
    """

    warmup: int = 5
    runs: int = 300
    trim: float = 0.1
    rounds: int = 6
    seq_len: int = 30
    beam: int = 5
    threads: int = 1
    precision: float = 0.01
    max_rounds: int = 12
    max_seconds: float | None = None
    canary_every: int = 10
    max_temp_c: float = 80.0
    cooldown_s: float = 120.0
    duet: bool = False

    def __post_init__(self) -> None:
        for name, lowest in _COUNT_FIELDS.items():
            _check_count(name, getattr(self, name), lowest)
        if not isinstance(self.duet, bool):
            raise ProtocolError(f"duet must be true or false, got {self.duet!r}")
        object.__setattr__(self, "trim", _check_trim(self.trim))
        object.__setattr__(self, "precision", _check_number("precision", self.precision, 0.0, 1.0))
        if self.max_seconds is not None:
            object.__setattr__(self, "max_seconds", _check_number("max_seconds", self.max_seconds, 1e-9))
        object.__setattr__(self, "max_temp_c", _check_number("max_temp_c", self.max_temp_c, 1.0))
        object.__setattr__(self, "cooldown_s", _check_number("cooldown_s", self.cooldown_s, 0.0))
        if self.runs < self.rounds:
            raise ProtocolError(f"runs ({self.runs}) must be at least rounds ({self.rounds})")
        if self.converging and self.max_rounds < self.rounds:
            raise ProtocolError(f"max_rounds ({self.max_rounds}) must be at least rounds ({self.rounds})")
        smallest = min(self.runs_per_round())
        if smallest - 2 * trim_count(smallest, self.trim) < 1:
            raise ProtocolError(f"trim {self.trim} leaves no samples in a round of {smallest} runs")

    @classmethod
    def hat(cls, **changes: Any) -> "TimingProtocol":
        """HAT's fixed protocol (300 runs after 5 warm-up runs, trim 10%), in 3 interleaved rounds."""
        return cls(**{"rounds": 3, "precision": 0.0, **changes})

    @property
    def converging(self) -> bool:
        return self.precision > 0

    @property
    def round_runs(self) -> int:
        """Timed runs in each round of a converging measurement (every round the same size)."""
        return -(-self.runs // self.rounds)

    def runs_per_round(self) -> list[int]:
        """The planned rounds: converging, `rounds` rounds of `round_runs`; fixed, `runs` split
        over `rounds` as evenly as possible, the larger rounds first."""
        if self.converging:
            return [self.round_runs] * self.rounds
        base, extra = divmod(self.runs, self.rounds)
        return [base + 1 if i < extra else base for i in range(self.rounds)]

    def round_spec(self, runs: int) -> "RoundSpec":
        """What the device needs to time one round of `runs` runs."""
        return RoundSpec(warmup=self.warmup, runs=runs, seq_len=self.seq_len, beam=self.beam,
                         threads=self.threads, canary_every=1 if self.duet else self.canary_every,
                         max_temp_c=self.max_temp_c, cooldown_s=self.cooldown_s, trim=self.trim)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TimingProtocol":
        return _settings_from_dict(cls, data, "timing protocol")


#: HAT's dummy source length (and decoder steps) where a space's is not `TimingProtocol.seq_len`:
#: HAT timed its IWSLT'14 De-En models with 23 tokens, its WMT models with 30.
SPACE_SEQ_LEN = {"iwslt14.de-en": 23}


def default_seq_len(space_name: str | None) -> int:
    """The source length HAT's latency measurement used for the design space named `space_name`."""
    return SPACE_SEQ_LEN.get(space_name or "", TimingProtocol.seq_len)


@dataclass(frozen=True)
class RoundSpec:
    """One round of timed runs as the device sees it: made from a `TimingProtocol`, sent whole
    from the coordinator to the runner (and over the agent's wire as its `to_dict`)."""

    warmup: int = TimingProtocol.warmup
    runs: int = TimingProtocol.runs
    seq_len: int = TimingProtocol.seq_len
    beam: int = TimingProtocol.beam
    threads: int = TimingProtocol.threads
    canary_every: int = TimingProtocol.canary_every
    max_temp_c: float = TimingProtocol.max_temp_c
    cooldown_s: float = TimingProtocol.cooldown_s
    #: Before the round, wait (within `cooldown_s`) while the canary's median is above this
    #: many nanoseconds (0: never): set by the coordinator from the machine's fast level.
    slow_canary_ns: float = 0.0
    #: Not needed to time; the statistics an agent returns beside the samples use it.
    trim: float = TimingProtocol.trim

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.type == "int" or f.type is int:
                _check_count(f.name, getattr(self, f.name), _COUNT_FIELDS.get(f.name, 1))
        object.__setattr__(self, "trim", _check_trim(self.trim))
        object.__setattr__(self, "max_temp_c", _check_number("max_temp_c", self.max_temp_c, 1.0))
        object.__setattr__(self, "cooldown_s", _check_number("cooldown_s", self.cooldown_s, 0.0))
        object.__setattr__(self, "slow_canary_ns", _check_number("slow_canary_ns", self.slow_canary_ns, 0.0))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RoundSpec":
        """A spec from (possibly partial) JSON; unknown fields are refused, missing ones default."""
        return _settings_from_dict(cls, data, "round spec")


def _settings_from_dict(cls: type, data: Mapping[str, Any], what: str) -> Any:
    """`cls(**data)` for a dataclass of settings, refusing what is not a mapping or names unknown fields."""
    if not isinstance(data, Mapping):
        raise ProtocolError(f"a {what} must be a mapping of setting names to values")
    unknown = sorted(map(str, set(data) - {f.name for f in dataclasses.fields(cls)}))
    if unknown:
        raise ProtocolError(f"unknown {what} field(s): {', '.join(unknown)}")
    return cls(**dict(data))


def canary() -> int:
    """The fixed reference kernel timed between runs: a little pure-Python integer work (about
    50 µs on a desktop core). It uses no library, no thread pool and next to no memory, so its
    time moves with the CPU it runs on (shared with other processes, a lower clock, a host
    that slows the VM), not with the cache the model's runs leave behind. (A variant that also
    summed a 2 MB buffer, whose time then depended on what the model's runs had left in the
    cache, judged the model rather than the machine.)"""
    total = 0
    for i in range(2000):
        total += i * i
    return total


#: Canary runs whose median says, before a round, whether the machine is at its fast level.
PROBE_RUNS = 21


def canary_median_ns(clock: Callable[[], int] = time.perf_counter_ns, runs: int = PROBE_RUNS) -> float:
    """The median time of `runs` runs of the canary (the slow-host gate's probe)."""
    times = []
    for _ in range(runs):
        start_ns = clock()
        canary()
        times.append(clock() - start_ns)
    return float(statistics.median(times))


def time_runs(fn: Callable[[], Any], warmup: int, runs: int,
              clock: Callable[[], int] = time.perf_counter_ns) -> list[int]:
    """Call `fn` `warmup` times untimed, then `runs` times; the nanoseconds of each timed call.

    The garbage collector is paused during the timed calls (as `timeit` does), so a
    collection triggered by earlier allocations is not charged to one run.
    """
    _check_count("warmup", warmup, 0)
    _check_count("runs", runs, 1)
    for _ in range(warmup):
        fn()
    return _timed_loop(fn, runs, clock, 0, None)[0]


def _timed_loop(fn: Callable[[], Any], runs: int, clock: Callable[[], int], canary_every: int,
                reference: Callable[[], Any] | None) -> tuple[list[int], list[int]]:
    """`runs` timed calls of `fn`, with the GC paused; with `canary_every` > 0, the reference
    kernel is timed before the first call, after every `canary_every` calls and after the last."""
    samples: list[int] = []
    canary_ns: list[int] = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for i in range(runs):
            if reference is not None and canary_every and i % canary_every == 0:
                start_ns = clock()
                reference()
                canary_ns.append(clock() - start_ns)
            start_ns = clock()
            fn()
            samples.append(clock() - start_ns)
        if reference is not None and canary_every:
            start_ns = clock()
            reference()
            canary_ns.append(clock() - start_ns)
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples, canary_ns


def _busy_ticks(stat_path: Path, cpus: frozenset[int]) -> int | None:
    """Non-idle clock ticks of `cpus` from /proc/stat, or None where it cannot be read."""
    try:
        text = stat_path.read_text()
    except OSError:
        return None
    busy = 0
    seen: set[int] = set()
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or not name[3:].isdigit() or int(name[3:]) not in cpus:
            continue
        # user nice system idle iowait irq softirq steal; guest time is already inside user/nice.
        values = [int(v) for v in rest.split()[:8]]
        values += [0] * (8 - len(values))
        busy += sum(values) - values[3] - values[4]
        seen.add(int(name[3:]))
    return busy if seen == cpus else None


class ContentionProbe:
    """CPU time other processes took from the timed CPUs between `start()` and `stop()`.

    Busy ticks of the CPUs in this process's affinity set (/proc/stat), minus this
    process's own CPU time (all its threads, `time.process_time`), over wall time x
    number of CPUs. /proc/stat counts whole clock ticks, so an allowance of one tick
    per CPU counter, plus one, is subtracted: the result is a lower bound, and a
    short block is never flagged by rounding alone. Where /proc/stat is missing
    (not Linux) or lacks one of the CPUs, the fraction is None.
    """

    def __init__(self, cpus: Iterable[int] | None = None, stat_path: str | os.PathLike = "/proc/stat",
                 clock: Callable[[], int] = time.perf_counter_ns,
                 own_cpu_seconds: Callable[[], float] = time.process_time) -> None:
        self.cpus = frozenset(cpus if cpus is not None else current_affinity())
        self._stat_path = Path(stat_path)
        self._clock = clock
        self._own_cpu_seconds = own_cpu_seconds
        self._start: tuple[int, int, float] | None = None

    def _read(self) -> tuple[int, int, float] | None:
        busy = _busy_ticks(self._stat_path, self.cpus)
        if busy is None:
            return None
        return busy, self._clock(), self._own_cpu_seconds()

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> float | None:
        """The share (0..1) of the timed CPUs used by other processes since `start()`."""
        end = self._read()
        if self._start is None or end is None:
            logger.debug("no per-CPU counters in %s for CPUs %s", self._stat_path, sorted(self.cpus))
            return None
        (busy0, wall0_ns, own0_s), (busy1, wall1_ns, own1_s) = self._start, end
        wall_s = (wall1_ns - wall0_ns) / 1e9
        if wall_s <= 0:
            return None
        tick_s = 1.0 / os.sysconf("SC_CLK_TCK")  # /proc/stat exists, so this is POSIX
        allowance_s = (len(self.cpus) + 1) * tick_s
        other_s = (busy1 - busy0) * tick_s - (own1_s - own0_s) - allowance_s
        return min(1.0, max(0.0, other_s / (wall_s * len(self.cpus))))


@dataclass(frozen=True)
class RoundResult:
    """One block of timed runs, the CPU share other processes took meanwhile, and the canary's
    times around and between the runs (empty when no canary was timed)."""

    samples_ns: tuple[int, ...]
    other_cpu_fraction: float | None
    canary_ns: tuple[int, ...] = ()


def time_round(fn: Callable[[], Any], warmup: int, runs: int,
               clock: Callable[[], int] = time.perf_counter_ns,
               probe: ContentionProbe | None = None, canary_every: int = 0,
               reference: Callable[[], Any] | None = None) -> RoundResult:
    """`time_runs`, with the contention probe watching the timed runs (not the warm-up) and,
    with `canary_every` > 0, the reference kernel (`canary` unless given) timed between them.
    A reference given is warmed up with `fn`, one run of each in turn."""
    _check_count("warmup", warmup, 0)
    _check_count("runs", runs, 1)
    _check_count("canary_every", canary_every, 0)
    probe = probe if probe is not None else ContentionProbe()
    for _ in range(warmup):
        fn()
        if reference is not None:
            reference()
    if canary_every and reference is None:
        reference = canary
    probe.start()
    samples, canary_ns = _timed_loop(fn, runs, clock, canary_every, reference)
    return RoundResult(tuple(samples), probe.stop(), tuple(canary_ns))


def _ratio(num: float, den: float) -> float:
    if den == 0:
        return 0.0 if num == 0 else math.inf
    return num / den


@dataclass(frozen=True)
class Measurement:
    """Raw samples of one timed part (all rounds, in order); every statistic derives from them."""

    samples_ns: tuple[int, ...]
    round_sizes: tuple[int, ...]
    other_cpu: tuple[float | None, ...]
    trim: float

    def __post_init__(self) -> None:
        samples = tuple(self.samples_ns)
        if not samples or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 0
                                  for s in samples):
            raise ProtocolError("samples_ns must be a non-empty list of non-negative integers")
        sizes = tuple(self.round_sizes)
        if not sizes or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes):
            raise ProtocolError(f"round_sizes must be positive integers, got {list(sizes)!r}")
        if sum(sizes) != len(samples):
            raise ProtocolError(f"round_sizes sum to {sum(sizes)} but there are {len(samples)} samples")
        other = tuple(None if o is None else float(o) for o in self.other_cpu)
        if len(other) != len(sizes):
            raise ProtocolError(f"other_cpu has {len(other)} entries for {len(sizes)} rounds")
        if any(o is not None and not 0.0 <= o <= 1.0 for o in other):
            raise ProtocolError(f"other_cpu fractions must be in [0, 1], got {list(other)!r}")
        trim = _check_trim(self.trim)
        smallest = min(sizes)
        if smallest - 2 * trim_count(smallest, trim) < 1:
            raise ProtocolError(f"trim {trim} leaves no samples in a round of {smallest} runs")
        object.__setattr__(self, "samples_ns", tuple(int(s) for s in samples))
        object.__setattr__(self, "round_sizes", sizes)
        object.__setattr__(self, "other_cpu", other)
        object.__setattr__(self, "trim", trim)

    @classmethod
    def from_rounds(cls, rounds: Sequence[RoundResult], trim: float) -> "Measurement":
        return cls(
            samples_ns=tuple(s for r in rounds for s in r.samples_ns),
            round_sizes=tuple(len(r.samples_ns) for r in rounds),
            other_cpu=tuple(r.other_cpu_fraction for r in rounds),
            trim=trim,
        )

    # -- statistics (milliseconds) -------------------------------------------------------------
    @cached_property
    def _sorted(self) -> np.ndarray:
        return np.sort(np.asarray(self.samples_ns, dtype=np.int64))

    @cached_property
    def _middle(self) -> np.ndarray:
        return np.asarray(_trimmed(self._sorted, self.trim))

    @property
    def n(self) -> int:
        return len(self.samples_ns)

    @cached_property
    def trimmed_mean_ms(self) -> float:
        """HAT's number, over all rounds pooled."""
        return int(self._middle.sum()) / len(self._middle) / _NS_PER_MS

    @cached_property
    def std_ms(self) -> float:
        """Population std of the trimmed middle, as HAT reports it (np.std)."""
        return float(np.std(self._middle)) / _NS_PER_MS

    @cached_property
    def cv(self) -> float:
        """Coefficient of variation of the trimmed middle."""
        return _ratio(self.std_ms, self.trimmed_mean_ms)

    @cached_property
    def mean_ms(self) -> float:
        return sum(self.samples_ns) / self.n / _NS_PER_MS

    @cached_property
    def median_ms(self) -> float:
        return float(np.median(self._sorted)) / _NS_PER_MS

    @cached_property
    def p90_ms(self) -> float:
        """90th percentile, linear interpolation between order statistics (numpy's default)."""
        return float(np.percentile(self._sorted, 90)) / _NS_PER_MS

    @cached_property
    def min_ms(self) -> float:
        return int(self._sorted[0]) / _NS_PER_MS

    @cached_property
    def max_ms(self) -> float:
        return int(self._sorted[-1]) / _NS_PER_MS

    @cached_property
    def iqr_over_median(self) -> float:
        q25, q75 = np.percentile(self._sorted, [25, 75])
        return _ratio(float(q75 - q25), float(np.median(self._sorted)))

    @cached_property
    def round_trimmed_means_ms(self) -> tuple[float, ...]:
        means = []
        start = 0
        for size in self.round_sizes:
            means.append(trimmed_mean(self.samples_ns[start:start + size], self.trim) / _NS_PER_MS)
            start += size
        return tuple(means)

    @cached_property
    def round_spread(self) -> float:
        """(max - min) / median of the per-round trimmed means; 0 for a single round."""
        return spread(self.round_trimmed_means_ms)

    @property
    def max_other_cpu(self) -> float | None:
        known = [o for o in self.other_cpu if o is not None]
        return max(known) if known else None

    # -- quality ---------------------------------------------------------------------------------
    def warnings(self) -> list[str]:
        """Why this measurement should not be trusted; empty when it looks stable."""
        found = []
        if self.cv > CV_LIMIT:
            found.append(f"coefficient of variation {self.cv:.1%} is above {CV_LIMIT:.0%}")
        for i, other in enumerate(self.other_cpu):
            if other is not None and other > OTHER_CPU_LIMIT:
                found.append(f"other processes used {other:.0%} of the timed CPUs in round {i + 1} "
                             f"(limit {OTHER_CPU_LIMIT:.0%})")
        if self.round_spread > ROUND_SPREAD_LIMIT:
            found.append(f"trimmed means of the {len(self.round_sizes)} rounds spread by "
                         f"{self.round_spread:.1%} (limit {ROUND_SPREAD_LIMIT:.0%})")
        return found

    @property
    def unstable(self) -> bool:
        return bool(self.warnings())

    def summary(self) -> dict[str, Any]:
        """Every derived statistic, JSON-able."""
        return {
            "n": self.n, "trim": self.trim,
            "trimmed_mean_ms": self.trimmed_mean_ms, "std_ms": self.std_ms, "cv": self.cv,
            "mean_ms": self.mean_ms, "median_ms": self.median_ms, "p90_ms": self.p90_ms,
            "min_ms": self.min_ms, "max_ms": self.max_ms, "iqr_over_median": self.iqr_over_median,
            "round_trimmed_means_ms": list(self.round_trimmed_means_ms),
            "round_spread": self.round_spread, "max_other_cpu": self.max_other_cpu,
            "warnings": self.warnings(),
        }

    def to_dict(self) -> dict[str, Any]:
        return {"samples_ns": list(self.samples_ns), "round_sizes": list(self.round_sizes),
                "other_cpu": list(self.other_cpu), "trim": self.trim}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Measurement":
        if not isinstance(data, Mapping):
            raise ProtocolError("a measurement must be a mapping")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        missing = [n for n in names if n not in data]
        if unknown or missing:
            raise ProtocolError(f"measurement fields: unknown {unknown or 'none'}, missing {missing or 'none'}")
        values = dict(data)
        for name in ("samples_ns", "round_sizes", "other_cpu"):
            if isinstance(values[name], (str, bytes)) or not isinstance(values[name], Iterable):
                raise ProtocolError(f"measurement field {name} must be a list")
            values[name] = tuple(values[name])
        return cls(**values)


def spread(values: Sequence[float]) -> float:
    """(max - min) / median: how far repeated estimates of one latency disagree."""
    if len(values) < 2:
        return 0.0
    return _ratio(max(values) - min(values), statistics.median(values))
