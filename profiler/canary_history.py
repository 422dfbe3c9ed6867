"""The machine's fast level, kept across measuring processes: the gate's canary probe over time.

A host can be slow for longer than one process measures (another tenant on a VM's cores:
on the 2-core development VM and on a 16-vCPU Xeon server alike, whole processes ran every
model and the canary about 1.5x slower, their minimum included). Judged against its own
typical canary, such a session looks calm, and a label 50% off is reported as converged.
So the gate's probe before every round (the median of a few canary runs back to back,
`profiler.gate`) is kept in the artifact cache (`<cache>/canary/<key>.json`, the last
`HISTORY_ROUNDS`), and `FAST_QUANTILE` of them is the machine's fast level, once `MIN_ROUNDS`
are known; the coordinator asks the gate to wait while the probe is above it by more than
`profiler.convergence.CANARY_LIMIT`, and judges the canaries between a model's runs against
it too when it is below the session's median. The probe is recorded rather than those
canaries because it does not depend on the model timed before it (on the development VM
the two sit within about 5% of each other, for small and large architectures alike).
A machine is its hostname, CPU model, CPU architecture and Python (the canary is pure
Python). Delete the file to start the machine's history afresh (e.g. after moving a VM to
other hardware under the same name). The duet's reference model keeps its fast level the same
way, in a history of its own per machine (`profiler.duet`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from profiler.artifacts import cache_root
from profiler.errors import HatprofError
from profiler.files import write_atomically

logger = logging.getLogger(__name__)

#: Rounds of history kept per machine (a few hours of measuring).
HISTORY_ROUNDS = 2000
#: The machine's fast level: this quantile of its probes.
FAST_QUANTILE = 0.2
#: Rounds needed before the fast level is used (below it, only the session's own median is).
MIN_ROUNDS = 30
#: The facts of the measuring machine (from the target's environment) that name its history.
MACHINE_KEYS = ("hostname", "cpu_model", "machine", "python_implementation", "python")


def machine_key(environment: Mapping[str, Any]) -> str:
    """A short name for the machine `environment` describes (see `MACHINE_KEYS`)."""
    facts = {k: environment.get(k) for k in MACHINE_KEYS}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


class CanaryHistory:
    """The gate's canary probes of the rounds recently timed on one machine; `path` None: in memory only."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._saved = self._load()
        self._new: list[float] = []

    @classmethod
    def for_machine(cls, environment: Mapping[str, Any], cache_dir: str | Path | None = None,
                    kind: str = "") -> "CanaryHistory":
        """The history of the machine `environment` describes; `kind` names another timed
        reference than the canary (the duet's reference model), kept in a file of its own."""
        name = machine_key(environment) + (f"-{kind}" if kind else "")
        return cls(cache_root(cache_dir) / "canary" / f"{name}.json")

    def _load(self) -> list[float]:
        if self.path is None or not self.path.is_file():
            return []
        try:
            probes = json.loads(self.path.read_text())["probe_ns"]
            return [float(p) for p in probes if float(p) > 0]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("ignoring the unreadable canary history %s (%s)", self.path, exc)
            return []

    @staticmethod
    def _kept(probes: list[float]) -> list[float]:
        """Which probes the history keeps: the last `HISTORY_ROUNDS`."""
        return probes[-HISTORY_ROUNDS:]

    @property
    def probes(self) -> list[float]:
        return self._kept(self._saved + self._new)

    @property
    def fast_ns(self) -> float | None:
        """The machine's fast level, or None while fewer than `MIN_ROUNDS` rounds are known."""
        return self.level_ns() if len(self.probes) >= MIN_ROUNDS else None

    def level_ns(self) -> float | None:
        """`FAST_QUANTILE` of the probes known, however few (None: none yet)."""
        probes = self.probes
        if len(probes) < 2:
            return probes[0] if probes else None
        return statistics.quantiles(probes, n=100, method="inclusive")[round(FAST_QUANTILE * 100) - 1]

    def record(self, probe_ns: float | None) -> None:
        """Add the probe the gate timed before a round (None: the device has no probe)."""
        if probe_ns:
            self._new.append(float(probe_ns))

    def save(self) -> None:
        """Write the rounds recorded here after those on disk now (another process may have added some)."""
        if self.path is None or not self._new:
            return
        on_disk = self._load()
        merged = self._kept(on_disk + self._new)
        try:
            write_atomically(self.path, json.dumps({"probe_ns": merged}) + "\n")
        except HatprofError as exc:  # the history is a cache: measuring goes on without it
            logger.warning("cannot keep the canary history: %s", exc)
            return
        self._saved, self._new = merged, []
