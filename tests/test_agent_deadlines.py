"""A device that goes silent: bounded client deadlines, no retries of a silent measure, a warning line."""
from __future__ import annotations

import os
import signal
import socket
import threading

import pytest

from profiler.protocol import RoundSpec
from _agent_support import SMALL, TOKEN, start_agent, wait_until
from device_agents.client import AgentClient, AgentUnavailable, RemoteTarget
from device_agents.fleet import FleetDevice, collect
from profiler.artifacts import get_artifact
from profiler.measure import MeasureJob
from profiler.protocol import TimingProtocol
from profiler.space import load_space



def test_the_measure_deadline_follows_the_protocol_and_the_agents_limits():
    client = AgentClient("http://127.0.0.1:1", TOKEN, per_run_s=2.0, margin_s=60.0)
    assert client.measure_deadline_s(warmup=5, runs=300) == 305 * 2.0 + 60.0
    assert client.measure_deadline_s(warmup=0, runs=10) == 10 * 2.0 + 60.0
    # an agent that kills any measurement after 300 s, after up to 30 s in its queue
    client.agent_limits = {"time_limit_s": 300.0, "queue_wait_s": 30.0}
    assert client.measure_deadline_s(warmup=5, runs=300) == 300.0 + 30.0 + 60.0
    assert client.measure_deadline_s(warmup=0, runs=10) == 10 * 2.0 + 60.0
    capped = AgentClient("http://127.0.0.1:1", TOKEN, per_run_s=2.0, margin_s=60.0, measure_timeout_s=100.0)
    assert capped.measure_deadline_s(warmup=5, runs=300) == 100.0
    default = AgentClient("http://127.0.0.1:1", TOKEN)
    assert default.measure_deadline_s(warmup=5, runs=300) < 6 * 3900  # the old worst case per request


def test_info_teaches_the_client_the_agents_limits(tmp_path):
    server = start_agent(tmp_path / "cache", time_limit_s=123.0, queue_wait_s=7.0)
    try:
        client = AgentClient(server.url, TOKEN, per_run_s=100.0, margin_s=10.0)
        client.info()
        assert client.measure_deadline_s(warmup=5, runs=300) == 123.0 + 7.0 + 10.0
    finally:
        server.close()


class _SilentAgent:
    """Accepts connections, reads what comes, never answers: a stopped device."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.connections:
            conn.close()


def test_a_silent_measure_fails_after_its_deadline_without_being_retried(artifact, monkeypatch):
    silent = _SilentAgent()
    try:
        client = AgentClient(silent.url, TOKEN, per_run_s=0.01, margin_s=0.5, retries=5, sleep=lambda s: None)
        monkeypatch.setattr(client, "digests", lambda *a: {})  # straight to the measure request
        with pytest.raises(AgentUnavailable, match=r"did not answer within 0\.6 s"):
            client.measure(artifact, "onnx", RoundSpec(seq_len=4, beam=2, warmup=0, runs=10, cooldown_s=0))
        assert len(silent.connections) == 1  # one request: a silent agent is not asked five more times
    finally:
        silent.close()


def test_collect_names_a_device_that_went_silent(tmp_path):
    """Stop an agent's measuring process after the first row: a progress line names the device and
    the agent; once it continues, every row lands."""
    space = load_space("compact")
    archs = space.sample_many(3, seed=3)
    for arch in archs:
        get_artifact(arch, space, "onnx")
    server = start_agent(tmp_path / "cache")
    stopped: list[int] = []

    def on_progress(state):
        progress.append(state)
        if state.done == 1 and not stopped:  # the next round will get no answer
            stopped.append(server.agent.worker.pid)
            os.kill(stopped[0], signal.SIGSTOP)

    progress: list = []
    try:
        protocol = TimingProtocol.hat(warmup=0, runs=20, rounds=1, seq_len=4, beam=2)
        device = FleetDevice("pi", [RemoteTarget(server.url, TOKEN, name="pi", retries=0)], protocol)
        job = MeasureJob(space=space, protocol=protocol, interleave=1)
        reports = {}
        thread = threading.Thread(target=lambda: reports.update(collect(
            [device], archs, job, tmp_path / "out", on_progress=on_progress, silence_s=1.0)))
        thread.start()
        try:
            assert wait_until(lambda: any(p.silent and p.done == 1 for p in progress), timeout=120), \
                [p.line() for p in progress]
        finally:
            if stopped:
                os.kill(stopped[0], signal.SIGCONT)
        thread.join(120)
        warning = next(p for p in progress if p.silent and p.done == 1)  # (a slow first upload may warn too)
        assert list(warning.silent) == [server.url]
        assert warning.line().startswith("pi: 1/3 rows") and f"agent {server.url} silent for" in warning.line()
        assert reports["pi"].measured == 3 and not reports["pi"].failed
    finally:
        server.close()
