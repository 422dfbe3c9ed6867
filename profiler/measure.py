"""Measure architectures on a target and write their dataset rows.

Rounds are interleaved over small groups of architectures: every unfinished architecture
of a group gets one round per pass, in a fresh seeded random order after the first pass,
so slow drift of the machine (other load, frequency, temperature) hits the group alike
instead of biasing whichever architecture happened to run during it. Passes go on until
every architecture's label has converged or spent its budget (`profiler.convergence`
judges the rounds; HAT's fixed protocol stops after its rounds). A row is written as soon
as its group finishes, so a kill loses at most one group (`interleave` rows, default 4).

A failure of one architecture (an export or runner error, an agent that gave up)
becomes a result with an error code, never an aborted batch.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from profiler.artifacts import get_artifact
from profiler.canary_history import CanaryHistory
from profiler.convergence import CANARY_LIMIT, PARTS, ArchRounds, CanaryReference, round_level
from profiler.dataset import NO_REFERENCE, DatasetWriter, RowQuality, make_settings, row_from_measurement
from profiler.duet import LEVEL_LIMIT, ReferenceScale, brackets_ns, reference_kind
from profiler.errors import DatasetError, ErrorCode, HatprofError
from profiler.protocol import RoundSpec, TimingProtocol
from profiler.space import ArchConfig, DesignSpace
from profiler.target import MeasureTarget

if TYPE_CHECKING:
    from profiler.model import SubTransformer

logger = logging.getLogger(__name__)

#: Seconds an architecture's rounds may wait, in all, for a slow host to be fast again.
SLOW_WAIT_BUDGET_S = 60.0


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

    @property
    def reference(self) -> ArchConfig | None:
        """The duet's reference model (the space's smallest, seeded weights), None outside duet mode."""
        return self.space.smallest() if self.protocol.duet else None


@dataclass(frozen=True)
class Duet:
    """What a duet measurement shares across architectures: the reference's artifact and scale."""

    reference: ArchConfig
    artifact: Path
    scale: ReferenceScale

    @classmethod
    def open(cls, job: MeasureJob, environment: dict[str, Any]) -> "Duet | None":
        reference, p = job.reference, job.protocol
        if reference is None:
            return None
        kind = reference_kind(reference.arch_id, job.space.digest, job.fmt, p.threads, p.seq_len, p.beam)
        return cls(reference, get_artifact(reference, job.space, job.fmt, cache_dir=job.cache_dir),
                   ReferenceScale.for_machine(PARTS, environment, kind, p.trim, job.cache_dir))


def _artifact(job: MeasureJob, arch: ArchConfig) -> Path:
    model = (job.models or {}).get(arch.arch_id)
    return get_artifact(arch, job.space, job.fmt, cache_dir=job.cache_dir, model=model)


def _error_code(exc: HatprofError) -> ErrorCode:
    """The failure's own code where it has one (an agent's refusal: format_not_allowed, busy,
    timeout...), so the caller can say whether a rerun can help; else measure_failed."""
    try:
        return ErrorCode(getattr(exc, "code", ErrorCode.MEASURE_FAILED))
    except ValueError:
        return ErrorCode.MEASURE_FAILED


def _measure_group(job: MeasureJob, target: MeasureTarget, archs: Sequence[ArchConfig],
                   artifacts: Sequence[Path], reference: CanaryReference, history: CanaryHistory,
                   duet: Duet | None, on_round: Callable[[ArchConfig, ArchRounds], None] | None
                   ) -> tuple[list[ArchRounds], dict[str, HatprofError]]:
    """The rounds of a group, interleaved: one round of every unfinished architecture per pass,
    in a fresh seeded random order after the first pass (randomized multiple interleaved
    trials, after Abedi and Brecht), until each architecture is done (see `ArchRounds`).

    Returns each architecture's rounds and the errors of those that failed (then skipped).
    """
    states = [ArchRounds(job.protocol, reference, duet=None if duet is None else duet.scale) for _ in archs]
    failed: dict[str, HatprofError] = {}
    p = job.protocol
    planned = p.runs_per_round()
    order = random.Random(",".join(a.arch_id for a in archs))
    items = list(zip(archs, artifacts, states))
    for pass_no in itertools.count():
        pending = [item for item in items if item[0].arch_id not in failed and not item[2].done]
        if not pending:
            break
        if pass_no:
            order.shuffle(pending)
        spec = p.round_spec(planned[pass_no] if pass_no < len(planned) else p.round_runs)
        for arch, artifact, state in pending:
            start = time.monotonic()
            try:
                pair = target.measure_round(artifact, job.fmt, _gated(spec, history, state) if p.converging else spec,
                                            None if duet is None else duet.artifact)
            except HatprofError as exc:
                logger.warning("architecture %s: measurement failed: %s", arch.arch_id, exc)
                failed[arch.arch_id] = exc
                continue
            gate = pair.gate or {}
            history.record(gate.get("seen", {}).get("canary_ns"))
            # device time is the round's timing; the gate's wait for a fit board is gate_wait_s
            reason = state.add(pair, max(0.0, time.monotonic() - start - float(gate.get("waited_s", 0.0))))
            if reason:
                logger.info("architecture %s: round %d discarded (%s)", arch.arch_id, len(state.pairs), reason)
            if on_round is not None:
                on_round(arch, state)
    return states, failed


