from __future__ import annotations

import dataclasses
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from profiler.errors import HatprofError, ProtocolError
from profiler.protocol import (CV_LIMIT, OTHER_CPU_LIMIT, ROUND_SPREAD_LIMIT, ContentionProbe, Measurement,
                               RoundResult, RoundSpec, TimingProtocol, time_round, time_runs, trim_count, trimmed_mean)

REPO = Path(__file__).resolve().parents[1]


class FakeClock:
    """A perf_counter_ns stand-in: each timed call lasts the next of `durations` ns."""

    def __init__(self, durations, gap_ns=7):
        self.timestamps = []
        t = 1_000_000
        for d in durations:
            self.timestamps += [t, t + d]
            t += d + gap_ns
        self.calls = 0

    def __call__(self) -> int:
        value = self.timestamps[self.calls]
        self.calls += 1
        return value


class FakeProbe:
    def __init__(self, fraction, events):
        self.fraction, self.events = fraction, events

    def start(self):
        self.events.append("start")

    def stop(self):
        self.events.append("stop")
        return self.fraction


def middle(samples, k):
    ordered = sorted(samples)
    return ordered[k:len(ordered) - k]


# -- trimmed mean ---------------------------------------------------------------------------------

def test_trimmed_mean_drops_floor_trim_n_at_each_end():
    rng = random.Random(3)
    samples = [rng.randrange(1_000, 9_000) for _ in range(20)]
    assert trimmed_mean(samples, 0.1) == statistics.mean(sorted(samples)[2:18])
    assert trimmed_mean(samples, 0.25) == statistics.mean(sorted(samples)[5:15])


def test_trimmed_mean_matches_hats_slicing_for_300_runs():
    rng = random.Random(4)
    samples = [rng.uniform(10, 50) for _ in range(300)]
    hat = sorted(samples)[int(300 * 0.1): -max(1, int(300 * 0.1))]  # HAT's latency_dataset.py
    assert trimmed_mean(samples, 0.1) == pytest.approx(statistics.mean(hat), rel=1e-14)


@pytest.mark.parametrize("samples, trim, expected", [
    ([5, 1, 9], 0.0, 5.0),                 # trim 0 keeps everything (HAT would drop the slowest)
    ([7], 0.1, 7.0),                       # floor(0.1) = 0
    ([1, 2, 100], 0.34, 2.0),              # floor(1.02) = 1: only the middle remains
    ([1, 100], 0.49, 50.5),                # floor(0.98) = 0
    (list(range(10)), 0.29, 4.5),          # floor(2.9) = 2
    (list(range(100)) + [10_000], 0.0, (sum(range(100)) + 10_000) / 101),
])
def test_trimmed_mean_edge_cases(samples, trim, expected):
    assert trimmed_mean(samples, trim) == expected


def test_trim_count_is_exact_for_decimal_trims():
    assert 0.29 * 100 < 29  # the binary float falls short ...
    assert trim_count(100, 0.29) == 29  # ... but 29% of 100 samples is 29
    assert trim_count(300, 0.1) == 30
    assert trim_count(9, 0.1) == 0


@pytest.mark.parametrize("trim", [0.5, 0.6, -0.1, True, "0.1", None])
def test_trimmed_mean_rejects_bad_trim(trim):
    with pytest.raises(ProtocolError, match="trim"):
        trimmed_mean([1, 2, 3], trim)


def test_trimmed_mean_of_nothing_is_an_error():
    with pytest.raises(ProtocolError):
        trimmed_mean([], 0.1)


# -- TimingProtocol -------------------------------------------------------------------------------

def test_protocol_defaults_are_hats():
    p = TimingProtocol()
    assert (p.warmup, p.runs, p.trim, p.seq_len, p.beam, p.threads) == (5, 300, 0.1, 30, 5, 1)
    assert p.converging and p.precision == 0.01 and p.runs_per_round() == [50] * 6
    hat = TimingProtocol.hat()
    assert not hat.converging and hat.runs_per_round() == [100, 100, 100]


def test_converging_rounds_are_equal_and_cover_the_runs():
    p = TimingProtocol(runs=100, rounds=6)
    assert p.round_runs == 17 and p.runs_per_round() == [17] * 6
    spec = p.round_spec(17)
    assert (spec.runs, spec.warmup, spec.canary_every, spec.max_temp_c) == (17, 5, 10, 80.0)
    assert RoundSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(ProtocolError, match="bogus"):
        RoundSpec.from_dict({"bogus": 1})
    with pytest.raises(ProtocolError, match="canary_every"):
        RoundSpec(canary_every=-1)


