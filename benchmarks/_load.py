"""Other work on the machine, on purpose: busy-loop processes for the benchmarks that measure
under load (bench_label, bench_e2e, bench_search_load)."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator


@contextlib.contextmanager
def busy_loops(cpus: Iterable[int | None]) -> Iterator[None]:
    """One pure-Python busy loop per entry of `cpus`, pinned to that CPU (None: not pinned),
    for the duration of the `with` block; a loop whose benchmark was killed (no `finally`
    runs then) ends by itself within a few tens of milliseconds."""
    processes = []
    try:
        for cpu in cpus:
            pin = "" if cpu is None else f"os.sched_setaffinity(0, {{{cpu}}})\n"
            loop = f"while os.getppid() == {os.getpid()}:\n    for _ in range(1_000_000): pass\n"
            processes.append(subprocess.Popen([sys.executable, "-c", "import os\n" + pin + loop]))
        yield
    finally:
        for process in processes:
            process.kill()
            process.wait()
