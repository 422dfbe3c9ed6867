"""CPU pinning and the environment a measurement was taken in.

Runs on the device side: imports only the standard library, numpy and psutil.
torch's version is recorded only when torch is already loaded; it is never imported here.
"""
from __future__ import annotations

import datetime as dt
import importlib.metadata
import logging
import os
import platform
import socket
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from profiler.errors import ProtocolError

logger = logging.getLogger(__name__)

_CPUINFO_MODEL_KEYS = ("model name", "Model", "Hardware", "Processor", "cpu model")
#: Board names in /proc/cpuinfo on ARM, most specific first (the device tree's model comes before them).
_CPUINFO_BOARD_KEYS = ("Model", "Hardware")
#: ARM core names by /proc/cpuinfo's (`CPU implementer`, `CPU part`): the cores of common boards.
_ARM_CORES = {
    ("0x41", "0xb76"): "ARM1176", ("0x41", "0xc07"): "Cortex-A7", ("0x41", "0xc09"): "Cortex-A9",
    ("0x41", "0xc0f"): "Cortex-A15", ("0x41", "0xd03"): "Cortex-A53", ("0x41", "0xd04"): "Cortex-A35",
    ("0x41", "0xd05"): "Cortex-A55", ("0x41", "0xd07"): "Cortex-A57", ("0x41", "0xd08"): "Cortex-A72",
    ("0x41", "0xd09"): "Cortex-A73", ("0x41", "0xd0a"): "Cortex-A75", ("0x41", "0xd0b"): "Cortex-A76",
    ("0x41", "0xd0c"): "Neoverse-N1", ("0x41", "0xd0d"): "Cortex-A77", ("0x41", "0xd40"): "Neoverse-V1",
    ("0x41", "0xd41"): "Cortex-A78", ("0x41", "0xd44"): "Cortex-X1", ("0x41", "0xd46"): "Cortex-A510",
    ("0x41", "0xd47"): "Cortex-A710", ("0x41", "0xd48"): "Cortex-X2", ("0x41", "0xd49"): "Neoverse-N2",
    ("0x41", "0xd4b"): "Cortex-A78C", ("0x41", "0xd4f"): "Neoverse-V2", ("0x4e", "0x004"): "NVIDIA Carmel",
}
#: Distribution names onnxruntime ships under.
_ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml")


def current_affinity() -> set[int]:
    """The CPUs this thread may run on (all CPUs where the OS has no affinity call)."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def format_cpus(cpus: Iterable[int]) -> str:
    """A CPU set in Linux list notation: {0, 1, 2, 5} -> "0-2,5"."""
    ordered = sorted(set(cpus))
    parts = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def parse_cpus(text: str) -> set[int]:
    """The inverse of `format_cpus`: "0-2,5" -> {0, 1, 2, 5}."""
    cpus: set[int] = set()
    for part in str(text).split(","):
        lo, sep, hi = part.strip().partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()) or (sep and int(hi) < int(lo)):
            raise ProtocolError(f"CPU list {text!r} is not like '0-2,5'")
        cpus.update(range(int(lo), int(hi if sep else lo) + 1))
    return cpus


def _check_cpus(cpus: Iterable[int]) -> set[int]:
    result = set(cpus)
    if not result or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in result):
        raise ProtocolError(f"CPUs must be a non-empty set of CPU numbers, got {sorted(result)!r}")
    return result


def pin_process(cpus: Iterable[int]) -> set[int]:
    """Restrict every thread of this process to `cpus`, and return them.

    Threads started later inherit the affinity of the thread that starts them. To undo,
    read `current_affinity()` first and pin to it again.
    """
    cpus = _check_cpus(cpus)
    if not hasattr(os, "sched_setaffinity"):
        raise ProtocolError(f"cannot pin to CPUs {format_cpus(cpus)}: this OS has no CPU affinity call")
    try:
        os.sched_setaffinity(0, cpus)
    except OSError as exc:
        raise ProtocolError(f"cannot pin to CPUs {format_cpus(cpus)} (this process may use "
                            f"{format_cpus(current_affinity())}): {exc.strerror}") from None
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        logger.debug("no /proc/self/task: pinned the calling thread only")
        return cpus
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
        except ProcessLookupError:  # the thread ended meanwhile
            continue
        except OSError as exc:
            raise ProtocolError(f"cannot pin thread {tid} to CPUs {format_cpus(cpus)}: {exc.strerror}") from None
    return cpus


def default_cpus(threads: int) -> set[int]:
    """`threads` CPUs from the current affinity set, the highest-numbered first (CPU 0 takes more interrupts)."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ProtocolError(f"threads must be a positive integer, got {threads!r}")
    available = sorted(current_affinity())
    if threads > len(available):
        raise ProtocolError(f"threads={threads} but only {len(available)} CPU(s) are available "
                            f"({format_cpus(available)})")
    return set(available[-threads:])


def _read_text(path: str | Path) -> str | None:
    try:  # device-tree strings end in NUL
        return Path(path).read_text(errors="replace").replace("\x00", "").strip()
    except OSError:
        return None


def _cpuinfo_blocks(text: str) -> list[dict[str, str]]:
    """/proc/cpuinfo as its blank-line separated blocks of `key: value` lines."""
    blocks: list[dict[str, str]] = [{}]
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not line.strip():
            blocks.append({})
        elif sep:
            blocks[-1].setdefault(key.strip(), value.strip())
    return [block for block in blocks if block]


