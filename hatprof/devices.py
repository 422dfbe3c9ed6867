"""Opening a device by name, and measuring on it with a progress bar: the app's share of
`hatprof measure`, `hatprof search --measure-device` and `hatprof demo`.

'local' is this machine, timed in the profiler's worker process; any other name is looked
up in the device inventory of `device_agents`.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Callable

import click

from profiler.convergence import ArchRounds
from profiler.errors import HatprofError
from profiler.measure import ROW_KINDS, ArchResult, MeasureJob, measure_archs, open_dataset, row_kind
from profiler.protocol import TimingProtocol
from profiler.space import ArchConfig
from profiler.target import MeasureTarget


def open_device(name: str, protocol: TimingProtocol, cpus: set[int] | None = None,
                inventory: str | Path | None = None) -> tuple[MeasureTarget, TimingProtocol]:
    """`local` (timed in a worker process, renewed every `RECYCLE_ROUNDS` rounds), or a device
    named in the inventory, and the protocol it times with.

    A device of the inventory times with the inventory's `threads` (as `hatprof collect`
    does), so one device's files never disagree on it.
    """
    if name == "local":
        from profiler.worker import WorkerTarget

        return WorkerTarget(threads=protocol.threads, cpus=cpus), protocol
    try:
        from device_agents.inventory import load_inventory
    except ModuleNotFoundError:
        raise HatprofError(f"unknown device {name!r} (known: local)") from None
    devices = load_inventory(inventory)
    threads = devices.get(name).threads
    return devices.open_target(name, threads), dataclasses.replace(protocol, threads=threads)


def progress_bar(total: int, label: str):
    """A click progress bar on stderr (with position and ETA), for `total` steps."""
    return click.progressbar(length=total, label=label, file=sys.stderr, show_eta=True, show_pos=True)


class MeasureProgress:
    """The bar of a measurement: one step per timed round (more steps appear when an
    architecture needs extra rounds), with a running count of clean rows, rows with rounds
    measured again, and rows flagged unstable."""

    def __init__(self, bar, planned_rounds: int) -> None:
        self.bar, self.planned = bar, planned_rounds
        self.rounds: dict[str, int] = {}
        self.counts = dict.fromkeys((*ROW_KINDS, "failed"), 0)

    def status(self) -> str:
        return "  ".join(f"{k} {v}" for k, v in self.counts.items() if v or k != "failed")

    def on_round(self, arch: ArchConfig, state: ArchRounds) -> None:
        seen = self.rounds[arch.arch_id] = self.rounds.get(arch.arch_id, 0) + 1
        if seen > self.planned:
            self.bar.length += 1
        self.bar.update(1, self.status())

    def on_result(self, result: ArchResult) -> None:
        self.counts[row_kind(result.row) if result.ok else "failed"] += 1
        left = self.planned - self.rounds.get(result.arch.arch_id, 0)
        self.bar.update(max(left, 0), self.status())  # a failed architecture's rounds are not coming
        self.bar.render_progress()


def run_measure(archs: list[ArchConfig], job: MeasureJob, target: MeasureTarget, out: Path,
                resume: bool, device: str,
                on_result: Callable[[ArchResult], None] | None = None) -> list[ArchResult]:
    """Measure `archs` into `out` with a progress bar (ETA, clean/re-measured/unstable counts);
    `on_result` hears of each row as it is written. The shared body of measure and demo."""
    with open_dataset(out, job, device, getattr(target, "targets", [target]), resume) as writer:
        todo = [a for a in archs if a.arch_id not in writer.done_ids]
        if len(todo) < len(archs):
            click.echo(f"resuming: {len(archs) - len(todo)} of {len(archs)} already in {out}", err=True)
        planned = len(job.protocol.runs_per_round())
        with click.progressbar(length=len(todo) * planned, label=f"measuring on {device}", file=sys.stderr,
                               show_eta=True, show_pos=True, item_show_func=lambda status: status) as bar:
            progress = MeasureProgress(bar, planned)

            def finished(result: ArchResult) -> None:
                if on_result is not None:
                    if sys.stderr.isatty():  # the row's line replaces the bar's, which is drawn again below it
                        sys.stderr.write("\r\x1b[K")
                    on_result(result)
                progress.on_result(result)

            return measure_archs(todo, job, target, writer, on_result=finished, on_round=progress.on_round)
