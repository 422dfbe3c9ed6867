"""The hatprof device agent: an HTTP+JSON server that times artifacts on this device.

Run it with ``python -m device_agents.agent serve --token-file FILE`` (or ``hatprof agent
serve``); it needs only onnxruntime, numpy and psutil, and never imports torch, pandas
or scikit-learn. It binds 127.0.0.1 unless told otherwise; it speaks plain HTTP, so
reach it from elsewhere through an SSH tunnel or a private network.

Protocol, version 1
===================
Every endpoint but health needs ``Authorization: Bearer <token>``; without it, or with
a wrong one, the answer is 401 and nothing else is done. Request and response bodies
are JSON objects (``Content-Type: application/json``), except uploads.

``GET /v1/health``
    ``{"status": "ok", "protocol": 1, "busy": bool}``. No token.
``GET /v1/info[?threads=N]``
    ``{"protocol": 1, "environment": {...}, "agent": {...}}``: the environment record of a
    local measurement with N threads (host, CPU model, cores, frequency, governor, memory,
    library versions, affinity), and the agent's settings: formats accepted, limits, cache use.
``PUT /v1/artifacts/<sha256>/<filename>``
    Body: the raw bytes of one artifact file, with a ``Content-Length``. ``<filename>`` is one
    of ``manifest.json``, ``encoder.onnx``, ``cross_kv.onnx``, ``decoder_step.onnx`` (and the
    ``.pt`` names when TorchScript is allowed); it names a kind of content, never a path.
    The agent hashes the bytes and refuses a mismatch, validates them as that kind (ONNX:
    parses, passes ``onnx.checker`` when onnx is installed, no external data, loads in
    onnxruntime; manifest: a small object naming exactly the allowed graph files), then
    keeps them in a cache with a size cap (least recently used first out).
    201 ``{"stored": true, ...}``, or 200 ``{"stored": false, ...}`` if already held.
``POST /v1/measure``
    In: ``{"artifact": {"format": "onnx", "files": {"manifest.json": "<sha256>", ...}},
    "warmup": 5, "runs": 50, "seq_len": 30, "beam": 5, "threads": 1, "canary_every": 10,
    "max_temp_c": 80.0, "cooldown_s": 120.0, "slow_canary_ns": 0.0, "trim": 0.1}``: the fields of
    `profiler.protocol.RoundSpec`, whose defaults are the defaults here (all but ``artifact``
    optional; unknown fields are refused). Duet mode adds ``"reference"``, an artifact of the
    same format named the same way, whose part is then timed in the canary's place, before and
    after every run. One round of the timing protocol: the gate waits (at
    most ``cooldown_s``) while the board is at ``max_temp_c``, its firmware says it is throttled
    now, or the canary runs slower than ``slow_canary_ns`` (0: never); then ``warmup`` untimed
    runs and ``runs`` timed runs of the encoder, with a fixed reference kernel (the canary)
    timed before, after and every ``canary_every`` runs; then the same for the decoder.
    Out: ``{"result": {"encoder_ns": [...],
    "encoder_canary_ns": [...], "encoder_other_cpu": f, "decoder_ns": ..., "before": {...},
    "after": {...}, "gate": {...}}, "statistics": {"encoder": {...}, "decoder": {...}},
    "elapsed_s": f}``: raw samples in nanoseconds, the canary's times, the share of the timed
    CPUs other processes took, the machine state (load, memory, frequency, temperature)
    before and after, what the gate saw and how long it waited; the statistics (trimmed
    mean, std, median, p90, CV, ...) derive from the returned raw samples with ``trim``.
    Whether a round is clean is judged by the coordinator (`profiler.convergence`).
    If a named file is not held: 409 ``missing_artifact`` with ``"missing": [{"filename",
    "sha256"}]``; upload those and retry.

Errors are ``{"error": {"code": "<code>", "message": "<text>", ...}}`` with the codes and
statuses of `device_agents.wire.ERROR_STATUS`; clients branch on the code. A 503 ``busy``
carries ``Retry-After``. No response ever carries a traceback.

Limits: one measurement (or validation) at a time, because concurrent runs distort each
other's timings; up to ``--queue`` requests wait up to ``--queue-wait`` seconds for their
turn, the rest get 503 busy. Each measurement runs in a separate worker process that is
killed after ``--time-limit`` seconds (504 ``timeout``), may take at most
``--max-memory-mb`` of memory (an allocation beyond it fails the call), and is renewed
after every failed call and every 75 timed rounds. JSON bodies are at most 1 MiB,
uploads at most ``--max-upload-mb`` (413); at most ``--max-connections`` connections at once.
"""
from __future__ import annotations

