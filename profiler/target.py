"""Where measurements run: the in-process target, wrapped unchanged by the device agent.

A target times one round (warm-up plus a block of timed runs of the encoder, then of
the decoder) of an exported artifact. `LocalTarget` does it in this process, pinned to
explicit CPUs with an explicit thread count; the device agent serves a `LocalTarget`
over HTTP and `device_agents.client.RemoteTarget` speaks to it with the same methods,
so local and remote measurements take the same code path. `hatprof measure` runs its
`LocalTarget` in a worker process renewed every few dozen rounds
(`profiler.worker.WorkerTarget`), as the agent does.

Torch-free: ONNX artifacts run with onnxruntime alone; TorchScript and eager runners
are imported only when asked for.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol as TypingProtocol

from profiler.errors import ProtocolError
from profiler.gate import ThermalGate
from profiler.metadata import collect_environment, current_affinity, default_cpus, pin_process, snapshot
from profiler.protocol import RoundResult, RoundSpec, canary_median_ns, time_round
from profiler.workload import Runner, open_runner


@dataclass(frozen=True)
class RoundPair:
    """One round of timed runs of both halves of the workload, with the machine state around it
    and the thermal gate's record of the wait before it."""

    encoder: RoundResult
    decoder: RoundResult
    before: Mapping[str, Any] = field(default_factory=dict)
    after: Mapping[str, Any] = field(default_factory=dict)
    gate: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for part in ("encoder", "decoder"):
            result = getattr(self, part)
            data.update({f"{part}_ns": list(result.samples_ns), f"{part}_other_cpu": result.other_cpu_fraction,
                         f"{part}_canary_ns": list(result.canary_ns)})
        return {**data, "before": dict(self.before), "after": dict(self.after), "gate": dict(self.gate)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RoundPair":
        parts = {part: RoundResult(tuple(int(s) for s in data[f"{part}_ns"]), data.get(f"{part}_other_cpu"),
                                   tuple(int(s) for s in data.get(f"{part}_canary_ns") or ()))
                 for part in ("encoder", "decoder")}
        return cls(**parts, before=dict(data.get("before") or {}), after=dict(data.get("after") or {}),
                   gate=dict(data.get("gate") or {}))


class MeasureTarget(TypingProtocol):
    """What `profiler.measure` needs from a place that measures."""

    name: str
    threads: int

    def info(self) -> dict[str, Any]: ...

    def measure_round(self, artifact_dir: Path, fmt: str, spec: RoundSpec,
                      reference_dir: Path | None = None) -> RoundPair: ...

    def close(self) -> None: ...


class LocalTarget:
    """Measures in this process, pinned to `cpus` (default: `threads` CPUs chosen by
    `default_cpus`) until `close()`. Runners stay open across rounds, so interleaved rounds
    of a few architectures do not pay session start-up again."""

    name = "local"

    def __init__(self, threads: int = 1, cpus: Iterable[int] | None = None, max_open: int = 8,
                 clock: Callable[[], int] = time.perf_counter_ns, sysfs_root: str | Path = "/"):
        self.threads = threads
        self._sysfs_root = sysfs_root
        self._previous_cpus = current_affinity()
        self.cpus = pin_process(set(cpus) if cpus else default_cpus(threads))
        self.max_open = max_open
        self._clock = clock
        self._runners: OrderedDict[tuple, Runner] = OrderedDict()

    def info(self) -> dict[str, Any]:
        return collect_environment(self.threads, self.cpus, {})

    def measure_round(self, artifact_dir: Path, fmt: str, spec: RoundSpec,
                      reference_dir: Path | None = None) -> RoundPair:
        """One round of `spec`: the thermal gate's wait, then warm-up and timed runs of the
        encoder, then of the decoder (`spec.threads` must be this target's). With a
        `reference_dir` (duet mode), the same part of that artifact is timed in the canary's
        place, before and after every run."""
        if spec.threads != self.threads:
            raise ProtocolError(f"this target times with {self.threads} thread(s), the round asks for {spec.threads}")
        runner = self._runner(Path(artifact_dir), fmt, spec.seq_len, spec.beam)
        reference = None if reference_dir is None else self._runner(Path(reference_dir), fmt, spec.seq_len, spec.beam)
        every = spec.canary_every if reference is None else 1
        gate = ThermalGate(self.cpus, spec.max_temp_c, spec.cooldown_s, root=self._sysfs_root,
                           slow_ns=spec.slow_canary_ns, canary_ns=lambda: canary_median_ns(self._clock)).wait()
        before = snapshot(self.cpus)
        encoder = time_round(runner.run_encoder, spec.warmup, spec.runs, self._clock, canary_every=every,
                             reference=None if reference is None else reference.run_encoder)
        decoder = time_round(runner.run_decoder, spec.warmup, spec.runs, self._clock, canary_every=every,
                             reference=None if reference is None else reference.run_decoder)
        return RoundPair(encoder, decoder, before, snapshot(self.cpus), gate)

    def _runner(self, artifact_dir: Path, fmt: str, seq_len: int, beam: int) -> Runner:
        key = (str(artifact_dir.resolve()), fmt, seq_len, beam)
        runner = self._runners.pop(key, None)
        if runner is None:
            runner = open_runner(fmt, artifact_dir, seq_len=seq_len, beam=beam, threads=self.threads)
        self._runners[key] = runner
        while len(self._runners) > self.max_open:
            self._runners.popitem(last=False)[1].close()
        return runner

    def close(self) -> None:
        """Close the runners and give the process back the CPUs it had before."""
        while self._runners:
            self._runners.popitem()[1].close()
        pin_process(self._previous_cpus)

