"""Collect latency datasets on many devices at once: the same architectures on every device.

One CSV per device (`DIR/<device>.csv` with its `.raw.jsonl`), written through
`profiler.measure.measure_archs`, the code path of `hatprof measure`. Devices run in
parallel; the agents of one device share its work through a queue, a group of
`interleave` architectures at a time. One thread exports artifacts ahead of the
measuring threads (exports are CPU-heavy and torch's exporter is not meant to run
in several threads at once).

Resumable: every file is opened with resume, so a rerun skips the rows present; rows
are written durably one at a time by `DatasetWriter`, so killing the coordinator
loses only groups in flight. An agent that stops answering (after the client's
retries) leaves the run; the architectures of its unfinished group go back to the
queue for the device's other agents, and are never written twice because only the
thread that measured an architecture writes it. What no agent could measure is
reported per architecture with an error code, to be measured by the next rerun.

An agent whose call (a round, or its info) has waited longer than `silence_s` (or three
times its longest call so far) gets a progress line naming its device and address, so a stopped device is seen
long before its client's deadline (`AgentClient.measure_deadline_s`) gives it up.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from device_agents.client import AgentUnavailable
from device_agents.inventory import Inventory
from profiler.artifacts import get_artifact
from profiler.dataset import DatasetWriter
from profiler.errors import DeviceError, ErrorCode, HatprofError
from profiler.measure import ROW_KINDS, ArchResult, MeasureJob, measure_archs, open_dataset, row_kind
from profiler.protocol import RoundSpec, TimingProtocol
from profiler.space import ArchConfig
from profiler.target import MeasureTarget

logger = logging.getLogger(__name__)

#: Seconds a call may go unanswered before its agent is reported silent (at least three
#: times the agent's longest call so far).
SILENCE_S = 60.0


@dataclass
class FleetDevice:
    """A device to collect on: its name, one target per agent, and its protocol (its threads)."""

    name: str
    targets: list[MeasureTarget]
    protocol: TimingProtocol


@dataclass
class DeviceProgress:
    """Where one device stands; the CLI prints a line from it."""

    device: str
    total: int
    done: int
    failed: int
    agents: int
    agents_live: int
    silent: dict[str, float] = field(default_factory=dict)  # agent -> seconds without an answer
    #: Rows of this run by how their label was reached: clean, re-measured (rounds discarded), unstable.
    kinds: dict[str, int] = field(default_factory=dict)
    eta_s: float | None = None

    def line(self) -> str:
        kinds = ", ".join(f"{kind} {n}" for kind, n in self.kinds.items())
        line = (f"{self.device}: {self.done}/{self.total} rows ({kinds}), {self.failed} failed, "
                f"{self.agents_live}/{self.agents} agents")
        if self.eta_s is not None:
            line += f", ETA {int(self.eta_s // 60)}:{int(self.eta_s % 60):02d}"
        return line + "".join(f"; agent {agent} silent for {seconds:.0f} s"
                              for agent, seconds in sorted(self.silent.items()))


@dataclass
class DeviceReport:
    """The outcome on one device."""

    device: str
    path: Path
    total: int
    already: int = 0
    measured: int = 0
    kinds: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ROW_KINDS, 0))
    failed: list[ArchResult] = field(default_factory=list)
    lost_agents: list[str] = field(default_factory=list)


def fleet_from_inventory(inventory: Inventory, names: Iterable[str], protocol: TimingProtocol) -> list[FleetDevice]:
    """The named devices with their agents; each device times with its inventory `threads`."""
    devices = []
    for name in names:
        spec = inventory.get(name)
        devices.append(FleetDevice(name, list(spec.targets()), replace(protocol, threads=spec.threads)))
    return devices


class _WorkQueue:
    """Architectures ready to measure on one device, shared by its agents."""

    def __init__(self) -> None:
        self._pending: deque[ArchConfig] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._in_flight = 0

    def put(self, arch: ArchConfig) -> None:
        with self._cond:
            self._pending.append(arch)
            self._cond.notify_all()

    def close(self) -> None:
        """No more architectures will be put (requeued ones still may be)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def take(self, n: int) -> list[ArchConfig]:
        """Up to `n` architectures; empty once closed, drained and nothing is in flight."""
        with self._cond:
            while not self._pending and not (self._closed and self._in_flight == 0):
                self._cond.wait()
            chunk = [self._pending.popleft() for _ in range(min(n, len(self._pending)))]
            self._in_flight += len(chunk)
            return chunk

    def finish(self, chunk: Sequence[ArchConfig], requeue: Sequence[ArchConfig] = ()) -> None:
        with self._cond:
            self._pending.extendleft(reversed(list(requeue)))
            self._in_flight -= len(chunk)
            self._cond.notify_all()


class _LockedWriter:
    """A `DatasetWriter` shared by the agent threads of one device."""

    def __init__(self, writer: DatasetWriter) -> None:
        self._writer = writer
        self._lock = threading.Lock()
        self.settings = writer.settings

    @property
    def done_ids(self) -> set[str]:
        with self._lock:
            return set(self._writer.done_ids)

    def write(self, row: dict[str, Any], raw: dict[str, Any]) -> None:
        with self._lock:
            self._writer.write(row, raw)


