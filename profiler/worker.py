"""The measuring process: timing of exported artifacts in a child process, time-limited.

Everything that touches model files runs in one child process started with `spawn`
and talked to over a pipe in JSON (nothing pickled). The parent kills it when a call
exceeds the time limit, and starts a new one on the next call, so a model that hangs or
crashes the runtime costs one error result, not the caller. Holding the process between
calls keeps onnxruntime loaded and lets the timing target stay pinned to its CPUs; after
`RECYCLE_ROUNDS` timed rounds it is replaced by a fresh one, because a long-lived
measuring process slows down. After any failed call it is replaced too, so whatever a
bad model made it allocate (onnxruntime keeps freed memory in its arena) goes with it;
`max_memory_bytes` in its config caps the memory it may take at all.

The worker knows the operations `info` and `measure`; a user of it adds its own (the
device agent adds artifact validation) as `ops`: module-level functions of one request.
`WorkerTarget` gives `hatprof measure` this worker for local measurements; the device
agent builds its sandbox on `WorkerHandle`.
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import multiprocessing.connection
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from profiler.errors import ErrorCode, HatprofError

if TYPE_CHECKING:
    from profiler.protocol import RoundSpec
    from profiler.target import RoundPair

logger = logging.getLogger(__name__)

_KILL_GRACE_S = 5.0
#: Timed rounds one worker process serves before a fresh one takes over (25 architectures
#: of 3 rounds). On the development VM a single process measuring 500 architectures got
#: slower as it went (its minima 14-23% above a fresh process's by the last 100 rows); a
#: fresh process per 25 architectures showed no such trend (benchmarks/bench_drift.py).
RECYCLE_ROUNDS = 75

#: An extra operation of the worker: the request in, a JSON-able value out.
Operation = Callable[[dict[str, Any]], Any]


class WorkerError(HatprofError):
    """A worker call that failed, with its error code (`MEASURE_FAILED`, `TIMEOUT`,
    `WORKER_CRASHED`, or the code an added operation raised)."""

    def __init__(self, code: ErrorCode | str, message: str) -> None:
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message


class _Worker:
    """The child's state: one timing target, for the thread count last asked for."""

    def __init__(self, config: dict[str, Any], ops: Mapping[str, Operation]) -> None:
        from profiler.metadata import current_affinity

        self.ops = ops
        self.cpus: list[int] | None = config.get("cpus")
        self.affinity = current_affinity()
        self.threads = 0
        self.current: Any = None

    def target(self, threads: int) -> Any:
        """A `LocalTarget` with `threads` threads, pinned to the agent's CPUs (highest first)."""
        from profiler.errors import ProtocolError
        from profiler.metadata import pin_process
        from profiler.target import LocalTarget

        if self.current is not None and self.threads == threads:
            return self.current
        self.close()
        pin_process(self.affinity)  # a target for another thread count chooses its CPUs afresh
        cpus = None
        if self.cpus:
            if threads > len(self.cpus):
                raise ProtocolError(f"threads={threads} but this agent measures on {len(self.cpus)} CPU(s)")
            cpus = sorted(self.cpus)[-threads:]
        self.current, self.threads = LocalTarget(threads=threads, cpus=cpus), threads
        return self.current

    def handle(self, request: dict[str, Any]) -> Any:
        op = request["op"]
        if op in self.ops:
            return self.ops[op](request)
        if op == "info":
            return self.target(request["threads"]).info()
        if op == "measure":
            return self.measure(request)
        raise ValueError(f"unknown worker operation {op!r}")

    def measure(self, request: dict[str, Any]) -> dict[str, Any]:
        from profiler.protocol import Measurement, RoundSpec

        spec = RoundSpec.from_dict(request["spec"])
        # duet mode: a folder the parent resolved (the local cache, or the agent's own store), never a client's path
        reference = request.get("reference_dir")
        pair = self.target(spec.threads).measure_round(Path(request["dir"]), request["format"], spec,
                                                       Path(reference) if reference else None)
        return {"result": pair.to_dict(),
                "statistics": {part: Measurement.from_rounds([getattr(pair, part)], spec.trim).summary()
                               for part in ("encoder", "decoder")}}

    def close(self) -> None:
        if self.current is not None:
            self.current.close()
            self.current = None


def _reply(request: dict[str, Any], worker: _Worker) -> dict[str, Any]:
    try:
        return {"ok": True, "value": worker.handle(request)}
    except WorkerError as exc:
        return {"ok": False, "code": exc.code, "message": exc.message}
    except HatprofError as exc:
        return {"ok": False, "code": ErrorCode.MEASURE_FAILED, "message": str(exc)}
    except Exception as exc:  # a parser or runtime failing on untrusted input must not end the worker
        logger.exception("worker operation %s failed", request.get("op"))
        return {"ok": False, "code": ErrorCode.MEASURE_FAILED, "message": f"{type(exc).__name__}: {exc}"}


def _limit_memory(max_bytes: int) -> None:
    """Cap this process's memory: allocations beyond `max_bytes` fail instead of growing it.

    On Linux the data limit (which counts heap and private mappings, as onnxruntime's
    arena and numpy allocate them, but not code or reserved stacks); elsewhere the
    address-space limit. A failed allocation is an error of one call, not the OOM killer.
    """
    try:
        import resource
    except ImportError:  # Windows
        logger.warning("no memory cap: this platform has no setrlimit")
        return
    limit = resource.RLIMIT_DATA if sys.platform.startswith("linux") else resource.RLIMIT_AS
    hard = resource.getrlimit(limit)[1]
    if hard != resource.RLIM_INFINITY:
        max_bytes = min(max_bytes, hard)
    resource.setrlimit(limit, (max_bytes, max_bytes))