import argparse
import contextlib
import hmac
import io
import ipaddress
import json
import logging
import os
import secrets
import signal
import socket
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import psutil

from device_agents.store import BlobStore
from device_agents.validate import MAX_MANIFEST_BYTES, loads_strict
from device_agents.wire import (
    DEFAULT_PORT, ERROR_STATUS, FILE_KINDS, MEASURE_LIMITS, PREFIX, PROTOCOL_VERSION, TOKEN_ENV,
    WireError, is_sha256, parse_measure, read_token,
)
from device_agents.sandbox import AgentWorker
from profiler.errors import HatprofError
from profiler.files import write_atomically

logger = logging.getLogger(__name__)

_MiB = 1 << 20
MAX_JSON_BYTES = _MiB
_RETRY_AFTER_S = 5
_DRAIN_BYTES = 4 * _MiB
#: Longest time spent draining an unread body, in all (not per read).
_DRAIN_TIMEOUT_S = 1.0
#: A body may take `request_timeout_s` plus its length at this rate to arrive.
_MIN_BODY_BYTES_PER_S = 64 * 1024
#: How long a new connection waits for the slot of a slow one closed to make room.
_EVICT_WAIT_S = 2.0
#: Smallest memory cap of the measuring process: its runtime and one small model fit.
_MIN_WORKER_MB = 256


@dataclass
class AgentConfig:
    """Everything an agent is started with."""

    token: str
    cache_dir: Path
    max_cache_bytes: int = 4096 * _MiB
    max_upload_bytes: int = 1024 * _MiB
    time_limit_s: float = 1800.0
    queue: int = 4
    queue_wait_s: float = 30.0
    threads: int = 1
    cpus: list[int] | None = None
    allow_torchscript: bool = False
    max_connections: int = 32
    socket_timeout_s: float = 60.0  # one read or write
    request_timeout_s: float = 30.0  # a whole request head; a body gets its length at 64 KiB/s more
    max_memory_mb: int | None = None  # the measuring process's memory cap (None: none)
    log_level: int = logging.WARNING
    formats: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.formats = ("onnx", "torchscript") if self.allow_torchscript else ("onnx",)