def _arm_cores(blocks: list[dict[str, str]]) -> str | None:
    """ "4x Cortex-A55 + 4x Cortex-A76" from the `CPU implementer`/`CPU part` of each core."""
    counts: dict[str, int] = {}
    for block in blocks:
        if "CPU part" in block:
            key = (block.get("CPU implementer", "").lower(), block["CPU part"].lower())
            name = _ARM_CORES.get(key, f"CPU implementer {key[0]} part {key[1]}")
            counts[name] = counts.get(name, 0) + 1
    return " + ".join(f"{n}x {name}" for name, n in counts.items()) or None


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo",
              device_tree_model: str | Path = "/proc/device-tree/model") -> str:
    """The CPU's name from /proc/cpuinfo, else what `platform` knows.

    ARM kernels name no CPU model (or a vague "ARMv7 Processor"), so on ARM it is the
    board (the device tree's model, else cpuinfo's `Model` or `Hardware`) and its cores
    from their `CPU part` numbers: "Raspberry Pi 4 Model B Rev 1.4, 4x Cortex-A72".
    The paths are parameters so that tests can read fake files.
    """
    blocks = _cpuinfo_blocks(_read_text(cpuinfo) or "")
    fields: dict[str, str] = {}
    for block in blocks:
        for key, value in block.items():
            fields.setdefault(key, value)
    cores = _arm_cores(blocks)
    if cores is not None:
        board = _read_text(device_tree_model) or next(
            (fields[key] for key in _CPUINFO_BOARD_KEYS if fields.get(key)), None)
        return f"{board}, {cores}" if board else cores
    for key in _CPUINFO_MODEL_KEYS:
        if fields.get(key):
            return fields[key]
    return platform.processor() or platform.machine()


def _governors(cpus: Iterable[int]) -> dict[str, str] | None:
    found = {str(c): g for c in sorted(cpus)
             if (g := _read_text(f"/sys/devices/system/cpu/cpu{c}/cpufreq/scaling_governor"))}
    return found or None


def _frequencies_mhz(cpus: Iterable[int]) -> dict[str, float] | None:
    try:
        per_cpu = psutil.cpu_freq(percpu=True) or []
    except (OSError, NotImplementedError, AttributeError):
        return None
    if not per_cpu:
        return None
    if len(per_cpu) == 1:  # the OS reports one frequency for all CPUs
        return {"all": float(per_cpu[0].current)}
    return {str(c): float(per_cpu[c].current) for c in sorted(cpus) if c < len(per_cpu)}


def _temperatures_c() -> dict[str, float] | None:
    read = getattr(psutil, "sensors_temperatures", None)
    if read is None:
        return None
    try:
        sensors = read()
    except (OSError, RuntimeError):
        return None
    found = {f"{name}/{entry.label or i}": float(entry.current)
             for name, entries in sensors.items() for i, entry in enumerate(entries)}
    return found or None


def snapshot(cpus: Iterable[int] | None = None) -> dict[str, Any]:
    """What changes during a run: load, free memory, frequency and temperature; take one before and after."""
    cpus = current_affinity() if cpus is None else _check_cpus(cpus)
    return {
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "memory_available_bytes": int(psutil.virtual_memory().available),
        "cpu_freq_mhz": _frequencies_mhz(cpus),
        "temperatures_c": _temperatures_c(),
    }


def _library_version(module: str, distributions: Iterable[str]) -> str | None:
    loaded = sys.modules.get(module)
    if loaded is not None and getattr(loaded, "__version__", None):
        return str(loaded.__version__)
    for dist in distributions:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def library_versions() -> dict[str, str | None]:
    """numpy, psutil, onnxruntime and hatprof; torch where it is installed (read from its
    package metadata, never imported: the device side must not load it)."""
    versions = {
        "hatprof": _library_version("hatprof", ("hatprof",)),
        "numpy": np.__version__,
        "psutil": psutil.__version__,
        "onnxruntime": _library_version("onnxruntime", _ORT_DISTRIBUTIONS),
    }
    torch = _library_version("torch", ("torch",))
    if torch is not None:
        versions["torch"] = torch
    return versions


def collect_environment(threads: int, cpus: Iterable[int],
                        runtime_versions: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON-able record of the host, its CPUs and libraries, and the threads/affinity used."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ProtocolError(f"threads must be a positive integer, got {threads!r}")
    cpus = _check_cpus(cpus)
    freq = None
    try:
        freq = psutil.cpu_freq()
    except (OSError, NotImplementedError, AttributeError):
        logger.debug("psutil cannot read the CPU frequency here")
    clock = time.get_clock_info("perf_counter")
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "cpu_model": cpu_model(),
        "logical_cores": psutil.cpu_count(logical=True),
        "physical_cores": psutil.cpu_count(logical=False),
        "cpu_freq_min_mhz": float(freq.min) if freq and freq.min else None,
        "cpu_freq_max_mhz": float(freq.max) if freq and freq.max else None,
        "scaling_governor": _governors(cpus),
        "memory_total_bytes": int(psutil.virtual_memory().total),
        "libraries": library_versions(),
        "runtime_versions": {str(k): v if v is None else str(v) for k, v in runtime_versions.items()},
        "threads": threads,
        "cpus": format_cpus(cpus),
        "affinity": format_cpus(current_affinity()),
        "clock": {"name": "perf_counter_ns", "implementation": clock.implementation,
                  "resolution_ns": clock.resolution * 1e9, "monotonic": clock.monotonic},
        **snapshot(cpus),
    }
