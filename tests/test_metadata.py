from __future__ import annotations

import datetime as dt
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import types
from pathlib import Path

import numpy as np
import psutil
import pytest

from profiler.errors import ProtocolError
from profiler.metadata import (collect_environment, current_affinity, default_cpus, format_cpus, parse_cpus,
                               pin_process, snapshot)

REPO = Path(__file__).resolve().parents[1]
linux_affinity = pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or not Path("/proc/self/task").exists(),
                                    reason="needs Linux CPU affinity")


@pytest.fixture
def restore_affinity():
    original = os.sched_getaffinity(0)
    yield original
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), original)
        except OSError:
            pass


@linux_affinity
def test_pin_process_pins_every_thread_and_is_restorable(restore_affinity):
    original = restore_affinity
    release = threading.Event()
    worker = threading.Thread(target=release.wait)
    worker.start()
    try:
        target = {max(original)}
        previous = current_affinity()
        assert previous == original
        assert pin_process(target) == target
        assert os.sched_getaffinity(0) == target
        assert current_affinity() == target
        assert os.sched_getaffinity(worker.native_id) == target  # not just the calling thread
        pin_process(previous)
        assert os.sched_getaffinity(0) == original
        assert os.sched_getaffinity(worker.native_id) == original
    finally:
        release.set()
        worker.join()


@linux_affinity
def test_threads_started_after_pinning_inherit_it(restore_affinity):
    target = {min(restore_affinity)}
    pin_process(target)
    seen = []
    worker = threading.Thread(target=lambda: seen.append(os.sched_getaffinity(0)))
    worker.start()
    worker.join()
    assert seen == [target]


@linux_affinity
def test_pinning_to_an_unavailable_cpu_fails_cleanly(restore_affinity):
    with pytest.raises(ProtocolError, match="4095"):
        pin_process({4095})
    assert os.sched_getaffinity(0) == restore_affinity
    with pytest.raises(ProtocolError):
        pin_process(set())


def test_default_cpus_prefers_the_highest_numbered():
    available = sorted(os.sched_getaffinity(0))
    assert default_cpus(1) == {available[-1]}
    assert default_cpus(len(available)) == set(available)
    with pytest.raises(ProtocolError, match="threads"):
        default_cpus(len(available) + 1)
    with pytest.raises(ProtocolError, match="threads"):
        default_cpus(0)


@pytest.mark.parametrize("cpus, text", [({1}, "1"), ({0, 1}, "0-1"), ({0, 1, 2, 5, 7, 8}, "0-2,5,7-8"),
                                        ({3, 9}, "3,9")])
def test_cpu_list_notation(cpus, text):
    assert format_cpus(cpus) == text
    assert parse_cpus(text) == cpus


@pytest.mark.parametrize("text", ["", "a", "3-1", "1,,2", "-1", "1-"])
def test_bad_cpu_lists_are_refused(text):
    with pytest.raises(ProtocolError):
        parse_cpus(text)


def _cpuinfo_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def test_environment_agrees_with_the_os():
    cpus = {max(os.sched_getaffinity(0))}
    env = collect_environment(1, cpus, {"onnxruntime": "1.2.3", "opset": 17})
    json.dumps(env)  # JSON-able
    assert env["hostname"] == socket.gethostname()
    assert env["python"] == platform.python_version()
    assert env["logical_cores"] == os.cpu_count()
    assert env["physical_cores"] == psutil.cpu_count(logical=False)
    assert env["memory_total_bytes"] == psutil.virtual_memory().total
    assert 0 < env["memory_available_bytes"] <= env["memory_total_bytes"]
    assert env["affinity"] == format_cpus(os.sched_getaffinity(0))
    assert env["cpus"] == format_cpus(cpus) and env["threads"] == 1
    assert env["libraries"]["numpy"] == np.__version__
    assert env["libraries"]["psutil"] == psutil.__version__
    assert env["runtime_versions"] == {"onnxruntime": "1.2.3", "opset": "17"}
    if _cpuinfo_model():
        assert env["cpu_model"] == _cpuinfo_model()
    assert len(env["load_avg"]) == 3 and all(v >= 0 for v in env["load_avg"])
    assert dt.datetime.fromisoformat(env["time"]).tzinfo is not None


def test_onnxruntime_version_is_the_installed_one():
    import onnxruntime

    env = collect_environment(1, {0}, {})
    assert env["libraries"]["onnxruntime"] == onnxruntime.__version__


def test_torch_version_comes_from_the_loaded_module_else_its_package_metadata(monkeypatch):
    import importlib.metadata

    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(__version__="9.9.9"))
    assert collect_environment(1, {0}, {})["libraries"]["torch"] == "9.9.9"
    monkeypatch.delitem(sys.modules, "torch")
    assert collect_environment(1, {0}, {})["libraries"]["torch"] == importlib.metadata.version("torch")


