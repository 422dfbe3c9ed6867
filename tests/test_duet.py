"""Duet mode: runs restated by the reference runs around them, judged on rounds of known samples,
through `measure_archs` with a fake two-speed host, and timed for real in the worker."""
from __future__ import annotations

import dataclasses
import json
import os
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from profiler import measure
from profiler.canary_history import MIN_ROUNDS, CanaryHistory
from profiler.convergence import CANARY_LIMIT, ArchRounds
from profiler.dataset import DatasetWriter, raw_path_for, read_dataset
from profiler.duet import (CALIBRATION_ROUNDS, LEVEL_LIMIT, ReferenceScale, brackets_ns, reference_level,
                           restated, steady_runs)
from profiler.errors import PredictorError, ProtocolError
from profiler.measure import MeasureJob, dataset_settings, measure_archs
from profiler.protocol import RoundResult, RoundSpec, TimingProtocol, trimmed_mean
from profiler.space import load_space
from profiler.target import RoundPair

SPACE = load_space("compact")
MS = 1_000_000
PARTS = ("encoder", "decoder")


def test_a_run_is_restated_by_the_geometric_mean_of_the_reference_runs_around_it():
    result = RoundResult((300, 800), 0.0, (100, 400, 100))
    assert list(brackets_ns(result)) == [200.0, 200.0]  # sqrt(100 x 400) on either side
    assert restated(result, 50.0).samples_ns == (75, 200)  # 300 / 200 x 50, 800 / 200 x 50
    assert restated(result, 50.0).canary_ns == result.canary_ns
    with pytest.raises(ProtocolError, match="needs 3 reference runs"):
        brackets_ns(RoundResult((300, 800), 0.0, (100, 400)))


def test_a_run_is_steady_when_its_two_reference_runs_agree():
    edge = round(1000 * (1 + CANARY_LIMIT))  # exactly at the limit: steady
    result = RoundResult((1, 2, 3), 0.0, (1000, edge, edge + 400, edge + 400))  # 1650 / 1250 = 1.32
    assert steady_runs(result, CANARY_LIMIT) == [True, False, True]


def duet_pair(model_ms: float, reference_ms: float, speed: float = 1.0, runs: int = 10,
              switch_at: int | None = None, model_speed: float | None = None) -> RoundPair:
    """A round on a host `speed` times slower than its fast level: the reference that much,
    the model `model_speed` times (default: alike), each part split encoder 1/4, decoder 3/4,
    a little spread; from run `switch_at` on the host is fast again (so the reference runs
    around that run disagree)."""
    def factor(i: int, slow: float) -> float:
        return 1.0 if switch_at is not None and i >= switch_at else slow

    def part(share: float) -> RoundResult:
        model = tuple(int(model_ms * share * MS * factor(i, model_speed or speed) * (1 + 0.001 * (i % 3)))
                      for i in range(runs))
        reference = tuple(int(reference_ms * share * MS * factor(i, speed)) for i in range(runs + 1))
        return RoundResult(model, 0.0, reference)
    return RoundPair(part(0.25), part(0.75))


def test_a_run_the_host_slowed_for_a_moment_is_restated_to_the_fast_hosts_time():
    protocol = TimingProtocol(warmup=0, runs=30, rounds=4, precision=0.01, max_rounds=12, trim=0.1, duet=True)
    state = ArchRounds(protocol, duet=ReferenceScale(PARTS, trim=0.1))
    for _ in range(3):
        assert state.add(duet_pair(20.0, 5.0), 1.0) is None
    # a burst: runs 3 and 4 and the reference runs 3-5 around them 1.6x slow (the reference's
    # median, its level, does not move)
    burst = duet_pair(20.0, 5.0)
    burst = RoundPair(*(RoundResult(tuple(v * (1.6 if i in (3, 4) else 1) for i, v in enumerate(r.samples_ns)), 0.0,
                                    tuple(c * (1.6 if i in (3, 4, 5) else 1) for i, c in enumerate(r.canary_ns)))
                        for r in (burst.encoder, burst.decoder)))
    assert state.add(burst, 1.0) is None
    # runs 2 and 5, whose reference runs disagree, are left out; runs 3 and 4, slow between
    # slow reference runs, are restated to their fast time
    assert [sum(m) for m in state.judged()[3].masks.values()] == [8, 8]
    assert state.converged and state.interval() < 0.001
    encoder, decoder = state.measurements()
    assert max(encoder.samples_ns) < 20.0 * 0.25 * MS * 1.003
    assert encoder.trimmed_mean_ms + decoder.trimmed_mean_ms == pytest.approx(20.0, rel=0.002)


