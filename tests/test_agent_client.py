"""The client: uploads once, retries with backoff, error codes as exceptions, never leaks the token."""
from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from _agent_support import SMALL, SPEC, TOKEN, start_agent
from device_agents.client import AgentClient, AgentError, AgentUnavailable, PoolTarget, RemoteTarget
from profiler.errors import DeviceError



def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Recorder:
    def __init__(self) -> None:
        self.sleeps: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.sleeps.append(seconds)


def test_files_are_uploaded_once(tmp_path, artifact, monkeypatch):
    server = start_agent(tmp_path / "cache")
    try:
        client = AgentClient(server.url, TOKEN, retries=0)
        uploads = []
        original = client.upload
        monkeypatch.setattr(client, "upload", lambda *a: uploads.append(a[1]) or original(*a))
        client.measure(artifact, "onnx", SPEC)
        assert sorted(uploads) == sorted(p.name for p in artifact.iterdir() if not p.name.startswith("."))
        client.measure(artifact, "onnx", SPEC)
        assert len(uploads) == 4
    finally:
        server.close()


def test_connection_errors_are_retried_with_exponential_backoff():
    sleeps = _Recorder()
    client = AgentClient(f"http://127.0.0.1:{_free_port()}", TOKEN, retries=4, backoff_s=0.5,
                         max_backoff_s=3.0, sleep=sleeps)
    with pytest.raises(AgentUnavailable, match="after 5 attempts") as info:
        client.health()
    assert isinstance(info.value, DeviceError)
    assert len(sleeps.sleeps) == 4
    for attempt, slept in enumerate(sleeps.sleeps):
        ceiling = min(3.0, 0.5 * 2 ** attempt)
        assert ceiling / 2 <= slept <= ceiling


def test_busy_is_retried_honouring_retry_after_then_succeeds(tmp_path):
    server = start_agent(tmp_path / "cache", queue=0, queue_wait_s=0)
    try:
        sleeps = _Recorder()
        client = AgentClient(server.url, TOKEN, retries=2, backoff_s=0.01, max_backoff_s=60, sleep=sleeps)
        assert server.agent._device.acquire()
        try:
            with pytest.raises(AgentUnavailable, match="busy"):
                client.info()
        finally:
            server.agent._device.release()
        assert len(sleeps.sleeps) == 2 and all(s >= 5 for s in sleeps.sleeps)  # the agent's Retry-After
        assert client.info()["protocol"] == 1
    finally:
        server.close()


def test_refusals_are_agent_errors_with_codes(tmp_path):
    server = start_agent(tmp_path / "cache")
    try:
        with pytest.raises(AgentError) as info:
            AgentClient(server.url, "w" * 32, retries=3).info()
        assert (info.value.code, info.value.status) == ("unauthorized", 401)  # not retried
        with pytest.raises(DeviceError, match="cannot be read"):
            AgentClient(server.url, TOKEN).measure(tmp_path, "onnx", SPEC)
    finally:
        server.close()


def test_redirects_are_refused_so_the_token_stays_with_the_agent():
    seen: list[str | None] = []

    class Elsewhere(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            seen.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    elsewhere = HTTPServer(("127.0.0.1", 0), Elsewhere)

    class Redirect(Elsewhere):
        def do_GET(self):  # noqa: N802
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{elsewhere.server_port}/v1/info")
            self.send_header("Content-Length", "0")
            self.end_headers()

    redirect = HTTPServer(("127.0.0.1", 0), Redirect)
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (elsewhere, redirect)]
    for thread in threads:
        thread.start()
    try:
        with pytest.raises(AgentError) as info:
            AgentClient(f"http://127.0.0.1:{redirect.server_port}", TOKEN, retries=0).info()
        assert info.value.status == 302
        assert seen == []
    finally:
        for server in (elsewhere, redirect):
            server.shutdown()
            server.server_close()


def test_pool_fails_over_to_an_agent_that_answers(tmp_path, artifact):
    server = start_agent(tmp_path / "cache")
    try:
        dead = RemoteTarget(f"http://127.0.0.1:{_free_port()}", TOKEN, retries=0)
        alive = RemoteTarget(server.url, TOKEN, retries=0)
        pool = PoolTarget("pi", [dead, alive])
        pair = pool.measure_round(artifact, "onnx", SPEC)
        assert len(pair.encoder.samples_ns) == SMALL["runs"]
        assert pool.targets == [alive, dead]  # the dead one is tried last from now on
        assert pool.info()["threads"] == 1
    finally:
        server.close()
    with pytest.raises(AgentUnavailable, match="no agent of device 'pi' answered"):
        pool.measure_round(artifact, "onnx", SPEC)