class _TrackedTarget:
    """A target that remembers losing its agent, and then fails fast instead of retrying again;
    it also knows since when its current call waits for an answer."""

    def __init__(self, target: MeasureTarget) -> None:
        self.target = target
        self.name = target.name
        self.threads = target.threads
        self.agent = str(getattr(target, "url", target))
        self.lost: AgentUnavailable | None = None
        self.waiting_since: float | None = None  # time.monotonic() at the start of the call in flight
        self.longest_s = 0.0
        self.reported = False  # the call in flight was reported silent

    def _call(self, fn: Callable[[], Any]) -> Any:
        if self.lost is not None:
            raise self.lost
        self.reported, self.waiting_since = False, time.monotonic()
        try:
            return fn()
        except AgentUnavailable as exc:
            self.lost = exc
            raise
        finally:
            self.longest_s = max(self.longest_s, time.monotonic() - self.waiting_since)
            self.waiting_since = None

    def info(self) -> dict[str, Any]:
        return self._call(self.target.info)

    def measure_round(self, artifact_dir: Path, fmt: str, spec: RoundSpec, reference_dir: Path | None = None):
        return self._call(lambda: self.target.measure_round(artifact_dir, fmt, spec, reference_dir))

    def silent_for(self, now: float, silence_s: float) -> float | None:
        """Seconds the call in flight has waited, when that is past the silence threshold
        and not yet reported; else None."""
        since = self.waiting_since
        if since is None or self.reported or now - since <= max(silence_s, 3 * self.longest_s):
            return None
        self.reported = True
        return now - since

    def close(self) -> None:
        self.target.close()


class _DeviceRun:
    """The collection on one device: its file, its queue, its agents' threads."""

    def __init__(self, device: FleetDevice, job: MeasureJob, path: Path, archs: Sequence[ArchConfig],
                 on_progress: Callable[[DeviceProgress], None] | None) -> None:
        self.device, self.job, self.path = device, job, path
        self.archs = archs
        self.queue = _WorkQueue()
        self.report = DeviceReport(device.name, path, len(archs))
        self.writer: _LockedWriter | None = None
        self._raw_writer: DatasetWriter | None = None
        self._lock = threading.Lock()
        self._live = len(device.targets)
        self._on_progress = on_progress
        self._started = time.monotonic()
        self.tracked: list[_TrackedTarget] = []

    def open(self) -> set[str]:
        """Open (resume) the device's file; the arch ids already in it."""
        self._raw_writer = open_dataset(self.path, self.job, self.device.name, self.device.targets, resume=True)
        self.writer = _LockedWriter(self._raw_writer)
        wanted = {a.arch_id for a in self.archs}
        self.report.already = len(wanted & self._raw_writer.done_ids)
        return set(self._raw_writer.done_ids)

    def progress(self, silent: dict[str, float] | None = None) -> None:
        if self._on_progress is None:
            return
        with self._lock:
            report = self.report
            left = report.total - report.already - report.measured - len(report.failed)
            elapsed = time.monotonic() - self._started
            finished = report.measured + len(report.failed)
            state = DeviceProgress(self.device.name, report.total, report.already + report.measured,
                                   len(report.failed), len(self.device.targets), self._live, dict(silent or {}),
                                   dict(report.kinds), elapsed / finished * left if finished else None)
        self._on_progress(state)

    def check_silence(self, silence_s: float) -> None:
        """Warn about (and report in a progress line) agents whose call has gone unanswered too long."""
        now = time.monotonic()
        silent = {t.agent: waited for t in list(self.tracked)
                  if (waited := t.silent_for(now, silence_s)) is not None}
        for agent, waited in silent.items():
            logger.warning("%s: agent %s has not answered for %.0f s", self.device.name, agent, waited)
        if silent:
            self.progress(silent)

    def _record(self, results: Iterable[ArchResult]) -> None:
        results = list(results)
        if not results:  # nothing new: no progress line that repeats the last one
            return
        with self._lock:
            for result in results:
                if result.ok:
                    self.report.measured += 1
                    self.report.kinds[row_kind(result.row)] += 1
                else:
                    self.report.failed.append(result)
        self.progress()

    def agent_loop(self, target: MeasureTarget) -> None:
        """Measure groups from the queue on one agent until the queue ends or the agent is lost."""
        tracked = _TrackedTarget(target)
        self.tracked.append(tracked)
        try:
            while tracked.lost is None:
                chunk = self.queue.take(self.job.interleave)
                if not chunk:
                    return
                failures: list[ArchResult] = []
                requeue: list[ArchConfig] = []
                try:
                    measure_archs(chunk, self.job, tracked, self.writer,
                                  on_result=lambda r: self._record([r]) if r.ok else failures.append(r))
                except AgentUnavailable:
                    pass  # info() failed: the whole group goes back to the queue below
                except HatprofError as exc:  # e.g. the dataset file refused a row
                    logger.error("%s: %s", self.device.name, exc)
                    failures.extend(ArchResult(a, error=ErrorCode.WRITE_FAILED, message=str(exc)) for a in chunk
                                    if a.arch_id not in self.writer.done_ids
                                    and a.arch_id not in {f.arch.arch_id for f in failures})
                finally:
                    if tracked.lost is not None:
                        done = self.writer.done_ids
                        requeue = [a for a in chunk if a.arch_id not in done]
                        failures = [f for f in failures if f.arch.arch_id not in {a.arch_id for a in requeue}]
                    self.queue.finish(chunk, requeue)
                self._record(failures)
        finally:
            if tracked.lost is not None:
                logger.warning("%s: lost agent %s: %s", self.device.name, target, tracked.lost)
                with self._lock:
                    self._live -= 1
                    self.report.lost_agents.append(str(getattr(target, "url", target)))
                self.progress()

    def reconcile(self, export_failed: dict[str, str]) -> None:
        """Report every architecture that neither has a row nor a result (its agents were lost)."""
        if self.writer is None:
            return
        done = self.writer.done_ids
        reported = {r.arch.arch_id for r in self.report.failed}
        for arch in self.archs:
            if arch.arch_id in done or arch.arch_id in reported:
                continue
            if arch.arch_id in export_failed:
                result = ArchResult(arch, error=ErrorCode.EXPORT_FAILED, message=export_failed[arch.arch_id])
            else:
                result = ArchResult(arch, error=ErrorCode.UNAVAILABLE, message=f"no agent of device "
                                    f"{self.device.name!r} was left to measure it; rerun to resume")
            self.report.failed.append(result)

    def close(self) -> None:
        if self._raw_writer is not None:
            self._raw_writer.close()