class Agent:
    """The agent's state, independent of HTTP: the cache, the worker and the device lock."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.store = BlobStore(config.cache_dir, config.max_cache_bytes)
        self.worker = AgentWorker({"cpus": config.cpus, "log_level": config.log_level,
                                   "max_memory_bytes": (config.max_memory_mb or 0) * _MiB},
                                  redact=str(Path(config.cache_dir).resolve()))
        self._device = threading.Lock()
        self._slots = threading.BoundedSemaphore(config.queue + 1)

    @property
    def busy(self) -> bool:
        return self._device.locked()

    def exclusive(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` alone on the device, after waiting in the bounded queue; else 503 busy."""
        if not self._slots.acquire(blocking=False):
            raise WireError("busy", "the agent's queue is full", retry_after_s=_RETRY_AFTER_S)
        try:
            if not self._device.acquire(timeout=self.config.queue_wait_s):
                raise WireError("busy", "another measurement holds the device",
                                retry_after_s=_RETRY_AFTER_S)
            try:
                return fn()
            finally:
                self._device.release()
        finally:
            self._slots.release()

    def info(self, threads: int) -> dict[str, Any]:
        environment = self.exclusive(lambda: self.worker.call({"op": "info", "threads": threads},
                                                              self.config.time_limit_s))
        limits = {"max_json_bytes": MAX_JSON_BYTES, "max_upload_bytes": self.upload_limit("onnx"),
                  "time_limit_s": self.config.time_limit_s, "queue": self.config.queue,
                  "queue_wait_s": self.config.queue_wait_s, "max_memory_mb": self.config.max_memory_mb,
                  "measure": {k: list(v) for k, v in MEASURE_LIMITS.items()}}
        return {"protocol": PROTOCOL_VERSION, "environment": environment,
                "agent": {"formats": list(self.config.formats), "limits": limits,
                          "cache": self.store.stats(), "threads": self.config.threads}}

    def upload_limit(self, kind: str) -> int:
        if kind == "json":
            return MAX_MANIFEST_BYTES
        return min(self.config.max_upload_bytes, self.config.max_cache_bytes)

    def check_kind(self, kind: str) -> None:
        if kind == "torchscript" and "torchscript" not in self.config.formats:
            raise WireError("format_not_allowed", "this agent accepts ONNX only; TorchScript archives can "
                            "carry code and need an agent started with --allow-torchscript")

    def upload(self, sha: str, filename: str, body: Any, length: int) -> tuple[int, dict[str, Any]]:
        kind = FILE_KINDS[filename]
        tmp = self.store.receive(sha, body, length)
        try:
            if self.store.has(sha, kind):
                return 200, {"stored": False, "sha256": sha, "filename": filename}
            self.exclusive(lambda: self.worker.call({"op": "validate", "path": str(tmp), "kind": kind},
                                                    self.config.time_limit_s))
            self.store.commit(tmp, sha, kind)
        finally:
            self.store.discard(tmp)
        return 201, {"stored": True, "sha256": sha, "filename": filename}

    def measure(self, request: dict[str, Any]) -> dict[str, Any]:
        self.check_kind(request["format"])
        threads = request["spec"]["threads"]
        if threads > (len(self.config.cpus) if self.config.cpus else os.cpu_count() or 1):
            raise WireError("invalid_field", f"threads={threads} exceeds this agent's CPUs", field="threads")
        reference = request["reference_files"]
        with self.store.artifact(request["files"]) as folder, \
                (self.store.artifact(reference) if reference else contextlib.nullcontext()) as reference_folder:
            job = {"op": "measure", "format": request["format"], "spec": request["spec"], "dir": str(folder),
                   "reference_dir": str(reference_folder) if reference_folder else None}
            start = time.perf_counter()
            reply = self.exclusive(lambda: self.worker.call(job, self.config.time_limit_s))
        reply["elapsed_s"] = time.perf_counter() - start
        return reply

    def close(self) -> None:
        self.worker.stop()
        self.store.close()


def _parse_query(query: str, allowed: set[str]) -> dict[str, str]:
    try:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query),
                                       max_num_fields=16)
    except ValueError:
        raise WireError("bad_request", "malformed query string") from None
    values = dict(pairs)
    unknown = sorted(set(values) - allowed)
    if unknown or len(values) != len(pairs):
        raise WireError("unknown_field", f"unknown or repeated query parameter(s): {', '.join(unknown)}")
    return values


class _DeadlineReader(io.RawIOBase):
    """A connection's input, read under its handler's deadline for the current request.

    A per-read timeout alone lets a client that sends a byte now and then hold a
    connection (and one of `--max-connections` slots) for as long as it likes.
    """

    def __init__(self, handler: "_Handler") -> None:
        super().__init__()
        self._handler = handler

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        handler = self._handler
        remaining = handler.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the request did not arrive before its deadline")
        handler.connection.settimeout(min(remaining, handler.timeout))
        try:
            return handler.connection.recv_into(buffer)
        finally:
            handler.connection.settimeout(handler.timeout)  # writes keep the per-operation timeout


