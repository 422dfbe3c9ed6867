"""The in-process target pins while it measures and gives the CPUs back when closed."""
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
