"""The workstation's side of the agent protocol: `AgentClient` (HTTP) and `RemoteTarget`.

`RemoteTarget` has the interface of `profiler.target.LocalTarget` (`name`, `info()`,
`measure_round(...)`, `close()`), so `profiler.measure` drives a local run and a remote
run through the same code. Artifact files are uploaded by content hash only when the
agent says it lacks them. Connection failures, 503 busy and a crashed worker are
retried with exponential backoff; every other refusal is an `AgentError` carrying the
agent's stable error code. A measure request waits at most `measure_deadline_s`, what
the protocol should take at a generous allowance per run plus a margin (never more than
the agent's own time limit and queue wait allow), and a measure that outlives its
deadline is not retried: the agent has gone silent. Uses urllib only: no proxies, no
redirects (the token must never travel anywhere but the named agent).
"""
from __future__ import annotations

import hashlib
import http.client
import json
import logging
import random
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable

from device_agents.wire import PREFIX, RETRYABLE, artifact_files
from profiler.errors import DeviceError
from profiler.protocol import RoundSpec

logger = logging.getLogger(__name__)

#: A response larger than this is refused (a measure response with 100k samples is ~2 MB).
MAX_RESPONSE_BYTES = 64 << 20
_CONNECTION_ERRORS = (urllib.error.URLError, ConnectionError, TimeoutError, socket.timeout,
                      http.client.HTTPException)
#: Seconds allowed per timed or warm-up run (one encoder pass and one beam-search decode) when
#: deriving a measure request's deadline: a large SubTransformer takes seconds on a Raspberry Pi.
PER_RUN_S = 30.0
#: Fixed part of that deadline: uploads, the worker's start, the agent's queue.
MARGIN_S = 120.0


def _timed_out(exc: BaseException) -> bool:
    return isinstance(exc, (TimeoutError, socket.timeout)) or isinstance(
        getattr(exc, "reason", None), (TimeoutError, socket.timeout))


class AgentError(DeviceError):
    """The agent refused or failed a request; `code` is its stable error code."""

    def __init__(self, url: str, code: str, status: int, message: str, details: dict[str, Any]) -> None:
        super().__init__(f"agent {url}: {message} ({code})")
        self.url, self.code, self.status, self.details = url, code, status, details


