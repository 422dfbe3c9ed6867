"""The in-process target pins while it measures and gives the CPUs back when closed; the
worker target pins only its child process, which it renews every few rounds."""
from __future__ import annotations

import os

from profiler.metadata import current_affinity
from profiler.protocol import RoundSpec
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
            pair = target.measure_round(artifact, "onnx", RoundSpec(seq_len=4, beam=2, warmup=1, runs=runs,
                                                                    canary_every=2))
            assert len(pair.encoder.samples_ns) == len(pair.decoder.samples_ns) == runs
            # the canary before the first run, after every second, and after the last
            assert len(pair.encoder.canary_ns) == len(pair.decoder.canary_ns) == (runs + 1) // 2 + 1
            assert min(pair.encoder.canary_ns) > 0 and pair.gate["timed_out"] is False
            assert min(pair.encoder.samples_ns) > 0 and min(pair.decoder.samples_ns) > 0
            pids.append(target.worker.pid)
        info = target.info()
        assert info["cpus"] == str(cpu) and info["threads"] == 1
        assert os.sched_getaffinity(0) == before  # only the child is pinned
    finally:
        target.close()
    assert pids[0] == pids[1] != pids[2] and os.getpid() not in pids
    assert target.worker.pid is None


def test_a_round_waits_for_a_hot_board_and_records_it(artifact, tmp_path, monkeypatch):
    import profiler.gate as gate

    zone = tmp_path / "sys/class/thermal/thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "temp").write_text("90000\n")

    def cool(seconds):
        (zone / "temp").write_text("40000\n")

    monkeypatch.setattr(gate.time, "sleep", cool)
    target = LocalTarget(threads=1, cpus={max(current_affinity())}, sysfs_root=tmp_path)
    try:
        pair = target.measure_round(artifact, "onnx", RoundSpec(seq_len=4, beam=2, warmup=0, runs=2))
    finally:
        target.close()
    assert pair.gate["seen"]["temperature_c"] == 90.0 and pair.gate["at_start"]["temperature_c"] == 40.0
    assert not pair.gate["timed_out"] and len(pair.encoder.samples_ns) == 2


def test_a_round_on_a_slow_host_waits_on_the_canary_probe_and_records_it(artifact, tmp_path):
    ticks = iter(range(0, 10**12, 1000))  # every clock reading 1 µs after the last: each canary takes 1 µs
    target = LocalTarget(threads=1, cpus={max(current_affinity())}, sysfs_root=tmp_path, clock=lambda: next(ticks))
    try:
        spec = RoundSpec(seq_len=4, beam=2, warmup=0, runs=2, cooldown_s=0.0)
        fit = target.measure_round(artifact, "onnx", RoundSpec(**{**spec.to_dict(), "slow_canary_ns": 2000.0}))
        slow = target.measure_round(artifact, "onnx", RoundSpec(**{**spec.to_dict(), "slow_canary_ns": 500.0}))
        plain = target.measure_round(artifact, "onnx", spec)
    finally:
        target.close()
    assert fit.gate["seen"]["canary_ns"] == 1000.0 and not fit.gate["timed_out"]
    assert slow.gate["timed_out"] and slow.gate["unfit"] == "slow"  # no time to wait: timed anyway
    assert plain.gate["seen"]["canary_ns"] == 1000.0 and not plain.gate["timed_out"]  # probed, no limit
    assert fit.encoder.samples_ns == slow.encoder.samples_ns == (1000, 1000)
