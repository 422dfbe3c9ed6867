"""Other work on the machine, on purpose: busy-loop processes for the benchmarks that measure
under load (bench_label, bench_e2e, bench_search_load)."""
from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterable, Iterator


@contextlib.contextmanager
def busy_loops(cpus: Iterable[int | None]) -> Iterator[None]:
    """One pure-Python busy loop per entry of `cpus`, pinned to that CPU (None: not pinned),
    for the duration of the `with` block."""
    processes = []
    try:
        for cpu in cpus:
            pin = "" if cpu is None else f"import os; os.sched_setaffinity(0, {{{cpu}}})\n"
            processes.append(subprocess.Popen([sys.executable, "-c", pin + "while True: pass"]))
        yield
    finally:
        for process in processes:
            process.kill()
            process.wait()