@pytest.mark.parametrize("runs, rounds, expected", [
    (300, 3, [100, 100, 100]), (10, 3, [4, 3, 3]), (7, 7, [1] * 7), (301, 1, [301]), (11, 4, [3, 3, 3, 2]),
])
def test_runs_per_round_splits_evenly(runs, rounds, expected):
    split = TimingProtocol.hat(runs=runs, rounds=rounds, trim=0.0).runs_per_round()
    assert split == expected
    assert sum(split) == runs and max(split) - min(split) <= 1


@pytest.mark.parametrize("kwargs, field", [
    ({"trim": 0.6}, "trim"), ({"trim": 0.5}, "trim"), ({"trim": -0.01}, "trim"), ({"trim": "0.1"}, "trim"),
    ({"runs": 0}, "runs"), ({"rounds": 0}, "rounds"), ({"runs": 2, "rounds": 3}, "rounds"),
    ({"threads": 0}, "threads"), ({"warmup": -1}, "warmup"), ({"seq_len": 1.5}, "seq_len"),
    ({"beam": "5"}, "beam"), ({"threads": True}, "threads"), ({"precision": 1.0}, "precision"),
    ({"precision": -0.1}, "precision"), ({"max_rounds": 3}, "max_rounds"), ({"max_seconds": 0}, "max_seconds"),
    ({"canary_every": -1}, "canary_every"), ({"max_temp_c": "hot"}, "max_temp_c"),
    ({"cooldown_s": -1}, "cooldown_s"),
])
def test_protocol_validation_names_the_field(kwargs, field):
    with pytest.raises(ProtocolError, match=field) as info:
        TimingProtocol(**kwargs)
    assert isinstance(info.value, HatprofError)
    assert "\n" not in str(info.value)


def test_protocol_round_trip_and_unknown_fields():
    p = TimingProtocol(warmup=0, runs=12, trim=0.25, rounds=2, seq_len=23, beam=4, threads=2)
    assert TimingProtocol.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    with pytest.raises(ProtocolError, match="latiter"):
        TimingProtocol.from_dict({**p.to_dict(), "latiter": 300})
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.runs = 5  # type: ignore[misc]


def test_protocol_trim_is_stored_as_float():
    assert TimingProtocol(trim=0).trim == 0.0 and isinstance(TimingProtocol(trim=0).trim, float)


# -- timed runs -----------------------------------------------------------------------------------

def test_time_runs_returns_each_runs_nanoseconds_and_skips_warmup():
    durations = [30, 10, 20, 50, 40]
    clock = FakeClock(durations)
    calls = []
    samples = time_runs(lambda: calls.append(1), warmup=3, runs=5, clock=clock)
    assert samples == durations
    assert len(calls) == 8
    assert clock.calls == 10  # warm-up runs read no clock


def test_time_runs_restores_the_garbage_collector():
    assert gc.isenabled()
    seen = []
    time_runs(lambda: seen.append(gc.isenabled()), warmup=1, runs=2, clock=FakeClock([1, 1]))
    assert seen == [True, False, False] and gc.isenabled()

    def boom():
        raise RuntimeError("runner failed")
    with pytest.raises(RuntimeError):
        time_runs(boom, warmup=0, runs=1, clock=FakeClock([1]))
    assert gc.isenabled()


@pytest.mark.parametrize("warmup, runs", [(-1, 5), (0, 0), (1, 2.0)])
def test_time_runs_validates_counts(warmup, runs):
    with pytest.raises(ProtocolError):
        time_runs(lambda: None, warmup=warmup, runs=runs, clock=FakeClock([1]))


def test_time_round_probes_only_the_timed_runs():
    events = []
    result = time_round(lambda: events.append("run"), warmup=2, runs=3,
                        clock=FakeClock([5, 6, 7]), probe=FakeProbe(0.25, events))
    assert events == ["run", "run", "start", "run", "run", "run", "stop"]
    assert result == RoundResult((5, 6, 7), 0.25)


def test_the_canary_is_timed_before_the_runs_between_them_and_after():
    events = []
    # canary, run, run, canary, run, run, canary, run, canary: each call's duration comes from the clock
    clock = FakeClock([100, 5, 6, 101, 7, 8, 102, 9, 103])
    result = time_round(lambda: events.append("run"), warmup=1, runs=5, clock=clock, probe=FakeProbe(0.0, events),
                        canary_every=2, reference=lambda: events.append("canary"))
    # a reference given is warmed up too, in turn with the runs
    assert events == ["run", "canary", "start", "canary", "run", "run", "canary", "run", "run", "canary", "run",
                      "canary", "stop"]
    assert result == RoundResult((5, 6, 7, 8, 9), 0.0, (100, 101, 102, 103))


# -- contention probe -----------------------------------------------------------------------------