class AgentUnavailable(DeviceError):
    """The agent could not be reached (or stayed busy) through every retry."""

    code = "unavailable"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 (urllib's signature)
        raise urllib.error.HTTPError(req.full_url, code, f"redirects are refused (to {newurl})", headers, fp)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class AgentClient:
    """HTTP calls to one agent, with timeouts and retries."""

    def __init__(self, url: str, token: str, timeout_s: float = 60.0, measure_timeout_s: float = 3900.0,
                 retries: int = 5, backoff_s: float = 0.5, max_backoff_s: float = 30.0,
                 sleep: Callable[[float], None] = time.sleep, per_run_s: float = PER_RUN_S,
                 margin_s: float = MARGIN_S) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname or parsed.path not in ("", "/"):
            raise DeviceError(f"agent address {url!r} is not like http://HOST:PORT")
        self.url = url.rstrip("/")
        self._token = token
        self.timeout_s, self.measure_timeout_s = timeout_s, measure_timeout_s
        self.per_run_s, self.margin_s = per_run_s, margin_s
        #: The agent's `limits` from its last /v1/info answer (time limit, queue wait), once known.
        self.agent_limits: dict[str, Any] | None = None
        self.retries, self.backoff_s, self.max_backoff_s = retries, backoff_s, max_backoff_s
        self._sleep = sleep
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
        self._digests: dict[tuple[str, int, int], str] = {}

    def __repr__(self) -> str:
        return f"AgentClient({self.url!r})"

    # -- transport -------------------------------------------------------------------------------
    def _once(self, method: str, path: str, body: bytes | None, content_type: str | None,
              timeout_s: float, auth: bool) -> dict[str, Any]:
        request = urllib.request.Request(self.url + path, data=body, method=method)
        if auth:
            request.add_header("Authorization", f"Bearer {self._token}")
        if content_type:
            request.add_header("Content-Type", content_type)
        with self._opener.open(request, timeout=timeout_s) as response:
            data = response.read(MAX_RESPONSE_BYTES + 1)
        if len(data) > MAX_RESPONSE_BYTES:
            raise DeviceError(f"agent {self.url}: response larger than {MAX_RESPONSE_BYTES} bytes")
        return json.loads(data)

    def _error(self, exc: urllib.error.HTTPError) -> AgentError:
        try:
            error = json.loads(exc.read(1 << 20))["error"]
            code, message = str(error.pop("code")), str(error.pop("message"))
        except (ValueError, KeyError, TypeError, OSError):
            code, message, error = f"http_{exc.code}", str(exc.reason), {}
        if exc.headers.get("Retry-After", "").isdigit():
            error["retry_after_s"] = int(exc.headers["Retry-After"])
        return AgentError(self.url, code, exc.code, message, error)

    def request(self, method: str, path: str, body: bytes | None = None,
                content_type: str | None = None, timeout_s: float | None = None,
                auth: bool = True, retry_timeouts: bool = True) -> dict[str, Any]:
        """One call, retried on connection errors and retryable codes; the JSON response.

        With `retry_timeouts` false, a call that gets no answer within `timeout_s` fails at once.
        """
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        last = ""
        for attempt in range(self.retries + 1):
            delay = min(self.max_backoff_s, self.backoff_s * 2 ** attempt) * random.uniform(0.5, 1.0)
            try:
                return self._once(method, path, body, content_type, timeout_s, auth)
            except urllib.error.HTTPError as exc:
                error = self._error(exc)
                if error.code not in RETRYABLE:
                    raise error from None
                last = str(error)
                delay = max(delay, min(self.max_backoff_s, float(error.details.get("retry_after_s", 0))))
            except _CONNECTION_ERRORS as exc:
                if not retry_timeouts and _timed_out(exc):
                    raise AgentUnavailable(f"agent {self.url}: {method} {path} did not answer within "
                                           f"{timeout_s:g} s") from None
                last = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
            except ValueError:
                raise DeviceError(f"agent {self.url}: response to {method} {path} is not JSON") from None
            if attempt < self.retries:
                logger.info("agent %s: %s %s failed (%s); retry %d/%d in %.1f s", self.url, method, path,
                            last, attempt + 1, self.retries, delay)
                self._sleep(delay)
        raise AgentUnavailable(f"agent {self.url}: {method} {path} failed after {self.retries + 1} "
                               f"attempts: {last}")

    # -- endpoints -------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return self.request("GET", f"{PREFIX}/health", auth=False)

    def info(self, threads: int = 1) -> dict[str, Any]:
        response = self.request("GET", f"{PREFIX}/info?threads={int(threads)}")
        limits = response.get("agent", {}).get("limits") if isinstance(response, dict) else None
        if isinstance(limits, dict):
            self.agent_limits = limits
        return response

    def measure_deadline_s(self, warmup: int, runs: int) -> float:
        """Seconds one measure request may take before the agent counts as silent.

        `(warmup + runs) * per_run_s + margin_s`, but no more than the agent's time limit
        plus its queue wait plus the margin (once /v1/info told them), nor `measure_timeout_s`.
        """
        deadline = (warmup + runs) * self.per_run_s + self.margin_s
        limits = [(self.agent_limits or {}).get(name) for name in ("time_limit_s", "queue_wait_s")]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in limits):
            deadline = min(deadline, sum(limits) + self.margin_s)
        return min(deadline, self.measure_timeout_s)

    def digests(self, artifact_dir: Path, fmt: str) -> dict[str, str]:
        """SHA-256 of each file of an artifact, remembered while the file is unchanged."""
        files = {}
        for name in artifact_files(fmt):
            path = artifact_dir / name
            try:
                st = path.stat()
            except OSError as exc:
                raise DeviceError(f"artifact file {path} cannot be read: {exc.strerror}") from None
            key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
            if key not in self._digests:
                self._digests[key] = _file_digest(path)
            files[name] = self._digests[key]
        return files

    def upload(self, path: Path, filename: str, sha: str) -> dict[str, Any]:
        logger.info("agent %s: uploading %s (%d bytes)", self.url, filename, path.stat().st_size)
        return self.request("PUT", f"{PREFIX}/artifacts/{sha}/{filename}", body=path.read_bytes(),
                            content_type="application/octet-stream")

    def measure(self, artifact_dir: str | Path, fmt: str, spec: RoundSpec,
                reference_dir: str | Path | None = None) -> dict[str, Any]:
        """One timed round of `spec` on the agent (with the duet's reference artifact, when given),
        uploading missing files first; the agent's full response."""
        dirs = {"artifact": Path(artifact_dir)}
        if reference_dir is not None:
            dirs["reference"] = Path(reference_dir)
        files = {field: self.digests(folder, fmt) for field, folder in dirs.items()}
        sources = {(name, sha): dirs[field] / name for field, named in files.items() for name, sha in named.items()}
        body = json.dumps({**{field: {"format": fmt, "files": named} for field, named in files.items()},
                           **spec.to_dict()}).encode()
        # the agent may first wait (bounded) for a hot board to cool down; a duet times the reference too
        runs = spec.runs if reference_dir is None else 2 * spec.runs + 1
        deadline_s = self.measure_deadline_s(spec.warmup * len(dirs), runs) + spec.cooldown_s
        for _ in range(3):  # a file evicted between upload and measure is uploaded again
            try:
                return self.request("POST", f"{PREFIX}/measure", body, "application/json",
                                    timeout_s=deadline_s, retry_timeouts=False)
            except AgentError as exc:
                if exc.code != "missing_artifact":
                    raise
                for item in exc.details.get("missing", []):
                    name, sha = item["filename"], item["sha256"]
                    if (name, sha) not in sources:
                        raise DeviceError(f"agent {self.url} asked for a file this artifact lacks: {name}")
                    self.upload(sources[name, sha], name, sha)
        raise DeviceError(f"agent {self.url} keeps losing the files of artifact {artifact_dir}: "
                          "is its cache too small?")


