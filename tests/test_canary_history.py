"""The machine's fast level from the gate's canary probes: kept across processes, and what it
catches that a session's own canaries cannot (a device slow from the first round to the last)."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from profiler import canary_history, measure
from profiler.canary_history import MIN_ROUNDS, CanaryHistory, machine_key
from profiler.convergence import CANARY_LIMIT, CanaryReference
from profiler.dataset import DatasetWriter, read_dataset
from profiler.measure import SLOW_WAIT_BUDGET_S, MeasureJob, dataset_settings, measure_archs
from profiler.protocol import TimingProtocol
from tests.test_convergence import SPACE, pair

MACHINE = {"hostname": "fakehost", "cpu_model": "Fake CPU", "machine": "x86_64",
           "python_implementation": "CPython", "python": "3.11.7"}


def test_the_fast_level_is_the_20th_percentile_of_the_probes_once_enough_are_known():
    history = CanaryHistory()
    probes = [1000 + 37 * ((i * 7) % 31) for i in range(MIN_ROUNDS)]
    for probe in probes[:-1]:
        history.record(probe)
    history.record(None)  # a device without a probe adds nothing
    assert history.fast_ns is None
    history.record(probes[-1])
    assert history.fast_ns == pytest.approx(np.percentile(probes, 20))


def test_the_history_is_kept_on_disk_and_merged_with_another_process(tmp_path):
    first = CanaryHistory.for_machine(MACHINE, tmp_path)
    second = CanaryHistory.for_machine(MACHINE, tmp_path)  # opened before the first saves
    first.record(1000)
    first.save()
    second.record(2000)
    second.save()
    path = tmp_path / "canary" / f"{machine_key(MACHINE)}.json"
    assert json.loads(path.read_text())["probe_ns"] == [1000.0, 2000.0]
    assert CanaryHistory.for_machine(MACHINE, tmp_path).probes == [1000.0, 2000.0]


def test_the_history_keeps_the_last_rounds_and_survives_a_broken_file(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(canary_history, "HISTORY_ROUNDS", 3)
    path = tmp_path / "h.json"
    path.write_text("{not json")
    with caplog.at_level(logging.WARNING):
        history = CanaryHistory(path)
    assert history.probes == [] and "unreadable canary history" in caplog.text
    for probe in (1, 2, 3, 4):
        history.record(probe)
    history.save()
    assert CanaryHistory(path).probes == [2.0, 3.0, 4.0]


def test_a_machine_is_its_host_cpu_and_python():
    assert machine_key(MACHINE) == machine_key({**MACHINE, "affinity": "3", "load_avg": [1, 2, 3]})
    for fact, other in (("hostname", "otherhost"), ("cpu_model", "Other CPU"), ("python", "3.12.0")):
        assert machine_key({**MACHINE, fact: other}) != machine_key(MACHINE)


def test_canaries_are_judged_against_the_machines_fast_level_when_the_session_is_mostly_slow():
    history = CanaryHistory()
    reference = CanaryReference(history=history)
    reference.update(pair(15, canary_ns=1500))
    reference.update(pair(10, canary_ns=1000))
    reference.update(pair(15, canary_ns=1500))
    assert reference.typical_ns == 1500  # no history yet: the session's median, slow
    for _ in range(MIN_ROUNDS):
        history.record(1000)
    assert reference.typical_ns == 1000
    fast = CanaryReference(history=history)
    fast.update(pair(10, canary_ns=900))
    assert fast.typical_ns == 900  # the session's own level when it is the lower


class ProbedTarget:
    """A device whose gate probe reads `probe_ns` before every round, and which keeps the gate's
    contract: with a limit below the probe, the wait runs out (the host stays slow)."""

    name, threads = "probed", 1

    def __init__(self, probe_ns: float, latency_ms: float, slow_every: int = 0):
        self.probe_ns, self.latency_ms, self.slow_every = probe_ns, latency_ms, slow_every
        self.specs = []

    def info(self):
        return {**MACHINE, "affinity": "0", "libraries": {"onnxruntime": "1.0"}}

    def measure_round(self, artifact_dir, fmt, spec, reference_dir=None):
        self.specs.append(spec)
        slow = 0 < spec.slow_canary_ns < self.probe_ns
        wobble = 1 + 0.002 * ((len(self.specs) % 3) - 1)
        gate = {"seen": {"canary_ns": self.probe_ns}, "timed_out": slow, "unfit": "slow" if slow else None,
                "waited_s": spec.cooldown_s if slow else 0.0}
        slowed = self.slow_every and (len(self.specs) - 1) % self.slow_every == 0  # slowed after the probe passed
        latency, canary = (1.5 * self.latency_ms, 1.5 * self.probe_ns) if slowed else (self.latency_ms, self.probe_ns)
        return pair(latency * wobble, runs=spec.runs, canary_ns=int(canary), gate=gate)

    def close(self):
        pass


def _measure(tmp_path, name, target, protocol=None):
    protocol = protocol or TimingProtocol(warmup=0, runs=40, rounds=4, precision=0.01, max_rounds=6, trim=0.1)
    job = MeasureJob(SPACE, protocol, cache_dir=tmp_path / "cache")
    [arch] = SPACE.sample_many(1, seed=8)
    with DatasetWriter(tmp_path / name, dataset_settings(job, "probed", [target])) as writer:
        [result] = measure_archs([arch], job, target, writer)
    return result.row


def _known_machine(tmp_path, probe_ns):
    known = CanaryHistory.for_machine(MACHINE, tmp_path / "cache")
    for _ in range(MIN_ROUNDS):
        known.record(probe_ns)
    known.save()


def test_a_session_slow_from_start_to_end_is_flagged_on_a_machine_known_to_be_faster(tmp_path, monkeypatch):
    monkeypatch.setattr(measure, "get_artifact", lambda arch, *a, **k: tmp_path / arch.arch_id)
    # a machine never seen before: the session cannot tell, and converges on the slowed latency
    slow = ProbedTarget(1500, latency_ms=15.0)
    row = _measure(tmp_path / "new", "slow.csv", slow)
    assert row["converged"] and not row["unstable"]
    assert {s.slow_canary_ns for s in slow.specs} == {0}  # fewer than MIN_ROUNDS probes: no limit
    # the same machine, when earlier sessions probed it at 1000 ns: the gate is asked to wait
    # below 1250 ns, and its wait runs out (120 s); past the architecture's wait budget its
    # rounds are timed at once, their canaries judged against the fast level: the row is flagged
    _known_machine(tmp_path, 1000)
    slow = ProbedTarget(1500, latency_ms=15.0)
    row = _measure(tmp_path, "slow.csv", slow)
    assert [s.slow_canary_ns for s in slow.specs] == pytest.approx([1000 * (1 + CANARY_LIMIT)] + [0] * 5)
    assert SLOW_WAIT_BUDGET_S < 120
    assert row["unstable"] and row["converged"] is False and row["discarded_why"] == "canary=5 slow=1"
    assert row["gate_wait_s"] == 120.0 and row["device_s"] < 120  # waiting is not device time
    assert bool(read_dataset(tmp_path / "slow.csv")["unstable"].iloc[0])
    # the session's probes joined the machine's history
    assert CanaryHistory.for_machine(MACHINE, tmp_path / "cache").probes == [1000.0] * MIN_ROUNDS + [1500.0] * 6


def test_rounds_slowed_after_the_probe_are_discarded_when_half_the_session_is_slow(tmp_path, monkeypatch):
    monkeypatch.setattr(measure, "get_artifact", lambda arch, *a, **k: tmp_path / arch.arch_id)
    protocol = TimingProtocol(warmup=0, runs=40, rounds=4, precision=0.01, max_rounds=12, trim=0.1)
    # every other round, the first included, 1.5x slower, canary and model alike: the session's
    # median canary is then never below halfway, so alone the slow rounds' canaries would pass
    _known_machine(tmp_path, 1000)
    target = ProbedTarget(1000, latency_ms=10.0, slow_every=2)
    row = _measure(tmp_path, "half.csv", target, protocol)
    assert row["converged"] and row["discarded_why"] == "canary=4" and row["rounds_used"] == 4
    assert row["latency_ms"] == pytest.approx(10.0, rel=0.005)
    alone = ProbedTarget(1000, latency_ms=10.0, slow_every=2)
    row = _measure(tmp_path / "new", "half.csv", alone, protocol)
    # on a machine never seen, the slow rounds are the majority and the session converges on them
    assert row["converged"] and row["latency_ms"] == pytest.approx(15.0, rel=0.005)


def test_a_machine_at_its_fast_level_is_not_held_up_and_the_fixed_protocol_is_never_gated(tmp_path, monkeypatch):
    monkeypatch.setattr(measure, "get_artifact", lambda arch, *a, **k: tmp_path / arch.arch_id)
    _known_machine(tmp_path, 1000)
    fast = ProbedTarget(1010, latency_ms=10.0)
    row = _measure(tmp_path, "fast.csv", fast)
    assert row["converged"] and row["rounds_discarded"] == 0 and row["rounds_used"] == 4
    fixed = ProbedTarget(1500, latency_ms=15.0)
    row = _measure(tmp_path, "fixed.csv", fixed, TimingProtocol.hat(runs=30, rounds=3))
    assert {s.slow_canary_ns for s in fixed.specs} == {0} and row["rounds_used"] == 3
