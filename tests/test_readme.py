"""The README's commands run as written: the set-up targets exist and the device agent's
block (token, then serve on 127.0.0.1) works, started and stopped here; its copy of the agent's
wire protocol is the agent's docstring, word for word."""
from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def code_block(section: str, first: str) -> list[str]:
    """The commands of the indented block of `section` that starts with the line `first`."""
    body = README.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    lines = body.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == first)
    block = []
    for line in lines[start:]:
        if not line.startswith("    "):
            break
        command = line.strip().split("  #", 1)[0].strip()
        if command and not command.startswith("#"):
            block.append(command)
    return block


def test_the_set_up_commands_are_make_targets_with_the_pinned_torch():
    commands = code_block("Set-up", "make demo    # installs, then runs HAT's method end to end on this CPU "
                                    "(a few minutes after install)")
    assert commands == ["make demo", "make test"]
    targets = [c.split()[1] for c in commands] + re.findall(r"\(make ([\w-]+):", README)
    dry = subprocess.run(["make", "-n", *targets], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    pin = re.search(r"pip install torch==([\d.]+) && pip install -e '\.\[workstation,dev\]'", README).group(1)
    assert f"torch=={pin}" in (REPO / "Makefile").read_text()
    import torch

    assert torch.__version__.split("+")[0] == pin


def test_the_agent_commands_run_as_written(tmp_path):
    commands = code_block("Devices: agents, inventory, fleets", "pip install .[agent]")
    assert [c.split()[:2] for c in commands] == [["pip", "install"], ["hatprof-agent", "token"],
                                                 ["hatprof-agent", "serve"]]
    # pip install .[agent]: resolved offline against this checkout (what it would install)
    pip = shlex.split(commands[0])
    dry = subprocess.run([sys.executable, "-m", *pip[:2], "--dry-run", "--no-deps", "--no-index",
                          "--no-build-isolation", "-q", *pip[2:]], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert dry.returncode == 0, dry.stderr

    token = subprocess.run([str(BIN / a) if i == 0 else a for i, a in enumerate(shlex.split(commands[1]))],
                           cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert token.returncode == 0, token.stderr
    token_file = tmp_path / "rpi4.token"
    assert token_file.stat().st_mode & 0o777 == 0o600 and len(token_file.read_text().strip()) >= 32

    serve = shlex.split(commands[2])
    assert serve[serve.index("--host") + 1] == "127.0.0.1"
    serve[0] = str(BIN / serve[0])
    serve[serve.index("--port") + 1] = "0"  # any free port: the README's may be taken here
    server = subprocess.Popen([*serve, "--cache-dir", str(tmp_path / "cache")], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        assert "listening on http://127.0.0.1:" in line, line
        url = line.split("listening on ")[1].strip()
        with urllib.request.urlopen(f"{url}/v1/health", timeout=30) as reply:
            assert json.load(reply)["status"] == "ok"
        request = urllib.request.Request(f"{url}/v1/info", headers={
            "Authorization": f"Bearer {token_file.read_text().strip()}"})
        with urllib.request.urlopen(request, timeout=120) as reply:
            assert reply.status == 200
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0


def test_the_wire_protocol_in_the_readme_is_the_agents_own():
    import device_agents.agent

    doc = device_agents.agent.__doc__
    own = doc[doc.index("Protocol, version 1"):].strip().splitlines()
    section = README.split("\n### The agent's wire protocol\n", 1)[1].split("\n### ", 1)[0]
    shown = [line[4:] for line in section.splitlines() if line.startswith("    ") or not line.strip()]
    shown = "\n".join(shown).strip().splitlines()
    assert shown == own