def test_a_rounds_reference_level_is_its_median_over_the_scale():
    pair = duet_pair(20.0, 5.0)
    slow = RoundResult(pair.decoder.samples_ns, 0.0, tuple(c * (3 if i < 5 else 1) for i, c in
                                                          enumerate(pair.decoder.canary_ns)))
    scales = {"encoder": 5.0 * 0.25 * MS, "decoder": 5.0 * 0.75 * MS}
    assert reference_level({"encoder": pair.encoder, "decoder": slow}, scales) == pytest.approx(1.0)  # 5 of 11
    assert reference_level({"encoder": pair.encoder, "decoder": pair.decoder}, {"encoder": 2.5 * 0.25 * MS,
                                                                                "decoder": 2.5 * 0.75 * MS}) == 2.0


def test_a_round_timed_off_the_references_scale_is_discarded_not_restated():
    protocol = TimingProtocol(warmup=0, runs=40, rounds=4, precision=0.01, max_rounds=12, trim=0.1, duet=True)
    scale = ReferenceScale(PARTS, trim=0.1)
    state = ArchRounds(protocol, duet=scale)
    # a host that slows the small reference 1.8x and the model 1.5x in its slow state: the
    # ratio of a slow round is 1.5 / 1.8 of the fast one, restated 17% low
    for speed in (1.0, 1.0, 1.0, 1.8, 1.8, 1.0, 1.8, 1.0):
        verdict = state.add(duet_pair(20.0, 5.0, speed, model_speed=1.5 if speed > 1 else None), 1.0)
        assert verdict == (None if speed == 1.0 else "reference")
    assert scale.scale_ns("encoder") == pytest.approx(5.0 * 0.25 * MS, rel=1e-6)
    assert dict(state.discarded()) == {"reference": 3}
    encoder, decoder = state.measurements()
    assert state.converged and encoder.trimmed_mean_ms + decoder.trimmed_mean_ms == pytest.approx(20.0, rel=0.002)
    # within LEVEL_LIMIT of the scale a round is restated; just beyond it, discarded
    assert state.add(duet_pair(20.0, 5.0, 1 + LEVEL_LIMIT * 0.9), 1.0) is None
    assert state.add(duet_pair(20.0, 5.0, 1 + LEVEL_LIMIT * 1.1), 1.0) == "reference"
    assert state.add(duet_pair(20.0, 5.0, 1 / (1 + LEVEL_LIMIT * 1.1)), 1.0) == "reference"  # faster, too


def test_a_row_timed_only_off_scale_is_flagged_never_silently_low():
    protocol = TimingProtocol(warmup=0, runs=40, rounds=4, precision=0.01, max_rounds=8, trim=0.1, duet=True)
    scale = ReferenceScale(PARTS, trim=0.1)
    calibrated = ArchRounds(protocol, duet=scale)
    for _ in range(4):
        calibrated.add(duet_pair(20.0, 5.0), 1.0)
    state = ArchRounds(protocol, duet=scale)  # the next architecture, the host slow throughout
    while not state.done:
        state.add(duet_pair(20.0, 5.0, 1.8, model_speed=1.5), 1.0)
    assert not state.converged and dict(state.discarded()) == {"reference": 8}
    encoder, decoder = state.measurements()  # made of every round, restated: 17% low, and flagged
    assert encoder.trimmed_mean_ms + decoder.trimmed_mean_ms == pytest.approx(20.0 * 1.5 / 1.8, rel=0.002)