class RemoteTarget:
    """A device reached through one agent; the interface of `profiler.target.LocalTarget`."""

    def __init__(self, url: str, token: str, threads: int = 1, name: str | None = None,
                 **client_options: Any) -> None:
        self.client = AgentClient(url, token, **client_options)
        self.threads = threads
        self.name = name or urllib.parse.urlsplit(url).netloc
        self._info: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"RemoteTarget({self.client.url!r}, name={self.name!r})"

    @property
    def url(self) -> str:
        return self.client.url

    def info(self) -> dict[str, Any]:
        """The device's environment record, as `LocalTarget.info()` gives it for this machine."""
        if self._info is None:
            self._info = self.client.info(self.threads)["environment"]
        return self._info

    def measure_round(self, artifact_dir: Path, fmt: str, spec: RoundSpec, reference_dir: Path | None = None):
        """One round of `spec` on the device (in duet mode, with the reference artifact timed
        around every run): a `profiler.target.RoundPair`."""
        from profiler.target import RoundPair

        response = self.client.measure(artifact_dir, fmt, spec, reference_dir)
        try:
            return RoundPair.from_dict(response["result"])
        except (KeyError, TypeError) as exc:
            raise DeviceError(f"agent {self.url}: malformed measure response ({exc})") from None

    def close(self) -> None:
        """Nothing is held between calls (each request has its own connection)."""


class PoolTarget:
    """Several agents of one device name as one target: each call goes to the first that answers.

    Parallel use of the agents is the fleet's job (`device_agents.fleet`); this is
    what `hatprof measure --device NAME` uses, so one dead agent does not stop it.
    """

    def __init__(self, name: str, targets: list[RemoteTarget]) -> None:
        if not targets:
            raise DeviceError(f"device {name!r} has no agents")
        self.name = name
        self.targets = list(targets)

    def __repr__(self) -> str:
        return f"PoolTarget({self.name!r}, {[t.url for t in self.targets]})"

    def _first(self, call: Callable[[RemoteTarget], Any]) -> Any:
        failures = []
        for target in list(self.targets):
            try:
                return call(target)
            except AgentUnavailable as exc:
                failures.append(str(exc))
                self.targets.remove(target)
                self.targets.append(target)  # try the others first next time
        raise AgentUnavailable(f"no agent of device {self.name!r} answered: {'; '.join(failures)}")

    def info(self) -> dict[str, Any]:
        return self._first(lambda t: t.info())

    def measure_round(self, artifact_dir: Path, fmt: str, spec: RoundSpec, reference_dir: Path | None = None):
        return self._first(lambda t: t.measure_round(artifact_dir, fmt, spec, reference_dir))

    def close(self) -> None:
        for target in self.targets:
            target.close()
