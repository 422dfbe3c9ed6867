"""Opening a device by name, and measuring on it with a progress bar: the app's share of
`hatprof measure`, `hatprof search --measure-device` and `hatprof demo`.

'local' is this machine, timed in the profiler's worker process; any other name is looked
up in the device inventory of `device_agents`.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import click

from profiler.errors import HatprofError
from profiler.measure import ArchResult, MeasureJob, measure_archs, open_dataset
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


def run_measure(archs: list[ArchConfig], job: MeasureJob, target: MeasureTarget, out: Path,
                resume: bool, device: str) -> list[ArchResult]:
    """Measure `archs` into `out` with a progress bar; the shared body of measure and demo."""
    with open_dataset(out, job, device, getattr(target, "targets", [target]), resume) as writer:
        todo = [a for a in archs if a.arch_id not in writer.done_ids]
        if len(todo) < len(archs):
            click.echo(f"resuming: {len(archs) - len(todo)} of {len(archs)} already in {out}", err=True)
        with progress_bar(len(todo), f"measuring on {device}") as bar:
            return measure_archs(todo, job, target, writer, on_result=lambda result: bar.update(1))