def test_collecting_the_environment_never_imports_torch():
    code = ("import sys, json, importlib.metadata\nfrom profiler.metadata import collect_environment\n"
            "env = collect_environment(1, {0}, {})\n"
            "print(json.dumps(['torch' in sys.modules, env['libraries'].get('torch'), "
            "importlib.metadata.version('torch')]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    imported, recorded, installed = json.loads(out.stdout)
    assert not imported and recorded == installed


def test_snapshot_fields():
    snap = snapshot({0})
    assert set(snap) == {"time", "load_avg", "memory_available_bytes", "cpu_freq_mhz", "temperatures_c"}
    json.dumps(snap)
    assert snap["memory_available_bytes"] > 0


@pytest.mark.parametrize("threads, cpus", [(0, {0}), (1, set()), (1, {-1})])
def test_environment_rejects_bad_arguments(threads, cpus):
    with pytest.raises(ProtocolError):
        collect_environment(threads, cpus, {})


def _arm_block(n: int, part: str, implementer: str = "0x41", name: str | None = None) -> str:
    lines = [f"processor\t: {n}"]
    if name:
        lines.append(f"model name\t: {name}")
    lines += ["BogoMIPS\t: 108.00", "Features\t: fp asimd evtstrm crc32 cpuid",
              f"CPU implementer\t: {implementer}", "CPU architecture: 8", "CPU variant\t: 0x0",
              f"CPU part\t: {part}", "CPU revision\t: 3"]
    return "\n".join(lines) + "\n"


#: /proc/cpuinfo of a Raspberry Pi 4 on 64-bit Raspberry Pi OS (four Cortex-A72 blocks, then the board).
PI4_CPUINFO = "\n".join(_arm_block(n, "0xd08") for n in range(4)) + (
    "\nHardware\t: BCM2835\nRevision\t: c03114\nSerial\t\t: 10000000a1b2c3d4\n"
    "Model\t\t: Raspberry Pi 4 Model B Rev 1.4\n")
#: A 32-bit Raspberry Pi 3 kernel names every core "ARMv7 Processor", which says little.
PI3_CPUINFO = "\n".join(_arm_block(n, "0xd03", name="ARMv7 Processor rev 4 (v7l)") for n in range(4)) + (
    "\nHardware\t: BCM2835\nRevision\t: a02082\nModel\t\t: Raspberry Pi 3 Model B Rev 1.2\n")
#: An RK3588 board: four Cortex-A55 and four Cortex-A76, no Model line in cpuinfo.
RK3588_CPUINFO = "\n".join([*(_arm_block(n, "0xd05") for n in range(4)),
                            *(_arm_block(n, "0xd0b") for n in range(4, 8))])


def _fake(tmp_path, cpuinfo: str, device_tree: bytes | None = None):
    info = tmp_path / "cpuinfo"
    info.write_text(cpuinfo)
    model = tmp_path / "device-tree-model"
    if device_tree is not None:
        model.write_bytes(device_tree)
    return {"cpuinfo": info, "device_tree_model": model}


def test_arm_board_and_cores_from_cpuinfo_and_the_device_tree(tmp_path):
    from profiler.metadata import cpu_model

    paths = _fake(tmp_path, PI4_CPUINFO, b"Raspberry Pi 4 Model B Rev 1.4\x00")
    assert cpu_model(**paths) == "Raspberry Pi 4 Model B Rev 1.4, 4x Cortex-A72"


def test_arm_board_from_cpuinfo_when_there_is_no_device_tree(tmp_path):
    from profiler.metadata import cpu_model

    assert cpu_model(**_fake(tmp_path, PI4_CPUINFO)) == "Raspberry Pi 4 Model B Rev 1.4, 4x Cortex-A72"
    assert cpu_model(**_fake(tmp_path, PI3_CPUINFO)) == "Raspberry Pi 3 Model B Rev 1.2, 4x Cortex-A53"


def test_big_little_cores_are_all_named(tmp_path):
    from profiler.metadata import cpu_model

    paths = _fake(tmp_path, RK3588_CPUINFO, b"Radxa ROCK 5B\x00")
    assert cpu_model(**paths) == "Radxa ROCK 5B, 4x Cortex-A55 + 4x Cortex-A76"
    (tmp_path / "other").mkdir()
    unknown = _fake(tmp_path / "other", _arm_block(0, "0x123", implementer="0x99"))
    assert cpu_model(**unknown) == "1x CPU implementer 0x99 part 0x123"


def test_x86_keeps_the_model_name_line(tmp_path):
    from profiler.metadata import cpu_model

    cpuinfo = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n"
    assert cpu_model(**_fake(tmp_path, cpuinfo)) == "Intel(R) Xeon(R) CPU @ 2.20GHz"
    missing = {"cpuinfo": tmp_path / "absent", "device_tree_model": tmp_path / "absent-too"}
    assert cpu_model(**missing) == (platform.processor() or platform.machine())