def test_a_round_the_host_changed_speed_in_is_discarded_as_bracket():
    protocol = TimingProtocol(warmup=0, runs=40, rounds=4, precision=0.01, max_rounds=12, trim=0.1, duet=True)
    state = ArchRounds(protocol, duet=ReferenceScale(PARTS, trim=0.1))
    for _ in range(4):  # the scale's first rounds: its 20th percentile stays the fast level
        assert state.add(duet_pair(20.0, 5.0), 1.0) is None
    # the speed changes before every second run: the reference runs around each run disagree
    flicker = duet_pair(20.0, 5.0)
    flicker = RoundPair(*(RoundResult(r.samples_ns, 0.0, tuple(c * (1.6 if i % 2 else 1) for i, c in
                                                               enumerate(r.canary_ns)))
                          for r in (flicker.encoder, flicker.decoder)))
    assert state.add(flicker, 1.0) == "bracket"
    # one change of speed mid-round drops the one run it straddles and keeps the round
    assert state.add(duet_pair(20.0, 5.0, speed=1.6, switch_at=4), 1.0) is None
    assert [sum(m) for m in state.judged()[5].masks.values()] == [9, 9]


class TwoSpeedTarget:
    """A device whose host runs every other round slow, the reference 1.8x and the model 1.5x;
    it records the reference artifact it was given."""

    name, threads = "twospeed", 1

    def __init__(self):
        self.rounds, self.references = 0, set()

    def info(self):
        return {"hostname": "fakehost", "affinity": "0", "cpu_model": "Fake CPU",
                "libraries": {"onnxruntime": "1.0"}}

    def measure_round(self, artifact_dir, fmt, spec, reference_dir=None):
        assert spec.canary_every == 1
        self.rounds += 1
        self.references.add(reference_dir)
        slow = self.rounds % 2
        return duet_pair(12.0, 4.0, speed=1.8 if slow else 1.0, model_speed=1.5 if slow else None, runs=spec.runs)

    def close(self):
        pass


def test_measuring_in_duet_mode_writes_the_fast_label_its_scale_and_what_restates_it(tmp_path, monkeypatch):
    monkeypatch.setattr(measure, "get_artifact", lambda arch, *a, **k: tmp_path / arch.arch_id)
    protocol = TimingProtocol(warmup=0, runs=40, rounds=4, precision=0.01, max_rounds=12, trim=0.1, duet=True)
    job = MeasureJob(SPACE, protocol, interleave=2, cache_dir=tmp_path / "cache")
    target = TwoSpeedTarget()
    with DatasetWriter(tmp_path / "d.csv", dataset_settings(job, "twospeed", [target])) as writer:
        measure_archs(SPACE.sample_many(2, seed=5), job, target, writer)
    assert target.references == {tmp_path / SPACE.smallest().arch_id}
    df = read_dataset(tmp_path / "d.csv")
    assert (df["reference"] == SPACE.smallest().arch_id).all()
    assert not df["unstable"].any() and (df["rounds_discarded"] > 0).all()
    # the slow rounds, whose ratio is 1.5 / 1.8 of the fast one's, were discarded, not restated:
    # the label is the fast host's, the scale its reference's
    assert set(df["discarded_why"].str.split("=").str[0]) == {"reference"}
    assert np.allclose(df["latency_ms"], 12.0, rtol=0.002) and np.allclose(df["reference_ms"], 4.0, rtol=1e-6)
    for line in raw_path_for(tmp_path / "d.csv").read_text().splitlines():
        raw = json.loads(line)
        duet = raw["environment"]["duet"]
        assert duet["reference"] == SPACE.smallest().arch_id
        assert {r["reason"] for r in raw["discarded_rounds"]} == {"reference"}
        for part in PARTS:
            timed, brackets = duet["timed_ms"][part], duet["bracket_ms"][part]
            again = [t * duet["scale_ms"][part] / b for t, b in zip(timed, brackets)]
            assert again == pytest.approx(raw[f"{part}_ms"], abs=1e-6)  # whole nanoseconds
    # the reference's first rounds are kept for the next process, per part: its calibration
    kept = sorted((tmp_path / "cache" / "canary").glob("*-reference-*-encoder.json"))
    assert len(kept) == 1 and len(json.loads(kept[0].read_text())["probe_ns"]) == min(target.rounds,
                                                                                      CALIBRATION_ROUNDS)
    assert duet["calibration_rounds"] == min(target.rounds, CALIBRATION_ROUNDS)


class SlowProbeTarget(TwoSpeedTarget):
    """A device at its fast speed whose gate probe reads 1500 ns, and whose gate's wait for a
    probe under the limit it is given runs out."""

    def __init__(self):
        super().__init__()
        self.specs = []

    def measure_round(self, artifact_dir, fmt, spec, reference_dir=None):
        self.specs.append(spec)
        slow = 0 < spec.slow_canary_ns < 1500
        gate = {"seen": {"canary_ns": 1500}, "timed_out": slow, "unfit": "slow" if slow else None,
                "waited_s": spec.cooldown_s if slow else 0.0}
        return dataclasses.replace(duet_pair(12.0, 4.0, runs=spec.runs), gate=gate)