def _stat(cpu1: str) -> str:
    return ("cpu  900 0 900 9000 0 0 0 0 0 0\n"
            "cpu0 400 0 400 4000 0 0 0 0 0 0\n"
            f"cpu1 {cpu1}\n"
            "intr 12345 0 0\nctxt 999\n")


def test_contention_probe_counts_other_processes_busy_time(tmp_path):
    stat = tmp_path / "stat"
    wall = iter([0, 4_000_000_000])  # 4 s
    own = iter([10.0, 10.5])         # this process used 0.5 s of CPU
    probe = ContentionProbe(cpus={1}, stat_path=stat, clock=lambda: next(wall), own_cpu_seconds=lambda: next(own))
    stat.write_text(_stat("100 0 50 1000 10 0 0 0 0 0"))
    probe.start()
    stat.write_text(_stat("300 0 100 1100 20 5 5 0 0 0"))
    tick = 1 / os.sysconf("SC_CLK_TCK")
    busy_ticks = (300 + 100 + 5 + 5) - (100 + 50)  # user+nice+system+irq+softirq+steal; not idle/iowait
    expected = (busy_ticks * tick - 0.5 - 2 * tick) / 4.0  # minus 2 ticks of rounding allowance (1 CPU + 1)
    assert probe.stop() == pytest.approx(expected, rel=1e-12)


