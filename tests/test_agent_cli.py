"""`hatprof agent serve|token` and `python -m device_agents.agent`; TorchScript only when allowed."""
from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
from click.testing import CliRunner

from _agent_support import REPO, SMALL, SPEC, TOKEN, start_agent
from device_agents.client import AgentClient, AgentError
from profiler.artifacts import get_artifact
from hatprof.cli import cli
from profiler.space import load_space


def _agent_main(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**{k: v for k, v in os.environ.items() if k != "HATPROF_AGENT_TOKEN"},
                "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "device_agents.agent", *args], capture_output=True,
                          text=True, env=full_env, timeout=120)


def test_serve_help_warns_about_torchscript():
    result = CliRunner().invoke(cli, ["agent", "serve", "--help"])
    assert result.exit_code == 0
    assert "--allow-torchscript" in result.output and "arbitrary code" in result.output
    assert "127.0.0.1" in result.output


def test_token_command_writes_a_private_random_token(tmp_path):
    path = tmp_path / "agent.token"
    result = CliRunner().invoke(cli, ["agent", "token", "--out", str(path)])
    assert result.exit_code == 0, result.output
    first = path.read_text().strip()
    assert len(first) >= 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    refused = CliRunner().invoke(cli, ["agent", "token", "--out", str(path)])
    assert refused.exit_code == 1 and "--force" in refused.output and path.read_text().strip() == first
    CliRunner().invoke(cli, ["agent", "token", "--out", str(path), "--force"])
    assert path.read_text().strip() != first


def test_serve_refuses_to_start_without_a_usable_token(tmp_path):
    missing = _agent_main("serve", "--port", "0", "--cache-dir", str(tmp_path))
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1].startswith("error: no token: environment variable")
    (tmp_path / "short").write_text("abc")
    (tmp_path / "short").chmod(0o600)
    short = _agent_main("serve", "--port", "0", "--token-file", str(tmp_path / "short"))
    assert short.returncode == 1 and "shorter than 16" in short.stderr and "Traceback" not in short.stderr
    bad = _agent_main("serve", "--port", "0", "--queue", "-1", env={"HATPROF_AGENT_TOKEN": TOKEN})
    assert bad.returncode == 1 and "--queue" in bad.stderr


def test_torchscript_is_measured_only_by_an_agent_that_allows_it(tmp_path):
    space = load_space("compact")
    artifact = get_artifact(space.smallest(), space, "torchscript")
    closed = start_agent(tmp_path / "closed")
    opened = start_agent(tmp_path / "open", allow_torchscript=True)
    try:
        with pytest.raises(AgentError) as refused:
            AgentClient(closed.url, TOKEN, retries=0).measure(artifact, "torchscript", SPEC)
        assert (refused.value.code, refused.value.status) == ("format_not_allowed", 403)
        client = AgentClient(opened.url, TOKEN, retries=0)
        assert client.info()["agent"]["formats"] == ["onnx", "torchscript"]
        response = client.measure(artifact, "torchscript", SPEC)
        assert len(response["result"]["decoder_ns"]) == SMALL["runs"]
    finally:
        closed.close()
        opened.close()