def test_in_duet_mode_too_the_gate_waits_for_a_host_known_to_be_faster(tmp_path, monkeypatch):
    monkeypatch.setattr(measure, "get_artifact", lambda arch, *a, **k: tmp_path / arch.arch_id)
    target = SlowProbeTarget()
    known = CanaryHistory.for_machine(target.info(), tmp_path / "cache")
    for _ in range(MIN_ROUNDS):
        known.record(1000)
    known.save()
    protocol = TimingProtocol(warmup=0, runs=40, rounds=4, precision=0.01, max_rounds=6, trim=0.1, duet=True)
    job = MeasureJob(SPACE, protocol, cache_dir=tmp_path / "cache")
    with DatasetWriter(tmp_path / "d.csv", dataset_settings(job, "slowprobe", [target])) as writer:
        [result] = measure_archs(SPACE.sample_many(1, seed=8), job, target, writer)
    # asked to wait below 1.25 x the machine's fast level; the wait ran out, and past the
    # architecture's wait budget its rounds were timed at once
    assert [s.slow_canary_ns for s in target.specs][:2] == pytest.approx([1000 * (1 + CANARY_LIMIT), 0])
    assert result.row["discarded_why"] == "slow=1" and result.row["gate_wait_s"] == protocol.cooldown_s