def test_contention_probe_is_clamped_to_a_fraction(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text(_stat("0 0 0 0 0 0 0 0 0 0"))
    probe = ContentionProbe(cpus={1}, stat_path=stat, clock=iter([0, 10**9, 0, 10**9]).__next__,
                            own_cpu_seconds=iter([0.0, 0.0, 0.0, 5.0]).__next__)
    probe.start()
    stat.write_text(_stat("100000 0 0 0 0 0 0 0 0 0"))
    assert probe.stop() == 1.0
    probe.start()
    assert probe.stop() == 0.0  # own time larger than the CPU's busy time


def test_contention_probe_without_proc_stat_gives_none(tmp_path):
    assert ContentionProbe(stat_path=tmp_path / "missing").stop() is None
    stat = tmp_path / "stat"
    stat.write_text(_stat("1 0 1 1 0 0 0 0 0 0"))
    probe = ContentionProbe(cpus={1, 7}, stat_path=stat)  # cpu7 is not in the file
    probe.start()
    assert probe.stop() is None


@pytest.mark.skipif(not Path("/proc/stat").exists() or not hasattr(os, "sched_setaffinity"),
                    reason="needs Linux /proc/stat and CPU affinity")
def test_contention_probe_sees_a_busy_process_on_the_same_cpu():
    cpu = max(os.sched_getaffinity(0))
    child = subprocess.Popen([sys.executable, "-c", "print('ready', flush=True)\nwhile True: pass"],
                             stdout=subprocess.PIPE, text=True)
    try:
        os.sched_setaffinity(child.pid, {cpu})
        assert child.stdout.readline().strip() == "ready"
        probe = ContentionProbe(cpus={cpu})
        probe.start()
        time.sleep(0.5)  # this process idles; the child spins on the probed CPU
        fraction = probe.stop()
    finally:
        child.kill()
        child.wait()
    assert fraction is not None and fraction > 0.5


# -- Measurement ----------------------------------------------------------------------------------

def _rounds(values_per_round, other=None):
    other = other or [0.0] * len(values_per_round)
    return [RoundResult(tuple(v), o) for v, o in zip(values_per_round, other)]


def test_measurement_statistics_match_independent_computation():
    rng = random.Random(11)
    rounds = [[rng.randrange(40_000_000, 46_000_000) for _ in range(n)] for n in (34, 33, 33)]
    rounds[1][5] = 90_000_000  # a slow outlier
    m = Measurement.from_rounds(_rounds(rounds, [0.01, None, 0.02]), trim=0.1)
    pooled = [s for r in rounds for s in r]
    mid = middle(pooled, 10)  # floor(0.1 x 100)
    assert m.samples_ns == tuple(pooled) and m.round_sizes == (34, 33, 33)
    assert m.trimmed_mean_ms == statistics.mean(mid) / 1e6
    assert m.mean_ms == pytest.approx(statistics.mean(pooled) / 1e6, rel=1e-14)
    assert m.std_ms == pytest.approx(statistics.pstdev(mid) / 1e6, rel=1e-12)
    assert m.cv == pytest.approx(statistics.pstdev(mid) / statistics.mean(mid), rel=1e-12)
    assert m.median_ms == statistics.median(pooled) / 1e6
    assert m.p90_ms == pytest.approx(statistics.quantiles(pooled, n=10, method="inclusive")[8] / 1e6, rel=1e-14)
    assert m.min_ms == min(pooled) / 1e6
    q = statistics.quantiles(pooled, n=4, method="inclusive")
    assert m.iqr_over_median == pytest.approx((q[2] - q[0]) / statistics.median(pooled), rel=1e-12)
    per_round = [statistics.mean(middle(r, 3)) / 1e6 for r in rounds]  # floor(0.1 x 33 or 34) = 3
    assert m.round_trimmed_means_ms == pytest.approx(per_round, rel=1e-14)
    assert m.round_spread == pytest.approx((max(per_round) - min(per_round)) / statistics.median(per_round))
    assert m.max_other_cpu == 0.02


def test_pooled_trimmed_mean_is_not_the_mean_of_round_means():
    m = Measurement.from_rounds(_rounds([[10] * 9 + [100], [20] * 10]), trim=0.1)
    assert m.trimmed_mean_ms == statistics.mean(middle([10] * 9 + [100] + [20] * 10, 2)) / 1e6
    assert m.trimmed_mean_ms != statistics.mean(m.round_trimmed_means_ms)


def test_single_round_has_no_spread():
    m = Measurement.from_rounds(_rounds([[3, 1, 2]]), trim=0.0)
    assert m.round_spread == 0.0 and m.trimmed_mean_ms == 2 / 1e6


def _alternating(base, delta, n):
    return [base + delta if i % 2 else base - delta for i in range(n)]


def test_a_stable_measurement_has_no_warnings():
    m = Measurement.from_rounds(_rounds([_alternating(10_000_000, 100_000, 20)] * 3), trim=0.1)
    assert m.warnings() == [] and not m.unstable


def test_high_cv_is_unstable():
    noisy = _alternating(10_000_000, 1_100_000, 20)  # std/mean = 11%
    m = Measurement.from_rounds(_rounds([noisy] * 3), trim=0.1)
    assert m.cv == pytest.approx(0.11) and m.cv > CV_LIMIT
    assert m.unstable and any("coefficient of variation" in w for w in m.warnings())
    calm = Measurement.from_rounds(_rounds([_alternating(10_000_000, 900_000, 20)] * 3), trim=0.1)
    assert not calm.unstable  # 9% is below the limit


def test_contended_round_is_unstable():
    samples = [_alternating(10_000_000, 100_000, 20)] * 3
    m = Measurement.from_rounds(_rounds(samples, [0.0, OTHER_CPU_LIMIT + 0.05, None]), trim=0.1)
    assert m.unstable
    assert [w for w in m.warnings() if "round 2" in w and "other processes" in w]
    quiet = Measurement.from_rounds(_rounds(samples, [OTHER_CPU_LIMIT, None, 0.0]), trim=0.1)
    assert not quiet.unstable  # at the limit, and unknown (None), are not flagged


def test_drift_between_rounds_is_unstable():
    rounds = [[10_000_000] * 10, [10_000_000] * 10, [10_700_000] * 10]  # each round flat, 7% apart
    m = Measurement.from_rounds(_rounds(rounds), trim=0.1)
    assert m.cv < CV_LIMIT
    assert m.round_spread == pytest.approx(0.07) and m.round_spread > ROUND_SPREAD_LIMIT
    assert m.unstable and any("spread" in w for w in m.warnings())


def test_measurement_round_trip():
    m = Measurement.from_rounds(_rounds([[5, 6, 7], [8, 9, 10]], [0.5, None]), trim=0.2)
    data = json.loads(json.dumps(m.to_dict()))
    again = Measurement.from_dict(data)
    assert again == m and again.trimmed_mean_ms == m.trimmed_mean_ms
    json.dumps(m.summary())
    with pytest.raises(ProtocolError):
        Measurement.from_dict({**data, "extra": 1})


@pytest.mark.parametrize("kwargs", [
    {"samples_ns": (), "round_sizes": (), "other_cpu": ()},
    {"round_sizes": (2, 2)},
    {"other_cpu": (0.1,)},
    {"other_cpu": (1.5, None)},
    {"samples_ns": (1, 2, 3, -4, 5)},
    {"trim": 0.5},
    {"round_sizes": (5, 0)},
])
def test_measurement_validation(kwargs):
    base = {"samples_ns": (1, 2, 3, 4, 5), "round_sizes": (3, 2), "other_cpu": (None, 0.0), "trim": 0.1}
    with pytest.raises(ProtocolError):
        Measurement(**{**base, **kwargs})


def test_device_side_modules_do_not_import_heavy_libraries():
    code = ("import sys, profiler.protocol, profiler.metadata\n"
            "print(sorted({'torch', 'pandas', 'sklearn'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
