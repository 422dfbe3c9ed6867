"""The in-process target pins while it measures and gives the CPUs back when closed; the
worker target pins only its child process, which it renews every few rounds."""
from __future__ import annotations

import os

from profiler.metadata import current_affinity
from profiler.target import LocalTarget


def test_local_target_pins_then_restores_affinity():
    before = current_affinity()
    cpu = max(before)
    target = LocalTarget(threads=1, cpus={cpu})
    try:
        assert os.sched_getaffinity(0) == {cpu}
        assert target.info()["cpus"] == str(cpu)
    finally:
        target.close()
    assert os.sched_getaffinity(0) == before


def test_worker_target_measures_in_a_pinned_child_renewed_every_few_rounds(artifact):
    from profiler.worker import WorkerTarget

    before = current_affinity()
    cpu = max(before)
    target = WorkerTarget(threads=1, cpus={cpu}, recycle_rounds=2)
    pids = []
    try:
        for runs in (3, 4, 5):
            pair = target.measure_round(artifact, "onnx", 4, 2, 1, runs)
            assert len(pair.encoder.samples_ns) == len(pair.decoder.samples_ns) == runs
            assert min(pair.encoder.samples_ns) > 0 and min(pair.decoder.samples_ns) > 0
            pids.append(target.worker.pid)
        info = target.info()
        assert info["cpus"] == str(cpu) and info["threads"] == 1
        assert os.sched_getaffinity(0) == before  # only the child is pinned
    finally:
        target.close()
    assert pids[0] == pids[1] != pids[2] and os.getpid() not in pids
    assert target.worker.pid is None
