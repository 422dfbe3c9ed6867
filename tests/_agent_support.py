"""Helpers shared by the agent, inventory and fleet tests: agents on loopback, raw HTTP."""
from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

from device_agents.agent import Agent, AgentConfig, AgentServer
from profiler.protocol import RoundSpec

REPO = Path(__file__).resolve().parents[1]
TOKEN = "test-token-" + "x" * 24
#: Small settings: a measurement takes milliseconds.
SMALL = {"seq_len": 4, "beam": 2, "warmup": 1, "runs": 10, "threads": 1}
SPEC = RoundSpec(**SMALL)


def start_agent(cache_dir: Path, **options: Any) -> AgentServer:
    """An in-process agent on 127.0.0.1 and a free port, serving in a daemon thread."""
    server = AgentServer(Agent(AgentConfig(token=TOKEN, cache_dir=cache_dir, **options)), "127.0.0.1", 0)
    server.start()
    return server


def request(url: str, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None, token: str | None = TOKEN,
            timeout: float = 60.0) -> tuple[int, dict[str, str], Any]:
    """One raw HTTP request; the status, headers and JSON body (None if the body is not JSON)."""
    parsed = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=timeout)
    all_headers = dict(headers or {})
    if token is not None:
        all_headers.setdefault("Authorization", f"Bearer {token}")
    try:
        conn.request(method, path, body=body, headers=all_headers)
        response = conn.getresponse()
        data = response.read()
        try:
            payload = json.loads(data)
        except ValueError:
            payload = None
        return response.status, dict(response.getheaders()), payload
    finally:
        conn.close()


def spawn_agent(tmp_path: Path, *args: str, env: dict[str, str] | None = None,
                python_path: list[str] | None = None) -> tuple[subprocess.Popen, str]:
    """`python -m device_agents.agent serve` in a subprocess on a free loopback port; (process, url)."""
    token_file = tmp_path / "agent.token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    full_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    full_env["PYTHONPATH"] = os.pathsep.join([*(python_path or []), str(REPO)])
    full_env.update(env or {})
    process = subprocess.Popen(
        [sys.executable, "-m", "device_agents.agent", "serve", "--host", "127.0.0.1", "--port", "0",
         "--token-file", str(token_file), "--cache-dir", str(tmp_path / "agent-cache"), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env, cwd=tmp_path)
    line = process.stdout.readline()
    if "listening on" not in line:
        process.kill()
        raise RuntimeError(f"agent did not start: {line!r} {process.stderr.read()}")
    return process, line.split("listening on", 1)[1].strip()


def stop_process(process: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM (the agent shuts down cleanly), then SIGKILL if it lingers."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds pass (no assertion on time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def raw(url: str, data: bytes, timeout: float = 30.0) -> tuple[int | None, Any]:
    """Send raw bytes, half-close, read until the agent closes; (status or None, JSON body or None)."""
    parsed = urllib.parse.urlsplit(url)
    with socket.create_connection((parsed.hostname, parsed.port), timeout) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    response = b"".join(chunks)
    status = None
    body = response
    if response.startswith(b"HTTP/"):
        head, _, body = response.partition(b"\r\n\r\n")
        status = int(head.split()[1])
    try:
        return status, json.loads(body) if body else None
    except ValueError:
        return status, None
