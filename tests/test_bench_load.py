"""The benchmarks' busy loops end with the benchmark, even when it is killed."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

# A benchmark that starts one busy loop, says its pid, and is killed (no `finally` runs).
KILLED_BENCHMARK = f"""
import os, signal, sys
sys.path.insert(0, {str(BENCHMARKS)!r})
from _load import busy_loops
with busy_loops([None]):
    import psutil
    print(psutil.Process().children()[0].pid, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _running(pid: int) -> bool:
    """Whether `pid` is a live process (an exited, unreaped one is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def test_a_killed_benchmarks_busy_loop_ends_by_itself():
    benchmark = subprocess.Popen([sys.executable, "-c", KILLED_BENCHMARK], stdout=subprocess.PIPE, text=True)
    loop = int(benchmark.stdout.readline())
    benchmark.stdout.close()
    assert benchmark.wait(timeout=60) == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while _running(loop) and time.monotonic() < deadline:
        time.sleep(0.05)
    still_running = _running(loop)
    if still_running:
        os.kill(loop, signal.SIGKILL)
    assert not still_running
