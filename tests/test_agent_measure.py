"""Measuring through an agent: the same code path and the same kind of result as measuring locally."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from profiler.protocol import RoundSpec
from _agent_support import SMALL, SPEC, TOKEN, spawn_agent, start_agent, stop_process
from device_agents.client import AgentClient, RemoteTarget
from profiler.protocol import Measurement
from profiler.target import LocalTarget, RoundPair



@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    server = start_agent(tmp_path_factory.mktemp("agent"))
    yield server
    server.close()


@pytest.fixture
def local_target():
    affinity = os.sched_getaffinity(0)
    target = LocalTarget(threads=1)
    yield target
    target.close()
    os.sched_setaffinity(0, affinity)  # LocalTarget pins this (test) process


def _check_valid(pair: RoundPair, runs: int) -> None:
    for part in (pair.encoder, pair.decoder):
        assert len(part.samples_ns) == runs
        assert all(isinstance(s, int) and s > 0 for s in part.samples_ns)
        assert part.other_cpu_fraction is None or 0.0 <= part.other_cpu_fraction <= 1.0
        Measurement.from_rounds([part], 0.1)  # validates
    assert set(pair.before) == set(pair.after) >= {"time", "load_avg", "memory_available_bytes"}


def test_statistics_returned_by_the_agent_derive_from_its_raw_samples(agent, artifact):
    client = AgentClient(agent.url, TOKEN, retries=0)
    response = client.measure(artifact, "onnx", RoundSpec(**SMALL, trim=0.2))
    pair = RoundPair.from_dict(response["result"])
    _check_valid(pair, SMALL["runs"])
    for part in ("encoder", "decoder"):
        recomputed = Measurement.from_rounds([getattr(pair, part)], 0.2).summary()
        assert recomputed == response["statistics"][part]
    assert response["statistics"]["encoder"]["trim"] == 0.2
    assert response["elapsed_s"] > 0


def test_remote_and_local_rounds_are_alike(agent, artifact, local_target):
    remote = RemoteTarget(agent.url, TOKEN, threads=1, name="loopback")
    remote_pair = remote.measure_round(artifact, "onnx", SPEC)
    local_pair = local_target.measure_round(artifact, "onnx", SPEC)
    for pair in (remote_pair, local_pair):
        _check_valid(pair, SMALL["runs"])
    assert remote_pair.to_dict().keys() == local_pair.to_dict().keys()
    assert set(remote.info()) == set(local_target.info())
    assert remote.info()["threads"] == 1
    assert remote.name == "loopback"


def test_info_reports_the_agent_settings(agent):
    info = AgentClient(agent.url, TOKEN).info(1)
    assert info["protocol"] == 1
    assert info["agent"]["formats"] == ["onnx"]
    assert info["agent"]["limits"]["time_limit_s"] == agent.agent.config.time_limit_s
    assert info["environment"]["threads"] == 1


_BLOCKER = '''
import os, sys
_FORBIDDEN = {"torch", "pandas", "sklearn"}   # must never even be tried
_ABSENT = {"onnx", "click", "yaml", "ray"}     # not installed on a bare device: optional at most
class _Block:
    """Refuse (and record) imports of the workstation-only libraries; hide the optional ones."""
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top in _FORBIDDEN:
            with open(os.environ["HATPROF_BLOCKED_LOG"], "a") as log:
                log.write(f"{os.getpid()} {name}\\n")
        if top in _FORBIDDEN | _ABSENT:
            raise ImportError(f"{name} is not available on the device side")
        return None
sys.meta_path.insert(0, _Block())
'''


def test_serving_and_measuring_never_import_torch_pandas_or_sklearn(tmp_path, artifact):
    """The agent, run with onnx, click, yaml and ray hidden too (onnxruntime, numpy, psutil only)."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(_BLOCKER)
    log = tmp_path / "blocked.log"
    env = {"HATPROF_BLOCKED_LOG": str(log)}
    # the blocker works: a plain import of torch fails and is recorded
    probe = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True,
                           env={**os.environ, **env, "PYTHONPATH": str(blocker)})
    assert probe.returncode != 0 and "not available" in probe.stderr.decode()
    assert "torch" in log.read_text()
    log.unlink()

    process, url = spawn_agent(tmp_path, env=env, python_path=[str(blocker)])
    try:
        client = AgentClient(url, TOKEN, retries=0)
        assert client.health()["status"] == "ok"
        info = client.info(1)
        assert info["environment"]["libraries"]
        response = client.measure(artifact, "onnx", SPEC)
        assert len(response["result"]["encoder_ns"]) == SMALL["runs"]
    finally:
        stop_process(process)
    assert process.returncode == 0
    assert not log.exists(), log.read_text()
