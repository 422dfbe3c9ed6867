"""The thermal and clock gate, driven by a fake sysfs tree, a fake clock and a fake sleep."""
from __future__ import annotations

from pathlib import Path

import pytest

from profiler.gate import HYSTERESIS_C, POLL_S, ThermalGate

PI_FLAGS = "sys/devices/platform/soc/soc:firmware/get_throttled"


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


class FakeTime:
    """A clock that only moves when the gate sleeps; each sleep runs `on_sleep` (the board changing)."""

    def __init__(self, on_sleep=lambda: None):
        self.now = 1000.0
        self.sleeps = 0
        self.on_sleep = on_sleep

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.sleeps += 1
        self.on_sleep()


@pytest.fixture
def board(tmp_path):
    write(tmp_path, "sys/class/thermal/thermal_zone0/temp", "52000")
    write(tmp_path, "sys/class/thermal/thermal_zone1/temp", "61500")
    for cpu, current in ((2, "1500000"), (3, "600000")):
        write(tmp_path, f"sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_cur_freq", current)
        write(tmp_path, f"sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_max_freq", "1500000")
        write(tmp_path, f"sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor", "ondemand")
    return tmp_path


def test_reads_the_hottest_zone_the_lowest_clock_ratio_and_the_governor(board):
    state = ThermalGate({2, 3}, root=board).read()
    assert state.temperature_c == 61.5
    assert state.frequency_ratio == pytest.approx(0.4)
    assert state.governors == ("ondemand",) and state.throttled == ()


def test_a_cool_board_passes_at_once(board):
    fake = FakeTime()
    record = ThermalGate({2}, max_temp_c=80, root=board, clock=fake.clock, sleep=fake.sleep).wait()
    assert fake.sleeps == 0 and record["waited_s"] == 0 and not record["timed_out"]
    assert record["seen"]["temperature_c"] == 61.5


def test_a_hot_board_is_waited_for_until_it_is_below_the_limit_less_the_hysteresis(board):
    temps = iter([81000, 79000, 76000, 74900])  # at the limit, then cooling by the poll

    def cool():
        write(board, "sys/class/thermal/thermal_zone1/temp", str(next(temps)))

    write(board, "sys/class/thermal/thermal_zone1/temp", "80000")
    fake = FakeTime(cool)
    record = ThermalGate({2}, max_temp_c=80, cooldown_s=60, root=board, clock=fake.clock, sleep=fake.sleep).wait()
    # 79 and 76 are below 80 but not below 80 - 5: the gate waits until 74.9
    assert 80 - HYSTERESIS_C == 75
    assert fake.sleeps == 4 and record["waited_s"] == 4 * POLL_S
    assert record["seen"]["temperature_c"] == 80.0 and record["at_start"]["temperature_c"] == 74.9
    assert not record["timed_out"]


def test_a_wait_that_runs_out_is_recorded(board):
    write(board, "sys/class/thermal/thermal_zone0/temp", "85000")
    fake = FakeTime()
    record = ThermalGate({2}, max_temp_c=80, cooldown_s=5, root=board, clock=fake.clock, sleep=fake.sleep).wait()
    assert record["timed_out"] and record["unfit"] == "hot" and record["waited_s"] == pytest.approx(5.0)
    assert fake.sleeps == 5


def test_the_pi_firmware_flags_now_stop_a_round_and_those_since_boot_do_not(board):
    write(board, PI_FLAGS, "50000")  # under-voltage and throttling have occurred since boot: no wait
    gate = ThermalGate({2}, root=board, clock=FakeTime().clock, sleep=FakeTime().sleep)
    assert gate.read().throttled == ()
    flags = iter(["50000"])

    def recover():
        write(board, PI_FLAGS, next(flags))

    write(board, PI_FLAGS, "50005")  # under-voltage and throttled now
    fake = FakeTime(recover)
    gate = ThermalGate({2}, root=board, clock=fake.clock, sleep=fake.sleep)
    assert gate.read().throttled == ("under-voltage", "throttled")
    record = gate.wait()
    assert fake.sleeps == 1 and record["seen"]["throttled"] == ["under-voltage", "throttled"]
    assert record["at_start"]["throttled"] == []


def test_a_machine_without_sensors_is_never_waited_for(tmp_path):
    fake = FakeTime()
    record = ThermalGate({0}, root=tmp_path, clock=fake.clock, sleep=fake.sleep).wait()
    assert record["seen"] == {"temperature_c": None, "throttled": [], "frequency_ratio": None, "governors": [],
                              "canary_ns": None}
    assert fake.sleeps == 0


def test_a_slow_host_is_waited_for_until_its_canary_is_back_at_the_fast_level(tmp_path):
    canaries = iter([170_000.0, 168_000.0, 181_000.0, 104_000.0])  # slow for three looks, then fast
    fake = FakeTime()
    gate = ThermalGate({0}, cooldown_s=60, root=tmp_path, clock=fake.clock, sleep=fake.sleep,
                       slow_ns=125_000.0, canary_ns=lambda: next(canaries))
    record = gate.wait()
    assert fake.sleeps == 3 and record["waited_s"] == 3 * POLL_S and not record["timed_out"]
    assert record["seen"]["canary_ns"] == 170_000.0 and record["at_start"]["canary_ns"] == 104_000.0
    assert record["unfit"] is None


def test_a_slow_wait_that_runs_out_is_recorded_as_slow_and_without_a_limit_the_probe_is_only_recorded(tmp_path,
                                                                                                     caplog):
    fake = FakeTime()
    with caplog.at_level("WARNING"):
        record = ThermalGate({0}, cooldown_s=3, root=tmp_path, clock=fake.clock, sleep=fake.sleep,
                             slow_ns=100_000.0, canary_ns=lambda: 150_000.0).wait()
    assert record["timed_out"] and record["unfit"] == "slow" and fake.sleeps == 3 and record["slow_ns"] == 100_000.0
    assert "stayed slow for 3 s (canary 150 µs, limit 100 µs)" in caplog.text
    fake = FakeTime()
    record = ThermalGate({0}, root=tmp_path, clock=fake.clock, sleep=fake.sleep, canary_ns=lambda: 150_000.0).wait()
    assert record["seen"]["canary_ns"] == 150_000.0 and not record["timed_out"] and fake.sleeps == 0
