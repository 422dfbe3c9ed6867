"""`measure_archs` with a fake target: interleaved rounds, per-item errors, unstable retries,
disturbed rounds measured again, converging labels."""
from __future__ import annotations

from pathlib import Path

import pytest

from profiler import measure
from profiler.dataset import DatasetWriter, make_settings, read_dataset
from profiler.errors import HatprofError
from profiler.measure import MeasureJob, measure_archs
from profiler.protocol import RoundResult, TimingProtocol
from profiler.space import load_space
from profiler.target import RoundPair

SPACE = load_space("compact")
PROTOCOL = TimingProtocol.hat(warmup=0, runs=20, rounds=2, trim=0.1, seq_len=4, beam=2)


class FakeTarget:
    """Returns known samples; an architecture named in `failing` raises; `noisy` ones are
    unstable on their first `noisy_rounds` rounds."""

    name = "fake"
    threads = 1

    def __init__(self, failing=(), noisy=(), noisy_rounds=0):
        self.calls: list[str] = []
        self.failing, self.noisy, self.noisy_rounds = set(failing), set(noisy), noisy_rounds

    def info(self):
        return {"hostname": "fakehost", "affinity": "0"}

    def measure_round(self, artifact_dir, fmt, spec, reference_dir=None):
        arch_id, runs = Path(artifact_dir).name, spec.runs
        self.calls.append(arch_id)
        if arch_id in self.failing:
            raise HatprofError("agent gave up")
        earlier = self.calls.count(arch_id) - 1
        if arch_id in self.noisy and earlier < self.noisy_rounds:
            samples = tuple(1_000_000 * (1 + 3 * (i % 2)) for i in range(runs))  # CV far above 10%
        else:
            samples = tuple(1_000_000 + i for i in range(runs))
        return RoundPair(RoundResult(samples, 0.0), RoundResult(samples, 0.0))

    def close(self):
        pass


@pytest.fixture
def writer(tmp_path, monkeypatch):
    monkeypatch.setattr(measure, "get_artifact", lambda arch, *a, **k: tmp_path / arch.arch_id)
    settings = make_settings(SPACE, PROTOCOL, device="fake", host="fakehost", cpu_model="Fake CPU",
                             runtime="onnxruntime", runtime_version="1.0", fmt="onnx")
    with DatasetWriter(tmp_path / "fake.csv", settings) as w:
        yield w


def test_rounds_interleave_and_a_failure_is_one_result(writer):
    archs = SPACE.sample_many(5, seed=2)
    target = FakeTarget(failing={archs[1].arch_id})
    results = measure_archs(archs, MeasureJob(SPACE, PROTOCOL, interleave=3), target, writer)
    ids = [a.arch_id for a in archs]
    # group 1 = archs 0-2: round 1 of each in order, then round 2 of the two that did not fail
    # (in a seeded random order); then group 2 alike
    assert target.calls[:3] == ids[:3] and sorted(target.calls[3:5]) == sorted([ids[0], ids[2]])
    assert target.calls[5:7] == ids[3:5] and sorted(target.calls[7:]) == sorted(ids[3:5])
    assert [r.error for r in results] == [None, "measure_failed", None, None, None]
    assert results[1].message == "agent gave up"
    df = read_dataset(writer.path)
    assert list(df["arch_id"]) == [ids[0], ids[2], ids[3], ids[4]]


def test_unstable_rows_are_measured_again_up_to_the_limit(writer):
    archs = SPACE.sample_many(2, seed=3)
    noisy = archs[0].arch_id
    target = FakeTarget(noisy={noisy}, noisy_rounds=2)  # both rounds of the first attempt are noisy
    job = MeasureJob(SPACE, PROTOCOL, retry_unstable=1)
    results = {r.arch.arch_id: r for r in measure_archs(archs, job, target, writer)}
    assert results[noisy].attempts == 2 and not results[noisy].row["unstable"]
    assert results[archs[1].arch_id].attempts == 1
    assert target.calls.count(noisy) == 4


def test_without_retries_an_unstable_row_is_written_flagged(writer):
    arch = SPACE.sample_many(1, seed=4)[0]
    target = FakeTarget(noisy={arch.arch_id}, noisy_rounds=2)
    [result] = measure_archs([arch], MeasureJob(SPACE, PROTOCOL), target, writer)
    assert result.attempts == 1 and result.row["unstable"]
    assert bool(read_dataset(writer.path)["unstable"].iloc[0])