def test_a_scale_calibrated_while_the_host_was_slow_flags_the_fast_rows_and_says_how_to_recalibrate(
        tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(measure, "get_artifact", lambda arch, *a, **k: tmp_path / arch.arch_id)
    protocol = TimingProtocol(warmup=0, runs=40, rounds=4, precision=0.01, max_rounds=6, trim=0.1, duet=True)
    job = MeasureJob(SPACE, protocol, cache_dir=tmp_path / "cache")
    target = TwoSpeedTarget()
    slow = duet_pair(12.0, 4.0, speed=1.8)
    scale = measure.Duet.open(job, target.info()).scale  # the machine's first 30 rounds, all slow
    for _ in range(CALIBRATION_ROUNDS):
        for part in PARTS:
            scale.record(part, getattr(slow, part))
    scale.save()
    monkeypatch.setattr(target, "measure_round", lambda *a, **k: duet_pair(12.0, 4.0))  # fast from now on
    with caplog.at_level("WARNING", logger="profiler.measure"):
        with DatasetWriter(tmp_path / "d.csv", dataset_settings(job, "twospeed", [target])) as writer:
            measure_archs(SPACE.sample_many(2, seed=5), job, target, writer)
    df = read_dataset(tmp_path / "d.csv")
    assert df["unstable"].all() and (df["discarded_why"] == "reference=6").all()
    warnings = [r.getMessage() for r in caplog.records if "calibrated while the host was slow" in r.getMessage()]
    assert len(warnings) == 1 and all(str(h.path) in warnings[0] for h in scale.histories.values())


def test_the_scale_is_fixed_once_calibrated_and_the_next_process_restates_with_it(tmp_path):
    env, kind = {"hostname": "h"}, "reference-x"
    first = ReferenceScale.for_machine(PARTS, env, kind, 0.0, tmp_path)
    for i in range(CALIBRATION_ROUNDS):
        pair = duet_pair(20.0, 5.0 + i / 10)  # reference trimmed means 5.0 .. 7.9 ms
        for part in PARTS:
            first.record(part, getattr(pair, part))
    calibrated = first.scale_ns("encoder")
    expected = np.percentile([(5.0 + i / 10) * 0.25 * MS for i in range(CALIBRATION_ROUNDS)], 20)
    assert calibrated == pytest.approx(expected, rel=1e-6)
    fast = duet_pair(20.0, 1.0)
    first.record("encoder", fast.encoder)  # a much faster round later moves nothing
    assert first.scale_ns("encoder") == calibrated and first.calibration_rounds == CALIBRATION_ROUNDS
    first.save()
    assert ReferenceScale.for_machine(PARTS, env, kind, 0.0, tmp_path).scale_ns("encoder") == calibrated


def test_a_history_level_needs_no_minimum_and_each_kind_has_its_own_file(tmp_path):
    history = CanaryHistory()
    assert history.level_ns() is None and history.fast_ns is None
    history.record(500.0)
    assert history.level_ns() == 500.0 and history.fast_ns is None
    for probe in (100.0, 200.0, 300.0, 400.0):
        history.record(probe)
    assert history.level_ns() == 180.0  # 20th percentile of 100..500, inclusive
    env = {"hostname": "h"}
    assert (CanaryHistory.for_machine(env, tmp_path).path
            != CanaryHistory.for_machine(env, tmp_path, "reference-x-encoder").path)


def check_reference_timed_around_every_run(target, smallest: Path, largest: Path) -> None:
    """`target` times the reference artifact, not the model, in the canary's place."""
    spec = RoundSpec(seq_len=4, beam=2, warmup=1, runs=6, canary_every=10)
    small_model = target.measure_round(smallest, "onnx", spec, reference_dir=largest)
    large_model = target.measure_round(largest, "onnx", spec, reference_dir=smallest)
    for part in PARTS:
        small, large = getattr(small_model, part), getattr(large_model, part)
        assert len(small.canary_ns) == len(large.canary_ns) == 7  # before, between and after every run
        # the reference runs are the other artifact's: the largest's take longer than the smallest's
        assert statistics.median(small.canary_ns) > statistics.median(small.samples_ns)
        assert statistics.median(large.canary_ns) < statistics.median(large.samples_ns)


def test_the_worker_times_the_reference_artifact_around_every_run(artifact):
    from profiler.artifacts import get_artifact
    from profiler.worker import WorkerTarget

    target = WorkerTarget(threads=1, cpus={max(os.sched_getaffinity(0))})
    try:
        check_reference_timed_around_every_run(target, artifact, get_artifact(SPACE.largest(), SPACE, "onnx"))
    finally:
        target.close()


def test_an_agent_is_sent_the_reference_and_times_it_around_every_run(artifact, tmp_path):
    from _agent_support import TOKEN, start_agent
    from device_agents.client import RemoteTarget
    from profiler.artifacts import get_artifact

    server = start_agent(tmp_path / "agent-cache")  # holds nothing: both artifacts are uploaded
    try:
        target = RemoteTarget(server.url, TOKEN, threads=1, name="loopback")
        check_reference_timed_around_every_run(target, artifact, get_artifact(SPACE.largest(), SPACE, "onnx"))
    finally:
        server.close()


def test_a_rounds_reference_trimmed_mean_is_what_the_scale_is_made_of():
    scale = ReferenceScale(PARTS, trim=0.2)
    pair = duet_pair(20.0, 5.0)
    for part in PARTS:
        scale.record(part, getattr(pair, part))
    expected = trimmed_mean(pair.encoder.canary_ns, 0.2)
    assert scale.scale_ns("encoder") == expected


def test_duet_is_a_yes_or_no_setting():
    with pytest.raises(ProtocolError, match="duet must be true or false"):
        TimingProtocol(duet="yes")
    assert TimingProtocol(duet=True).round_spec(50).canary_every == 1
    assert TimingProtocol(duet=False).round_spec(50).canary_every == TimingProtocol.canary_every


def test_a_predictor_of_duet_rows_is_checked_by_duet_measurements(monkeypatch, tmp_path):
    import hatprof.commands.search as search_command
    from nas.latency import PredictedLatency
    from predictor import train_predictor
    from predictor.synthetic import synthetic_frame

    plain = synthetic_frame(60, seed=1)
    duet = plain.assign(reference=SPACE.smallest().arch_id)
    assert not PredictedLatency(train_predictor(plain)).duet
    latency = PredictedLatency(train_predictor(duet))
    assert latency.duet
    with pytest.raises(PredictorError, match="reference"):  # duet and plain labels are not one quantity
        train_predictor(pd.concat([duet, plain.assign(reference="none")], ignore_index=True))

    opened = []

    class Closed:
        def close(self):
            pass

    monkeypatch.setattr(search_command, "open_device", lambda name, protocol: opened.append(protocol) or
                        (Closed(), protocol))
    with search_command.measuring("local", 300, None, tmp_path / "m.csv", latency):
        pass
    assert [p.duet for p in opened] == [True]
