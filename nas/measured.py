"""Measuring searched SubTransformers for real, with the weights they inherit from the supernet.

Shared by `hatprof search --measure-device` and the end-to-end benchmark: the archs are
extracted from the supernet, exported and timed with the profiler's full protocol on an
opened target (the caller opens it: 'local' or a device of the inventory), and their rows
go to a dataset CSV (a rerun resumes it). Latencies come back as the statistic the
predictor learnt, so that predicted and measured latencies compare like with like.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from nas.supernet import SuperTransformer, extract_subtransformer
from profiler.protocol import TimingProtocol
from profiler.space import ArchConfig
from profiler.target import MeasureTarget

#: Called after each measured architecture with (done, total) of this call's work.
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class MeasuredLatency:
    """A measured latency (ms) and whether it is the model's: `trusted` is False when the
    measurement did not converge (the machine kept disturbing it), so the number says more about
    the machine than about the model; `interval` is its relative 95% half-width."""

    latency_ms: float
    trusted: bool
    interval: float | None


def measure_inherited(net: SuperTransformer, archs: Sequence[ArchConfig], target: MeasureTarget,
                      protocol: TimingProtocol, csv_path: Path, device: str, statistic: str = "trimmed-mean",
                      on_progress: Progress | None = None) -> dict[str, MeasuredLatency]:
    """Measured latency (ms, as `statistic`) of each arch on `target` (named `device` in the
    rows), by arch id, with whether it can be trusted; rows already in `csv_path` from an
    earlier run are reused, not measured again. The caller opens and closes `target`."""
    from profiler.dataset import read_dataset
    from profiler.measure import MeasureJob, measure_archs, open_dataset

    unique = {arch.arch_id: arch for arch in archs}
    models = {arch_id: extract_subtransformer(net, arch) for arch_id, arch in unique.items()}
    job = MeasureJob(space=net.space, protocol=protocol, models=models)
    with open_dataset(csv_path, job, device, getattr(target, "targets", [target]), csv_path.exists()) as writer:
        todo = [arch for arch in unique.values() if arch.arch_id not in writer.done_ids]
        done = 0

        def step(result) -> None:
            nonlocal done
            done += 1
            if on_progress is not None:
                on_progress(done, len(todo))

        measure_archs(todo, job, target, writer, on_result=step)
    rows = read_dataset(csv_path, statistic)
    return {row.arch_id: MeasuredLatency(float(row.latency_ms), not _flag(row.unstable),
                                         None if row.interval != row.interval else float(row.interval))
            for row in rows.itertuples()}


def _flag(value: object) -> bool:
    return str(value).lower() == "true"