def _gated(spec: RoundSpec, history: CanaryHistory, state: ArchRounds) -> RoundSpec:
    """`spec`, asking the device to wait (within its cooldown) while its canary probe is
    `CANARY_LIMIT` above the machine's fast level (once that is known), until the
    architecture's gate waits (any reason) add up to `SLOW_WAIT_BUDGET_S`: then its rounds are timed at once
    and judged by their canaries, so a host slow for long costs a flagged row, not hours. In duet
    mode too: a round timed slow is discarded (`reference`), not restated."""
    fast = history.fast_ns
    waited = sum(float((pair.gate or {}).get("waited_s", 0.0)) for pair in state.pairs)
    if not fast or waited >= SLOW_WAIT_BUDGET_S:
        return spec
    return dataclasses.replace(spec, slow_canary_ns=fast * (1 + CANARY_LIMIT))


def _to_row(job: MeasureJob, arch: ArchConfig, state: ArchRounds, settings: dict[str, str],
            environment: dict[str, Any], duet: Duet | None) -> tuple[dict[str, Any], dict[str, Any]]:
    encoder, decoder = state.measurements()
    judged = state.judged()
    accepted = sum(r.verdict is None for r in judged)
    scales = judged[0].scales_ns
    env = {**environment,
           "rounds": [{"before": r.pair.before, "after": r.pair.after, "gate": r.pair.gate, "verdict": r.verdict,
                       "canary_ns": {part: list(getattr(r.pair, part).canary_ns) for part in PARTS},
                       "dropped_ms": {part: [s / 1e6 for s in samples] for part, samples in r.dropped.items()}}
                      for r in judged],
           "warnings": {"encoder": encoder.warnings(), "decoder": decoder.warnings()}}
    if duet is not None and scales is not None:
        env["duet"] = _duet_record(duet, state, scales)
    quality = RowQuality(
        converged=state.converged if job.protocol.converging else None,
        rounds_used=accepted,
        rounds_discarded=dict(state.discarded()),
        device_s=state.seconds,
        gate_wait_s=sum(float(r.gate.get("waited_s", 0.0)) for r in state.pairs),
        # a discarded round's samples, unless the label had to be made of every round
        discarded_rounds=[{"reason": r.verdict, **{f"{part}_ms": [s / 1e6 for s in getattr(r.pair, part).samples_ns]
                                                   for part in PARTS}}
                          for r in judged if r.verdict is not None and accepted],
        reference_ms=None if scales is None else sum(scales.values()) / 1e6,
    )
    return row_from_measurement(arch, job.space, settings, encoder, decoder, env, quality)


def _duet_record(duet: Duet, state: ArchRounds, scales_ns: dict[str, float]) -> dict[str, Any]:
    """How a duet label was restated: the reference, its scale, and each label run's time as
    timed and its bracket, in the order of the label's samples (each sample is timed x scale /
    bracket, so its ratio can be recovered)."""
    timed: dict[str, list[float]] = {part: [] for part in PARTS}
    brackets: dict[str, list[float]] = {part: [] for part in PARTS}
    for judged, masks in state.label_rounds():
        for part in PARTS:
            result = getattr(judged.pair, part)
            kept = [i for i, keep in enumerate(masks[part]) if keep]
            timed[part] += [result.samples_ns[i] / 1e6 for i in kept]
            brackets[part] += [float(b) / 1e6 for b in brackets_ns(result)[kept]]
    return {"reference": duet.reference.arch_id,
            "scale_ms": {part: scale / 1e6 for part, scale in scales_ns.items()},
            "calibration_rounds": duet.scale.calibration_rounds,
            "timed_ms": timed, "bracket_ms": brackets}


def _calibrated_slow(state: ArchRounds) -> bool:
    """Whether most of a duet row's rounds ran the reference more than `LEVEL_LIMIT` faster than
    the machine's scale: a scale calibrated while the host was slow, which discards the fast
    host's rounds until it is calibrated again."""
    judged = state.judged()
    scales = judged[0].scales_ns if judged else None
    if scales is None:
        return False
    faster = [round_level(r.pair, scales) < 1 - LEVEL_LIMIT for r in judged]
    return sum(faster) > len(faster) / 2


