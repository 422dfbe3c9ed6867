"""Measure architectures on a target and write their dataset rows.

Rounds are interleaved over small groups of architectures: every architecture of a
group is timed in round 1, then all again in round 2, and so on, so slow drift of the
machine (other load, frequency, temperature) hits the group alike instead of biasing
whichever architecture happened to run during it. A row is written as soon as its
group finishes, so a kill loses at most one group (`interleave` rows, default 4).

A failure of one architecture (an export or runner error, an agent that gave up)
becomes a result with an error code, never an aborted batch.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from profiler.artifacts import get_artifact
from profiler.dataset import DatasetWriter, make_settings, row_from_measurement
from profiler.errors import ErrorCode, HatprofError
from profiler.protocol import Measurement, TimingProtocol
from profiler.space import ArchConfig, DesignSpace
from profiler.target import MeasureTarget, RoundPair

if TYPE_CHECKING:
    from profiler.model import SubTransformer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArchResult:
    """The outcome of one architecture: its row, or an error code and message."""

    arch: ArchConfig
    row: dict[str, Any] | None = None
    error: ErrorCode | None = None
    message: str = ""
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class MeasureJob:
    """What to measure and how: the parts that stay fixed over one dataset file."""

    space: DesignSpace
    protocol: TimingProtocol
    fmt: str = "onnx"
    cache_dir: Path | None = None
    interleave: int = 4
    retry_unstable: int = 0
    #: Trained weights to measure instead of the seeded initialisation (e.g. inherited from a supernet).
    models: dict[str, SubTransformer] | None = None


def _artifact(job: MeasureJob, arch: ArchConfig) -> Path:
    model = (job.models or {}).get(arch.arch_id)
    return get_artifact(arch, job.space, job.fmt, cache_dir=job.cache_dir, model=model)


def _measure_group(job: MeasureJob, target: MeasureTarget, archs: Sequence[ArchConfig],
                   artifacts: Sequence[Path]) -> tuple[list[list[RoundPair]], dict[str, str]]:
    """All rounds of a group, interleaved: round r of every architecture before round r + 1.

    Returns each architecture's rounds and the errors of those that failed (then skipped).
    """
    rounds: list[list[RoundPair]] = [[] for _ in archs]
    failed: dict[str, str] = {}
    p = job.protocol
    for runs in p.runs_per_round():
        for i, (arch, artifact) in enumerate(zip(archs, artifacts)):
            if arch.arch_id in failed:
                continue
            try:
                rounds[i].append(target.measure_round(artifact, job.fmt, p.seq_len, p.beam, p.warmup, runs))
            except HatprofError as exc:
                logger.warning("architecture %s: measurement failed: %s", arch.arch_id, exc)
                failed[arch.arch_id] = str(exc)
    return rounds, failed


def _to_row(job: MeasureJob, arch: ArchConfig, rounds: list[RoundPair], settings: dict[str, str],
            environment: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    trim = job.protocol.trim
    encoder = Measurement.from_rounds([r.encoder for r in rounds], trim)
    decoder = Measurement.from_rounds([r.decoder for r in rounds], trim)
    env = {**environment, "rounds": [{"before": r.before, "after": r.after} for r in rounds],
           "warnings": {"encoder": encoder.warnings(), "decoder": decoder.warnings()}}
    return row_from_measurement(arch, job.space, settings, encoder, decoder, env)


def measure_archs(archs: Iterable[ArchConfig], job: MeasureJob, target: MeasureTarget,
                  writer: DatasetWriter,
                  on_result: Callable[[ArchResult], None] | None = None) -> list[ArchResult]:
    """Measure every architecture not yet in `writer`, writing each row as its group finishes."""
    todo = [a for a in archs if a.arch_id not in writer.done_ids]
    environment = target.info()
    results: list[ArchResult] = []

    def report(result: ArchResult) -> None:
        results.append(result)
        if on_result is not None:
            on_result(result)

    for start in range(0, len(todo), job.interleave):
        group, artifacts = [], []
        for arch in todo[start:start + job.interleave]:
            try:
                artifacts.append(_artifact(job, arch))
                group.append(arch)
            except HatprofError as exc:
                logger.warning("architecture %s: export failed: %s", arch.arch_id, exc)
                report(ArchResult(arch, error=ErrorCode.EXPORT_FAILED, message=str(exc)))
        attempts = {a.arch_id: 0 for a in group}
        while group:
            measured, failed = _measure_group(job, target, group, artifacts)
            retry, retry_artifacts = [], []
            for arch, artifact, rounds in zip(group, artifacts, measured):
                attempts[arch.arch_id] += 1
                if arch.arch_id in failed:
                    report(ArchResult(arch, error=ErrorCode.MEASURE_FAILED, message=failed[arch.arch_id],
                                      attempts=attempts[arch.arch_id]))
                    continue
                row, raw = _to_row(job, arch, rounds, writer.settings, environment)
                if row["unstable"] and attempts[arch.arch_id] <= job.retry_unstable:
                    logger.info("architecture %s unstable, measuring again", arch.arch_id)
                    retry.append(arch)
                    retry_artifacts.append(artifact)
                    continue
                writer.write(row, raw)
                report(ArchResult(arch, row=row, attempts=attempts[arch.arch_id]))
            group, artifacts = retry, retry_artifacts
    return results


RUNTIMES = {"onnx": "onnxruntime", "torchscript": "torchscript", "eager": "pytorch"}


def dataset_host(device: str, targets: Sequence[MeasureTarget]) -> str:
    """The `host` setting of a device's file: its agent's host name, or the device name when
    several agents (several machines of one kind, any of which may answer on a rerun) share it."""
    if len(targets) > 1:
        return device
    return str(targets[0].info().get("hostname") or device)


def open_dataset(path: Path, job: MeasureJob, device: str, targets: Sequence[MeasureTarget],
                 resume: bool) -> DatasetWriter:
    """The dataset file for measurements of `job` on `device` (measured by `targets`)."""
    settings = make_settings(job.space, job.protocol, device=device, host=dataset_host(device, targets),
                             runtime=RUNTIMES[job.fmt], fmt=job.fmt)
    return DatasetWriter(path, settings, resume=resume)
