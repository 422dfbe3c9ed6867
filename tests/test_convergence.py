"""Clean rounds and converging labels: judged on rounds of known samples, and through
`measure_archs` with a fake device whose rounds are disturbed on a known schedule."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from profiler import measure
from profiler.convergence import (CANARY_LIMIT, ArchRounds, CanaryReference, clean_runs, disturbance, interval,
                                  outliers, round_total_ms)
from profiler.dataset import DatasetWriter, raw_path_for, read_dataset, recompute_from_raw
from profiler.measure import MeasureJob, dataset_settings, measure_archs
from profiler.protocol import RoundResult, TimingProtocol, trimmed_mean
from profiler.space import load_space
from profiler.target import RoundPair

SPACE = load_space("compact")
MS = 1_000_000


def pair(latency_ms: float, runs: int = 10, canary_ns: int = 1000, other: float = 0.0, gate=None) -> RoundPair:
    """A round whose encoder takes `latency_ms` / 4 and decoder 3/4 of it, with a little spread."""
    def part(share):
        base = latency_ms * share * MS
        return RoundResult(tuple(int(base * (1 + 0.001 * (i % 3))) for i in range(runs)), other,
                           (canary_ns,) * 3)
    return RoundPair(part(0.25), part(0.75), gate=gate or {})


def test_interval_is_students_t_of_the_mean():
    totals = [10.0, 10.2, 9.9, 10.1, 10.3]
    expected = stats.t.ppf(0.975, 4) * np.std(totals, ddof=1) / np.sqrt(5) / np.mean(totals)
    assert interval(totals) == pytest.approx(expected, rel=1e-3)
    assert interval([10.0]) is None and interval([10.0, 10.0]) == 0.0
    many = list(np.linspace(9, 11, 40))
    assert interval(many) >= stats.t.ppf(0.975, 39) * np.std(many, ddof=1) / np.sqrt(40) / 10


def test_a_round_is_disturbed_by_contention_or_heat():
    assert disturbance(pair(10)) is None
    assert disturbance(pair(10, other=0.2)) == "contention"
    assert disturbance(pair(10, other=None)) is None  # unknown is not contention
    assert disturbance(pair(10, gate={"timed_out": True})) == "thermal"
    assert disturbance(pair(10, gate={"timed_out": True, "unfit": "hot"})) == "thermal"
    assert disturbance(pair(10, gate={"timed_out": True, "unfit": "slow"})) == "slow"


def test_runs_are_clean_when_both_canaries_around_them_are():
    # 10 runs, a canary before run 0, 3, 6, 9 and after the last: 5 canaries, the third slow
    result = RoundResult(tuple(range(10)), 0.0, (1000, 1010, 1300, 1000, 1000))
    assert clean_runs(result, 3, 1000) == [True] * 3 + [False] * 6 + [True]
    limit = int(1000 * (1 + CANARY_LIMIT))
    assert clean_runs(RoundResult((1, 2), 0.0, (limit, limit)), 3, 1000) == [True, True]
    assert clean_runs(RoundResult((1, 2), 0.0, (limit + 1, 1000)), 3, 1000) == [False, False]
    assert clean_runs(result, 3, None) == [True] * 10  # no reference yet
    assert clean_runs(RoundResult((1, 2), 0.0), 3, 1000) == [True, True]  # no canary timed


def test_runs_beside_a_slow_canary_are_left_out_and_recorded():
    protocol = TimingProtocol(runs=20, rounds=2, precision=0.5, trim=0.0, canary_every=5)
    rounds = ArchRounds(protocol)
    calm = RoundResult((MS,) * 10, 0.0, (1000, 1000, 1000))
    burst = RoundResult((MS,) * 5 + (2 * MS,) * 5, 0.0, (1000, 1000, 1500))  # the last 5 runs slowed
    rounds.add(RoundPair(calm, calm), 1.0)
    assert rounds.add(RoundPair(calm, burst), 1.0) is None  # half its runs are clean: kept
    judged = rounds.judged()
    assert judged[1].dropped == {"encoder": [], "decoder": [2 * MS] * 5}
    encoder, decoder = rounds.measurements()
    assert decoder.n == 15 and decoder.trimmed_mean_ms == 1.0 and encoder.n == 20
    assert not rounds.converged  # 15 clean decoder runs < 20


def test_outliers_need_four_rounds_and_are_judged_on_both_sides():
    assert outliers([10, 10, 14]) == set()
    assert outliers([10.0, 10.1, 9.9, 10.05, 13.0]) == {4}
    assert outliers([10.0, 10.1, 9.9, 10.05, 7.0]) == {4}
    assert outliers([10.0, 10.1, 9.9, 10.05, 10.15]) == set()  # within the 2% floor


def test_the_canary_reference_is_the_typical_canary_of_the_session():
    reference = CanaryReference(window=12)  # a pair holds 6 canary runs
    assert reference.typical_ns is None
    reference.update(pair(10, canary_ns=1200))
    reference.update(pair(10, canary_ns=900))
    assert reference.typical_ns == 1050  # the median of 6 x 1200 and 6 x 900
    reference.update(pair(10, canary_ns=1500))  # the window keeps the last 12: 6 x 900, 6 x 1500
    assert reference.typical_ns == 1200


def test_a_label_converges_when_enough_clean_rounds_agree():
    protocol = TimingProtocol(runs=40, rounds=4, precision=0.01, max_rounds=10, trim=0.1)
    rounds = ArchRounds(protocol)
    for latency in (10.0, 10.02, 9.98, 10.01):
        rounds.add(pair(latency), 1.0)
    assert rounds.converged and rounds.done
    totals = [round_total_ms(p, 0.1) for p in rounds.pairs]
    assert rounds.interval() == pytest.approx(interval(totals))


def test_disturbed_rounds_are_discarded_and_the_label_is_made_of_the_clean_ones():
    protocol = TimingProtocol(runs=40, rounds=4, precision=0.01, max_rounds=10, trim=0.1)
    rounds = ArchRounds(protocol)
    for latency, canary in ((10.0, 1000), (14.0, 1400), (10.02, 1000), (9.98, 1000), (10.5, 1000), (10.01, 1000)):
        rounds.add(pair(latency, canary_ns=canary), 1.0)
    assert [r.verdict for r in rounds.judged()] == [None, "canary", None, None, "outlier", None]
    assert dict(rounds.discarded()) == {"canary": 1, "outlier": 1}
    encoder, decoder = rounds.measurements()
    clean = [rounds.pairs[i] for i in (0, 2, 3, 5)]
    samples = [s for p in clean for s in p.decoder.samples_ns]
    assert decoder.trimmed_mean_ms == pytest.approx(trimmed_mean(samples, 0.1) / MS)
    assert rounds.converged


def test_a_spent_budget_ends_an_unconverged_label():
    protocol = TimingProtocol(runs=40, rounds=4, precision=0.01, max_rounds=6, trim=0.1)
    rounds = ArchRounds(protocol)
    for latency in (10, 11, 10, 11, 10, 11):
        rounds.add(pair(latency), 1.0)
    assert rounds.done and rounds.budget_spent and not rounds.converged
    seconds = ArchRounds(TimingProtocol(runs=40, rounds=4, max_rounds=30, max_seconds=2.5))
    for latency in (10, 11, 10):
        seconds.add(pair(latency), 1.0)
    assert seconds.budget_spent


def test_the_fixed_protocol_keeps_every_round():
    rounds = ArchRounds(TimingProtocol.hat(runs=30, rounds=3))
    for latency, canary in ((10, 1000), (20, 5000), (10, 1000)):
        rounds.add(pair(latency, canary_ns=canary), 1.0)
    assert [r.verdict for r in rounds.judged()] == [None, None, None] and rounds.done and rounds.converged


class BurstyTarget:
    """A device whose every `burst_every`-th round (counting all its rounds) runs 40% slower
    with a slow canary, and whose latency is otherwise `latency_ms` +- 0.2%."""

    name, threads = "bursty", 1

    def __init__(self, latency_ms: float, burst_every: int, canary_sees_bursts: bool = True):
        self.latency_ms, self.burst_every, self.rounds = latency_ms, burst_every, 0
        self.canary_sees_bursts = canary_sees_bursts

    def info(self):
        return {"hostname": "fakehost", "affinity": "0", "cpu_model": "Fake CPU",
                "libraries": {"onnxruntime": "1.0"}}

    def measure_round(self, artifact_dir, fmt, spec, reference_dir=None):
        self.rounds += 1
        burst = self.rounds % self.burst_every == 0
        wobble = 1 + 0.002 * ((self.rounds % 3) - 1)
        return pair(self.latency_ms * wobble * (1.4 if burst else 1.0), runs=spec.runs,
                    canary_ns=1400 if burst and self.canary_sees_bursts else 1000)

    def close(self):
        pass


def test_measuring_a_bursty_device_discards_the_bursts_and_records_why(tmp_path, monkeypatch):
    monkeypatch.setattr(measure, "get_artifact", lambda arch, *a, **k: tmp_path / arch.arch_id)
    protocol = TimingProtocol(warmup=0, runs=40, rounds=4, precision=0.01, max_rounds=12, trim=0.1)
    job = MeasureJob(SPACE, protocol, interleave=2)
    target = BurstyTarget(10.0, burst_every=3)
    archs = SPACE.sample_many(2, seed=5)
    with DatasetWriter(tmp_path / "b.csv", dataset_settings(job, "bursty", [target])) as writer:
        results = measure_archs(archs, job, target, writer)
    df = read_dataset(tmp_path / "b.csv")
    assert len(df) == 2 and not df["unstable"].any() and df["converged"].all()
    assert (df["rounds_used"] == 4).all()
    assert df["rounds_discarded"].sum() == target.rounds - 8  # every burst, and only bursts
    assert set(df["discarded_why"]) <= {"canary=1", "canary=2", ""}
    # the label is within the wobble of the clean latency, far from the 40% bursts
    assert ((df["latency_ms"] - 10.0).abs() < 0.05).all()
    assert all(r.row["interval"] <= 0.01 for r in results)
    assert (df["cpu_model"] == "Fake CPU").all() and (df["runtime_version"] == "1.0").all()
    raws = [json.loads(line) for line in raw_path_for(tmp_path / "b.csv").read_text().splitlines()]
    for raw, (_, row) in zip(raws, df.iterrows()):
        assert len(raw["discarded_rounds"]) == row["rounds_discarded"]
        assert all(d["reason"] == "canary" for d in raw["discarded_rounds"])
        assert recompute_from_raw(raw, 0.1)["latency_ms"] == pytest.approx(row["latency_ms"], abs=1e-12)
        assert [r["verdict"] for r in raw["environment"]["rounds"]].count(None) == 4


def test_a_device_that_never_settles_is_flagged_never_silently_labelled(tmp_path, monkeypatch):
    monkeypatch.setattr(measure, "get_artifact", lambda arch, *a, **k: tmp_path / arch.arch_id)
    protocol = TimingProtocol(warmup=0, runs=40, rounds=4, precision=0.01, max_rounds=6, trim=0.1)
    job = MeasureJob(SPACE, protocol)
    # every other round 40% slower, and the canary does not see it: no round can be told
    # disturbed on its own, and half of them are no outliers, so the interval stays wide
    target = BurstyTarget(10.0, burst_every=2, canary_sees_bursts=False)
    [arch] = SPACE.sample_many(1, seed=6)
    with DatasetWriter(tmp_path / "n.csv", dataset_settings(job, "bursty", [target])) as writer:
        [result] = measure_archs([arch], job, target, writer)
    row = result.row
    assert target.rounds == 6 and row["rounds_used"] == 6 and row["rounds_discarded"] == 0
    assert row["unstable"] and row["converged"] is False and row["interval"] > 0.1
