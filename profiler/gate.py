"""The gate: before each round, wait (bounded) until the board is fit to time: cool, unthrottled, not slowed.

A Raspberry Pi 4 throttles near 80 °C, and its firmware caps the clock on under-voltage or
heat; a round timed then measures the throttle, not the model. Before each round the gate
reads the hottest thermal zone and, on a Pi, the firmware's throttle flags; while the board
is at or above `max_temp_c` (until it is `HYSTERESIS_C` below it) or a flag says the clock is
capped now, it waits, up to `cooldown_s`. What it saw and how long it waited go into the
round's record; a wait that ran out is recorded too (the round is then judged disturbed and
measured again). Clock frequencies and the governor are recorded, not gated: on x86 the
"maximum" clock is ambiguous (turbo), and an `ondemand` governor raises the clock only under
load, which the warm-up runs provide.

A host can also be slow for seconds to minutes at a time (another tenant on a VM's cores: on
a 16-vCPU Xeon server the canary sat near 100 µs or near 170 µs, in stretches of 10-20
rounds, for whole processes at times). So the gate also times a probe, the median of a few
runs of the reference kernel back to back (`canary_ns`, `profiler.protocol.canary_median_ns`),
and, given `slow_ns` (from the machine's fast level, `profiler.canary_history`), waits while
the probe is above it: a round timed then would measure the host, and the wait costs no
device time.

Everything is read under an injectable root directory, so tests drive the gate with a fake
sysfs tree, a fake clock and a fake sleep. Device side: standard library only.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: Once too hot, the board must cool this far below the limit before timing resumes.
HYSTERESIS_C = 5.0
#: How often the gate looks again while it waits.
POLL_S = 1.0
#: The Raspberry Pi firmware's `get_throttled` bits that describe the state now (the bits
#: 16-19 say "has occurred since boot" and do not stop a round).
THROTTLED_NOW = {0: "under-voltage", 1: "frequency capped", 2: "throttled", 3: "soft temperature limit"}
_PI_THROTTLED = "sys/devices/platform/soc/soc:firmware/get_throttled"


@dataclass(frozen=True)
class BoardState:
    """What the gate reads: the hottest zone, the throttle flags now, clocks and governors."""

    temperature_c: float | None
    throttled: tuple[str, ...]
    frequency_ratio: float | None
    governors: tuple[str, ...]
    canary_ns: float | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["throttled"], data["governors"] = list(self.throttled), list(self.governors)
        return data


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _number(text: str | None, base: int = 10) -> int | None:
    try:
        return int(text, base) if text is not None else None
    except ValueError:
        return None


class ThermalGate:
    """Reads the board state under `root` and waits, bounded, for a cool, unthrottled board."""

    def __init__(self, cpus: Iterable[int], max_temp_c: float = 80.0, cooldown_s: float = 120.0,
                 root: str | Path = "/", clock: Callable[[], float] | None = None,
                 sleep: Callable[[float], None] | None = None, slow_ns: float = 0.0,
                 canary_ns: Callable[[], float] | None = None) -> None:
        self.cpus = sorted(cpus)
        self.max_temp_c = max_temp_c
        self.cooldown_s = cooldown_s
        self.slow_ns = slow_ns
        self._canary_ns = canary_ns
        self.root = Path(root)
        self._clock = clock or time.monotonic
        self._sleep = sleep or time.sleep

    def read(self) -> BoardState:
        temps = [_number(_read(zone / "temp")) for zone in sorted(self.root.glob("sys/class/thermal/thermal_zone*"))]
        known = [t / 1000.0 for t in temps if t is not None]
        flags = _number(_read(self.root / _PI_THROTTLED), 16)
        throttled = tuple(name for bit, name in THROTTLED_NOW.items() if flags is not None and flags >> bit & 1)
        ratios, governors = [], []
        for cpu in self.cpus:
            base = self.root / f"sys/devices/system/cpu/cpu{cpu}/cpufreq"
            current, highest = _number(_read(base / "scaling_cur_freq")), _number(_read(base / "scaling_max_freq"))
            if current is not None and highest:
                ratios.append(current / highest)
            governor = _read(base / "scaling_governor")
            if governor:
                governors.append(governor)
        return BoardState(max(known) if known else None, throttled, min(ratios) if ratios else None,
                          tuple(sorted(set(governors))), self._canary_ns() if self._canary_ns else None)

    def _unfit(self, state: BoardState, limit_c: float) -> str | None:
        """Why the board is not fit to time now: throttled, hot or slow; None when it is."""
        if state.throttled:
            return "throttled"
        if state.temperature_c is not None and state.temperature_c >= limit_c:
            return "hot"
        if self.slow_ns > 0 and state.canary_ns is not None and state.canary_ns > self.slow_ns:
            return "slow"
        return None

    def _describe(self, why: str, state: BoardState) -> str:
        if why == "slow":
            return f"canary {state.canary_ns / 1000:.0f} µs, limit {self.slow_ns / 1000:.0f} µs"
        if why == "hot":
            return f"{state.temperature_c:.0f} °C, limit {self.max_temp_c:.0f} °C"
        return ", ".join(state.throttled)

    def wait(self) -> dict[str, Any]:
        """Wait until the board is fit (or `cooldown_s` ran out); the record of what was seen
        (`unfit`: why it was still unfit when the wait ran out)."""
        start = self._clock()
        first = state = self.read()
        limit_c = self.max_temp_c
        unfit = None
        while why := self._unfit(state, limit_c):
            if why != "slow":
                limit_c = self.max_temp_c - HYSTERESIS_C
            if self._clock() - start >= self.cooldown_s:
                unfit = why
                logger.warning("the board stayed %s for %.0f s (%s); timed anyway, the round will be discarded",
                               why, self.cooldown_s, self._describe(why, state))
                break
            self._sleep(POLL_S)
            state = self.read()
        return {"seen": first.to_dict(), "at_start": state.to_dict(), "waited_s": self._clock() - start,
                "timed_out": unfit is not None, "unfit": unfit, "slow_ns": self.slow_ns}