class _Handler(BaseHTTPRequestHandler):
    """One connection: routes, authentication, bounded bodies, JSON errors."""

    protocol_version = "HTTP/1.1"
    server_version = f"hatprof-agent/{PROTOCOL_VERSION}"
    server: "AgentServer"

    def version_string(self) -> str:
        return self.server_version  # no Python version for the curious

    def setup(self) -> None:
        self.timeout = self.server.agent.config.socket_timeout_s
        self.deadline = time.monotonic() + self.server.agent.config.request_timeout_s
        super().setup()
        self.rfile.close()  # read through the deadline instead (the socket stays open)
        self.rfile = io.BufferedReader(_DeadlineReader(self))

    def handle_one_request(self) -> None:
        """Each request's head must arrive within `request_timeout_s` of waiting for it."""
        self.deadline = time.monotonic() + self.server.agent.config.request_timeout_s
        self.server.mark(self.connection, trusted=False)
        super().handle_one_request()

    def finish(self) -> None:
        super().finish()
        if getattr(self, "_drain_on_finish", False):
            self._drain()

    def _drain(self) -> None:
        """Read (a bounded part of) an unread body before closing, so the client sees our answer.

        Closing a socket with unread input sends a reset, which can destroy the response
        before the client has read it.
        """
        deadline = time.monotonic() + _DRAIN_TIMEOUT_S
        try:
            self.connection.shutdown(socket.SHUT_WR)
            left = _DRAIN_BYTES
            while left > 0 and (remaining := deadline - time.monotonic()) > 0:
                self.connection.settimeout(remaining)
                chunk = self.connection.recv(min(left, 65536))
                if not chunk:
                    break
                left -= len(chunk)
        except OSError:
            logger.debug("stopped draining an unread request body")

    # -- responses -----------------------------------------------------------------------------
    def _send_json(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send_wire_error(self, error: WireError) -> None:
        headers = {}
        if error.code == "busy":
            headers["Retry-After"] = str(error.details.get("retry_after_s", _RETRY_AFTER_S))
        if error.code == "unauthorized":
            headers["WWW-Authenticate"] = 'Bearer realm="hatprof-agent"'
        self._send_json(error.status, error.body(), headers)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (bad request line, unknown method, huge headers) as JSON too."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":
            self.request_version = "HTTP/1.1"  # answer with a status line and headers all the same
        codes = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 414: "bad_request",
                 431: "bad_request", 501: "method_not_allowed", 505: "bad_request"}
        error_code = codes.get(code, "bad_request")
        status = ERROR_STATUS[error_code] if code == 501 else code
        try:
            self._send_json(status, {"error": {"code": error_code, "message": message or "bad request"}})
        except OSError:
            logger.debug("client went away before its error response")

    def parse_request(self) -> bool:
        if not super().parse_request():
            if not self.requestline.split():  # the one refusal http.server leaves unanswered
                self.send_error(400, "empty request line")
            return False
        if self.request_version == "HTTP/0.9":
            self.send_error(400, "HTTP/0.9 requests are not accepted")
            return False
        return True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        logger.info("%s %s", self.address_string(), format % args)

    # -- request parts -------------------------------------------------------------------------
    def _authorize(self) -> None:
        header = self.headers.get("Authorization", "")
        scheme, _, provided = header.partition(" ")
        expected = self.server.agent.config.token.encode()
        given = provided.strip().encode("latin-1", "replace")
        # compare_digest even for a wrong scheme, so the time taken says nothing about the token
        ok = hmac.compare_digest(given, expected)
        if not ok or scheme.lower() != "bearer":
            raise WireError("unauthorized", "missing or wrong token")
        self.server.mark(self.connection, trusted=True)

    def _content_length(self, limit: int) -> int:
        if "Transfer-Encoding" in self.headers:
            raise WireError("length_required", "send a Content-Length; chunked bodies are not accepted")
        lengths = self.headers.get_all("Content-Length") or []
        if len(lengths) > 1:  # which one a proxy in front of us believed is anyone's guess
            raise WireError("bad_request", "send exactly one Content-Length header")
        raw = lengths[0] if lengths else None
        if raw is None:
            raise WireError("length_required", "a Content-Length header is required")
        if not raw.strip().isdigit():
            raise WireError("bad_request", "Content-Length must be a non-negative integer")
        length = int(raw)
        if length > limit:
            raise WireError("payload_too_large", f"body of {length} bytes exceeds the limit of {limit} bytes",
                            limit_bytes=limit)
        self.deadline = (time.monotonic() + self.server.agent.config.request_timeout_s
                         + length / _MIN_BODY_BYTES_PER_S)
        return length

    def _read_json(self) -> Any:
        length = self._content_length(MAX_JSON_BYTES)
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise WireError("unsupported_media_type", "send the body as application/json")
        data = self.rfile.read(length)
        self._body_read = True
        if len(data) != length:
            raise WireError("bad_json", "body ended before its Content-Length")
        try:
            return loads_strict(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise WireError("bad_json", f"body is not valid JSON: {exc}") from None

    # -- dispatch ------------------------------------------------------------------------------
    def _handle(self, method: str) -> None:
        self._body_read = False
        self._drain_on_finish = False
        try:
            status, body = self._route(method)
            self._send_json(status, body)
        except WireError as exc:
            if not self._body_read and self.headers.get("Content-Length", "0").strip() not in ("", "0"):
                self.close_connection = True  # the unread body would be taken for the next request
                self._drain_on_finish = True
            self._send_wire_error(exc)
        except (TimeoutError, socket.timeout):
            self.close_connection = True
            logger.info("request from %s timed out", self.address_string())
            try:
                self._send_wire_error(WireError("request_timeout", "the request body did not arrive in time"))
            except OSError:
                logger.debug("client went away before its error response")
        except ConnectionError:
            self.close_connection = True
            logger.info("connection from %s broke", self.address_string())
        except Exception:  # a bug must cost one response, never the server or a traceback to the client
            logger.exception("internal error handling %s %s", method, self.path)
            self.close_connection = True
            try:
                self._send_wire_error(WireError("internal", "internal error; see the agent's log"))
            except OSError:
                logger.debug("client went away before its error response")

    def _route(self, method: str) -> tuple[int, dict[str, Any]]:
        agent = self.server.agent
        url = urllib.parse.urlsplit(self.path)
        parts = url.path.split("/")
        if url.path == f"{PREFIX}/health":
            if method != "GET":
                raise WireError("method_not_allowed", "use GET")
            _parse_query(url.query, set())
            return 200, {"status": "ok", "protocol": PROTOCOL_VERSION, "busy": agent.busy}
        known = url.path in (f"{PREFIX}/info", f"{PREFIX}/measure") or (
            len(parts) == 5 and f"/{parts[1]}/{parts[2]}" == f"{PREFIX}/artifacts")
        if not known:
            raise WireError("not_found", f"no such endpoint; this agent speaks {PREFIX}/")
        self._authorize()
        if url.path == f"{PREFIX}/info":
            if method != "GET":
                raise WireError("method_not_allowed", "use GET")
            query = _parse_query(url.query, {"threads"})
            threads = query.get("threads", str(agent.config.threads))
            low, high = MEASURE_LIMITS["threads"]
            if not threads.isdigit() or not low <= int(threads) <= high:
                raise WireError("invalid_field", "threads must be a positive integer", field="threads")
            return 200, agent.info(int(threads))
        if url.path == f"{PREFIX}/measure":
            if method != "POST":
                raise WireError("method_not_allowed", "use POST")
            _parse_query(url.query, set())
            request = parse_measure(self._read_json())
            return 200, agent.measure(request)
        if method != "PUT":
            raise WireError("method_not_allowed", "use PUT")
        _parse_query(url.query, set())
        sha, filename = parts[3], parts[4]
        if not is_sha256(sha):
            raise WireError("bad_hash", "the digest must be 64 lower-case hex digits")
        if filename not in FILE_KINDS:
            raise WireError("bad_filename", f"not an artifact file name; allowed: {', '.join(sorted(FILE_KINDS))}")
        agent.check_kind(FILE_KINDS[filename])
        length = self._content_length(agent.upload_limit(FILE_KINDS[filename]))
        self._body_read = True  # receive() reads it all or the connection is closed
        try:
            return agent.upload(sha, filename, self.rfile, length)
        except WireError:
            raise
        except BaseException:
            self.close_connection = True
            raise

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._handle("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")

    def do_HEAD(self) -> None:  # noqa: N802
        self._handle("HEAD")

    def do_PATCH(self) -> None:  # noqa: N802
        self._handle("PATCH")


class AgentServer(ThreadingHTTPServer):
    """The HTTP server around an `Agent`, with a cap on simultaneous connections.

    At the cap, the connection that has waited longest for a request it has not yet
    authenticated (a slow or idle client) is closed to make room; connections whose
    request passed the token check are never closed for a newcomer, who gets 503 busy.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, agent: Agent, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
        self.agent = agent
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._connections = threading.BoundedSemaphore(agent.config.max_connections)
        # open connection -> when its current, not yet authenticated request began (None: authenticated)
        self._open: dict[socket.socket, float | None] = {}
        self._open_lock = threading.Lock()
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def mark(self, connection: socket.socket, trusted: bool) -> None:
        """Record whether `connection`'s current request has passed the token check."""
        with self._open_lock:
            if connection in self._open:
                self._open[connection] = None if trusted else time.monotonic()

    def _evict_slowest(self) -> bool:
        """Close the connection waiting longest for an unauthenticated request; False if none is."""
        with self._open_lock:
            waiting = [(since, id(conn), conn) for conn, since in self._open.items() if since is not None]
            if not waiting:
                return False
            _, _, victim = min(waiting)
            self._open[victim] = None  # closed once only
        logger.info("closing a slow unauthenticated connection to make room for a new one")
        try:
            victim.shutdown(socket.SHUT_RDWR)  # its thread sees the end of input and releases the slot
        except OSError:
            logger.debug("the connection to close was already closed")
        return True

    def process_request(self, request: Any, client_address: Any) -> None:
        admitted = self._connections.acquire(blocking=False) or (
            self._evict_slowest() and self._connections.acquire(timeout=_EVICT_WAIT_S))
        if not admitted:
            logger.warning("refusing a connection from %s: too many open connections", client_address[0])
            try:
                body = b'{"error": {"code": "busy", "message": "too many connections"}}'
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Retry-After: 1\r\nConnection: close\r\nContent-Length: "
                                + str(len(body)).encode() + b"\r\n\r\n" + body)
            except OSError:
                logger.debug("could not tell %s it was refused", client_address[0])
            self.shutdown_request(request)
            return
        with self._open_lock:
            self._open[request] = time.monotonic()
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._open_lock:
                self._open.pop(request, None)
            self._connections.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that broke in a way the handler did not expect: logged, never printed."""
        logger.debug("connection from %s ended with an error", client_address[0], exc_info=True)

    def start(self) -> threading.Thread:
        """Serve in a daemon thread (tests, benchmarks); `close()` stops it."""
        self._thread = threading.Thread(target=self.serve_forever, name="hatprof-agent", daemon=True)
        self._thread.start()
        return self._thread

    def close(self) -> None:
        """Stop serving (if `start()`ed), release the port and end the worker."""
        if getattr(self, "_thread", None) is not None:
            self.shutdown()
            self._thread.join()
            self._thread = None
        self.server_close()
        self.agent.close()


# -- command line (argparse: this must run with onnxruntime, numpy and psutil alone) ----------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hatprof agent", description="The hatprof device agent.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve measurements over HTTP",
                           description=__doc__.split("Protocol, version 1")[0].strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default 127.0.0.1; anything else exposes plain HTTP)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (0: any free port)")
    serve.add_argument("--token-file", type=Path,
                       help=f"file holding the shared token (default: ${TOKEN_ENV})")
    serve.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "hatprof" / "agent",
                       help="where uploaded artifacts are kept")
    serve.add_argument("--cache-mb", type=int, default=4096, help="artifact cache cap in MiB")
    serve.add_argument("--max-upload-mb", type=int, default=1024, help="largest artifact file in MiB")
    serve.add_argument("--time-limit", type=float, default=1800.0,
                       help="seconds one measurement may take before it is killed")
    serve.add_argument("--queue", type=int, default=4, help="requests that may wait for the device")
    serve.add_argument("--queue-wait", type=float, default=30.0,
                       help="seconds a queued request waits before it is told busy")
    serve.add_argument("--threads", type=int, default=1, help="threads reported by /v1/info by default")
    serve.add_argument("--cpus", help="CPUs to pin measurements to, like '2-3' (default: chosen "
                                      "from the thread count, highest CPUs first)")
    serve.add_argument("--max-memory-mb", type=int, default=None,
                       help="memory the measuring process may take, in MiB; a model that wants more "
                            f"fails with measure_failed (default: half this machine's memory; 0: no cap; "
                            f"at least {_MIN_WORKER_MB})")
    serve.add_argument("--max-connections", type=int, default=32,
                       help="open connections at most; at the cap the slowest unauthenticated one is closed")
    serve.add_argument("--request-timeout", type=float, default=30.0,
                       help="seconds a whole request head may take to arrive (a body: that plus its "
                            "length at 64 KiB/s), however slowly it trickles in")
    serve.add_argument("--allow-torchscript", action="store_true",
                       help="WARNING: also accept TorchScript archives. They can carry arbitrary code "
                            "that runs on this device with the agent's rights; enable it only when "
                            "everyone holding the token is trusted. Needs torch on the device.")
    serve.add_argument("-v", "--verbose", action="count", default=0)
    token = sub.add_parser("token", help="write a new random token to a file (mode 600)")
    token.add_argument("--out", type=Path, required=True)
    token.add_argument("--force", action="store_true", help="overwrite an existing token file")
    return parser


def write_token(path: Path, force: bool = False) -> None:
    """A new random token in `path`, readable by its owner only; an existing token (one that
    agents and inventories may hold) is replaced only with `force`."""
    if path.exists() and not force:
        raise HatprofError(f"{path} already exists (a token agents may be using); give --force to replace it")
    write_atomically(path, secrets.token_urlsafe(32) + "\n", private=True)


def _config(args: argparse.Namespace) -> AgentConfig:
    from profiler.metadata import parse_cpus

    for name in ("cache_mb", "max_upload_mb", "queue", "threads", "max_connections"):
        if getattr(args, name) < (0 if name == "queue" else 1):
            raise HatprofError(f"--{name.replace('_', '-')} must be positive")
    if args.time_limit <= 0 or args.queue_wait < 0 or args.request_timeout <= 0:
        raise HatprofError("--time-limit and --request-timeout must be positive and --queue-wait non-negative")
    memory_mb = args.max_memory_mb
    if memory_mb is None:
        memory_mb = psutil.virtual_memory().total // 2 // _MiB
    if memory_mb and memory_mb < _MIN_WORKER_MB:
        raise HatprofError(f"--max-memory-mb must be 0 (no cap) or at least {_MIN_WORKER_MB}: "
                           "the runtime alone takes over 100 MiB")
    return AgentConfig(
        token=read_token(args.token_file), cache_dir=args.cache_dir,
        max_cache_bytes=args.cache_mb * _MiB, max_upload_bytes=args.max_upload_mb * _MiB,
        time_limit_s=args.time_limit, queue=args.queue, queue_wait_s=args.queue_wait,
        threads=args.threads, cpus=sorted(parse_cpus(args.cpus)) if args.cpus else None,
        allow_torchscript=args.allow_torchscript, max_connections=args.max_connections,
        request_timeout_s=args.request_timeout, max_memory_mb=memory_mb or None,
        log_level=max(logging.DEBUG, logging.WARNING - 10 * args.verbose),
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(config: AgentConfig, host: str, port: int) -> AgentServer:
    """A started-up (bound, not yet serving) agent server."""
    if not _is_loopback(host):
        logger.warning("binding %s: the token and the measurements travel unencrypted; prefer an SSH "
                       "tunnel or a private network", host)
    if config.allow_torchscript:
        logger.warning("TorchScript allowed: anyone with the token can run code on this device")
    agent = Agent(config)
    try:
        return AgentServer(agent, host, port)
    except OSError as exc:
        agent.close()
        raise HatprofError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def main(argv: list[str] | None = None) -> int:
    """`python -m device_agents.agent serve|token ...`; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "token":
            write_token(args.out, args.force)
            print(f"wrote a new token to {args.out}")
            return 0
        logging.basicConfig(level=max(logging.DEBUG, logging.WARNING - 10 * args.verbose),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        server = serve(_config(args), args.host, args.port)
    except (HatprofError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    def _stop(signum: int, frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    print(f"hatprof agent listening on {server.url}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        server.agent.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