def measure_archs(archs: Iterable[ArchConfig], job: MeasureJob, target: MeasureTarget,
                  writer: DatasetWriter,
                  on_result: Callable[[ArchResult], None] | None = None,
                  on_round: Callable[[ArchConfig, ArchRounds], None] | None = None) -> list[ArchResult]:
    """Measure every architecture not yet in `writer`, writing each row as its group finishes.

    `on_round` hears of every timed round (for progress), `on_result` of every finished row.
    """
    todo = [a for a in archs if a.arch_id not in writer.done_ids]
    environment = target.info()
    history = CanaryHistory.for_machine(environment, job.cache_dir)
    reference = CanaryReference(history=history)
    duet = Duet.open(job, environment)
    warned_slow_scale = False
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
            measured, failed = _measure_group(job, target, group, artifacts, reference, history, duet, on_round)
            retry, retry_artifacts = [], []
            for arch, artifact, state in zip(group, artifacts, measured):
                attempts[arch.arch_id] += 1
                if arch.arch_id in failed:
                    error = failed[arch.arch_id]
                    report(ArchResult(arch, error=_error_code(error), message=str(error),
                                      attempts=attempts[arch.arch_id]))
                    continue
                row, raw = _to_row(job, arch, state, writer.settings, environment, duet)
                if duet is not None and not warned_slow_scale and _calibrated_slow(state):
                    warned_slow_scale = True
                    logger.warning("the duet reference ran more than %.0f%% faster than this machine's scale in "
                                   "most rounds of %s, which were discarded: the scale was calibrated while the "
                                   "host was slow; delete %s to calibrate it again", 100 * LEVEL_LIMIT, arch.arch_id,
                                   " and ".join(str(h.path) for h in duet.scale.histories.values()))
                if row["unstable"] and attempts[arch.arch_id] <= job.retry_unstable:
                    logger.info("architecture %s unstable, measuring again", arch.arch_id)
                    retry.append(arch)
                    retry_artifacts.append(artifact)
                    continue
                writer.write(row, raw)
                report(ArchResult(arch, row=row, attempts=attempts[arch.arch_id]))
            group, artifacts = retry, retry_artifacts
        history.save()
        if duet is not None:
            duet.scale.save()
    return results


#: How a row's label was reached, in a word (`row_kind`).
ROW_KINDS = ("clean", "re-measured", "unstable")


def row_kind(row: dict[str, Any]) -> str:
    """How a row's label was reached: clean, re-measured (rounds discarded), unstable (did not converge)."""
    if row["unstable"]:
        return "unstable"
    return "re-measured" if row["rounds_discarded"] else "clean"


RUNTIMES = {"onnx": "onnxruntime", "torchscript": "torchscript", "eager": "pytorch"}
#: The library whose version is a runtime's version.
_RUNTIME_LIBRARY = {"onnx": "onnxruntime", "torchscript": "torch", "eager": "torch"}


def _agreed(device: str, what: str, values: Sequence[str]) -> str:
    if len(set(values)) > 1:
        raise DatasetError(f"the agents of device {device!r} report different {what}s ({', '.join(sorted(set(values)))}); "
                           "give machines that differ their own device names")
    return values[0]


def dataset_settings(job: MeasureJob, device: str, targets: Sequence[MeasureTarget]) -> dict[str, str]:
    """The settings of `device`'s file: the job's space and protocol, and from the targets' own
    environment records the host (or the device name when several agents, several machines of
    one kind any of which may answer on a rerun, share it), the CPU model and runtime version."""
    infos, unreachable = [], None
    for target in targets:  # a device's file opens while any of its agents answers
        try:
            infos.append(target.info())
        except HatprofError as exc:
            unreachable = exc
    if not infos:
        raise unreachable or DatasetError(f"device {device!r} has no targets")
    library = _RUNTIME_LIBRARY[job.fmt]
    return make_settings(
        job.space, job.protocol, device=device,
        host=device if len(targets) > 1 else str(infos[0].get("hostname") or device),
        cpu_model=_agreed(device, "CPU model", [str(i.get("cpu_model") or "unknown") for i in infos]),
        runtime=RUNTIMES[job.fmt],
        runtime_version=_agreed(device, f"{library} version",
                                [str((i.get("libraries") or {}).get(library) or "unknown") for i in infos]),
        fmt=job.fmt, reference=NO_REFERENCE if job.reference is None else job.reference.arch_id)


def open_dataset(path: Path, job: MeasureJob, device: str, targets: Sequence[MeasureTarget],
                 resume: bool) -> DatasetWriter:
    """The dataset file for measurements of `job` on `device` (measured by `targets`)."""
    return DatasetWriter(path, dataset_settings(job, device, targets), resume=resume)