def _export_ahead(archs: Sequence[ArchConfig], job: MeasureJob, runs: list[_DeviceRun],
                  done: dict[str, set[str]], export_failed: dict[str, str]) -> None:
    """Export each architecture once, then hand it to every device that still needs it."""
    try:
        for arch in archs:
            needy = [run for run in runs if arch.arch_id not in done[run.device.name]]
            if not needy:
                continue
            try:
                get_artifact(arch, job.space, job.fmt, cache_dir=job.cache_dir)
            except HatprofError as exc:
                logger.warning("architecture %s: export failed: %s", arch.arch_id, exc)
                export_failed[arch.arch_id] = str(exc)
                continue
            for run in needy:
                run.queue.put(arch)
    finally:
        for run in runs:
            run.queue.close()


def _watch_silence(runs: list[_DeviceRun], silence_s: float, stop: threading.Event) -> None:
    while not stop.wait(min(1.0, silence_s / 2)):
        for run in runs:
            run.check_silence(silence_s)


def collect(devices: Sequence[FleetDevice], archs: Sequence[ArchConfig], job: MeasureJob, out_dir: Path,
            on_progress: Callable[[DeviceProgress], None] | None = None,
            silence_s: float = SILENCE_S) -> dict[str, DeviceReport]:
    """Measure `archs` on every device into `out_dir/<device>.csv`; a report per device.

    `job.protocol` is replaced by each device's own protocol; failures are per-architecture
    results in the reports, never an aborted run. An agent whose call goes unanswered for
    `silence_s` (or three times its longest call) is named in a warning and a progress line.
    """
    if not devices:
        raise DeviceError("no devices to collect on")
    names = [d.name for d in devices]
    if len(set(names)) != len(names):
        raise DeviceError(f"a device is named twice: {', '.join(names)}")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DeviceError(f"cannot create output directory {out_dir}: {exc.strerror}") from None
    runs: list[_DeviceRun] = []
    done: dict[str, set[str]] = {}
    reports: dict[str, DeviceReport] = {}
    export_failed: dict[str, str] = {}
    try:
        for device in devices:
            run = _DeviceRun(device, replace(job, protocol=device.protocol), out_dir / f"{device.name}.csv",
                             archs, on_progress)
            try:
                done[device.name] = run.open()
            except AgentUnavailable as exc:
                logger.warning("%s: %s", device.name, exc)
                run.report.failed = [ArchResult(a, error=ErrorCode.UNAVAILABLE, message=str(exc)) for a in archs]
                reports[device.name] = run.report
                continue
            runs.append(run)
            run.progress()
        threads = [threading.Thread(target=_export_ahead, args=(archs, job, runs, done, export_failed),
                                    name="hatprof-export", daemon=True)]
        for run in runs:
            threads.extend(threading.Thread(target=run.agent_loop, args=(target,), daemon=True,
                                            name=f"hatprof-{run.device.name}-{i}")
                           for i, target in enumerate(run.device.targets))
        stop_watching = threading.Event()
        watchdog = threading.Thread(target=_watch_silence, args=(runs, silence_s, stop_watching),
                                    name="hatprof-silence", daemon=True)
        watchdog.start()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        stop_watching.set()
        watchdog.join()
        for run in runs:
            run.reconcile(export_failed)
            reports[run.device.name] = run.report
    finally:
        for run in runs:
            run.close()
    return {name: reports[name] for name in names}