def worker_main(conn: multiprocessing.connection.Connection, config: dict[str, Any],
                ops: Mapping[str, Operation] | None = None) -> None:
    """The child's loop: one JSON request in, one JSON reply out, until the pipe closes.

    Ctrl-C reaches the whole process group: the child ignores it and lets the parent decide
    (it closes the pipe or stops the child), so an interrupted `measure` prints no worker traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=config.get("log_level", logging.WARNING),
                        format="%(levelname)s worker %(name)s: %(message)s")
    if config.get("max_memory_bytes"):
        _limit_memory(config["max_memory_bytes"])
    worker = _Worker(config, ops or {})
    try:
        while True:
            try:
                request = json.loads(conn.recv_bytes())
                conn.send_bytes(json.dumps(_reply(request, worker)).encode())
            except (EOFError, BrokenPipeError):  # the parent closed the pipe or died
                break
    finally:
        worker.close()


class WorkerHandle:
    """The parent's end: starts the child on demand, enforces the time limit, reports crashes.

    `ops` are extra operations of the child (module-level functions, so `spawn` can pass
    them); `redact` is a path replaced by `<cache>` in error messages. Not thread-safe:
    the agent calls it with its device lock held.
    """

    def __init__(self, config: dict[str, Any], ops: Mapping[str, Operation] | None = None, redact: str = "",
                 recycle_rounds: int = RECYCLE_ROUNDS) -> None:
        self.config = config
        self.ops = dict(ops or {})
        self.recycle_rounds = recycle_rounds
        self._redact = redact
        self._ctx = multiprocessing.get_context("spawn")
        self._process: Any = None
        self._conn: multiprocessing.connection.Connection | None = None
        self._rounds = 0

    def _start(self) -> None:
        parent, child = self._ctx.Pipe()
        self._process = self._ctx.Process(target=worker_main, args=(child, self.config, self.ops),
                                          name="hatprof-worker", daemon=True)
        self._process.start()
        child.close()
        self._conn = parent
        self._rounds = 0
        logger.info("started worker process %d", self._process.pid)

    @property
    def pid(self) -> int | None:
        """The worker process's id, None while none runs."""
        return self._process.pid if self._process is not None else None

    def call(self, request: dict[str, Any], time_limit_s: float | None) -> Any:
        """Send one request (`time_limit_s` None: no limit); its value, or `WorkerError` with
        the worker's error code."""
        if request["op"] == "measure" and self._rounds >= self.recycle_rounds:
            self.stop()
        if self._process is None or not self._process.is_alive():
            self.stop()
            self._start()
        if request["op"] == "measure":
            self._rounds += 1
        assert self._conn is not None
        try:
            self._conn.send_bytes(json.dumps(request).encode())
            if not self._conn.poll(time_limit_s):
                self.stop(graceful=False)
                raise WorkerError(ErrorCode.TIMEOUT, f"the {request['op']} call exceeded the agent's time limit of "
                                f"{time_limit_s:g} s and was stopped")
            reply = json.loads(self._conn.recv_bytes())
        except (EOFError, OSError):
            process = self._process
            self.stop(graceful=False)
            code = process.exitcode if process is not None else None
            raise WorkerError(ErrorCode.WORKER_CRASHED, f"the measuring process died (exit code {code}) during "
                            f"{request['op']}; it is restarted on the next request") from None
        if reply["ok"]:
            return reply["value"]
        self.stop()  # a fresh process for the next call: a failure may leave memory or state behind
        message = reply["message"].replace(self._redact, "<cache>") if self._redact else reply["message"]
        raise WorkerError(reply["code"], message)

    def stop(self, graceful: bool = True) -> None:
        """End the child: close its pipe (it exits when idle), else terminate, else kill."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        process, self._process = self._process, None
        if process is None:
            return
        if graceful:
            process.join(_KILL_GRACE_S)
        if process.is_alive():
            process.terminate()
            process.join(_KILL_GRACE_S)
        if process.is_alive():
            process.kill()
            process.join()


class WorkerTarget:
    """Measures on this machine like `profiler.target.LocalTarget`, but in a worker process
    (pinned to `cpus`, or to `threads` CPUs chosen as LocalTarget does) that is replaced
    by a fresh one every `recycle_rounds` rounds; this process is never pinned."""

    name = "local"

    def __init__(self, threads: int = 1, cpus: set[int] | None = None, recycle_rounds: int = RECYCLE_ROUNDS):
        self.threads = threads
        self.worker = WorkerHandle({"cpus": sorted(cpus) if cpus else None,
                                    "log_level": logging.getLogger().getEffectiveLevel()},
                                   recycle_rounds=recycle_rounds)

    def _call(self, request: dict[str, Any]) -> Any:
        try:
            return self.worker.call(request, None)
        except WorkerError as exc:
            raise WorkerError(exc.code, f"local measuring process: {exc}") from None

    def info(self) -> dict[str, Any]:
        return self._call({"op": "info", "threads": self.threads})

    def measure_round(self, artifact_dir: Path, fmt: str, spec: RoundSpec,
                      reference_dir: Path | None = None) -> RoundPair:
        """One round of `spec` in the worker (with the duet's reference, when given)."""
        from profiler.target import RoundPair

        reply = self._call({"op": "measure", "dir": str(Path(artifact_dir).resolve()), "format": fmt,
                            "spec": spec.to_dict(),
                            "reference_dir": str(Path(reference_dir).resolve()) if reference_dir else None})
        return RoundPair.from_dict(reply["result"])

    def close(self) -> None:
        self.worker.stop()
