"""The device inventory: where it is found, the documented form, and clear errors."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from _agent_support import TOKEN, start_agent
from device_agents.client import PoolTarget, RemoteTarget
from device_agents.inventory import INVENTORY_ENV, load_inventory
from hatprof.cli import cli
from profiler.errors import DeviceError, HatprofError

ISSUE_FORM = '''
[devices.rpi4]
agents = ["http://127.0.0.1:8765", "http://127.0.0.1:8766"]
token_file = "rpi4.token"        # relative to the inventory file; or token_env = "VAR"
threads = 1

[devices.xeon]
agents = ["http://127.0.0.1:8767"]
token_env = "XEON_TOKEN"
threads = 2
retries = 0
'''


@pytest.fixture
def inventory_file(tmp_path, monkeypatch) -> Path:
    monkeypatch.delenv(INVENTORY_ENV, raising=False)
    (tmp_path / "rpi4.token").write_text(TOKEN + "\n")
    (tmp_path / "rpi4.token").chmod(0o600)
    path = tmp_path / "devices.toml"
    path.write_text(ISSUE_FORM)
    return path


def test_the_documented_form_works(inventory_file, monkeypatch, tmp_path):
    monkeypatch.chdir("/")  # token_file is relative to the inventory, not the working directory
    monkeypatch.setenv("XEON_TOKEN", "y" * 20)
    inventory = load_inventory(inventory_file)
    assert inventory.names() == ["rpi4", "xeon"]
    rpi4 = inventory.get("rpi4")
    assert rpi4.agents == ("http://127.0.0.1:8765", "http://127.0.0.1:8766")
    assert rpi4.token_file == tmp_path / "rpi4.token" and rpi4.token() == TOKEN
    pool = inventory.open_target("rpi4")
    assert isinstance(pool, PoolTarget) and pool.name == "rpi4" and len(pool.targets) == 2
    xeon = inventory.open_target("xeon")
    assert isinstance(xeon, RemoteTarget) and xeon.threads == 2 and xeon.client.retries == 0
    assert xeon.name == "xeon"


def test_found_through_the_environment_then_the_config_dir(inventory_file, monkeypatch, tmp_path):
    monkeypatch.setenv(INVENTORY_ENV, str(inventory_file))
    assert load_inventory().path == inventory_file
    monkeypatch.delenv(INVENTORY_ENV)
    config = tmp_path / "config"
    (config / "hatprof").mkdir(parents=True)
    (config / "hatprof" / "devices.toml").write_text('[devices.pi]\nagents = ["http://127.0.0.1:1"]\n'
                                                    'token_env = "T"\n')
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    assert load_inventory().names() == ["pi"]
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "nowhere"))
    empty = load_inventory()
    assert empty.path is None and empty.names() == []


def test_unknown_device_lists_the_known_ones(inventory_file):
    with pytest.raises(DeviceError) as info:
        load_inventory(inventory_file).open_target("jetson")
    message = str(info.value)
    assert "unknown device 'jetson'" in message and "local, rpi4, xeon" in message
    assert "\n" not in message and isinstance(info.value, HatprofError)


def test_unknown_device_without_inventory_says_where_it_looked(monkeypatch, tmp_path):
    monkeypatch.delenv(INVENTORY_ENV, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    with pytest.raises(DeviceError, match="no inventory found.*devices.toml"):
        load_inventory().get("rpi4")


@pytest.mark.parametrize("text, match", [
    ("[devices.a\n", "not valid TOML"),
    ("[other]\n", "unknown top-level key"),
    ('devices = 3\n', "must be a table"),
    ('[devices.a]\nagents = []\ntoken_env = "T"\n', "non-empty list"),
    ('[devices.a]\nagents = ["ftp://x"]\ntoken_env = "T"\n', "not like http"),
    ('[devices.a]\nagents = ["http://h:1/path"]\ntoken_env = "T"\n', "not like http"),
    ('[devices.a]\nagents = ["http://h:1", "http://h:1"]\ntoken_env = "T"\n', "listed twice"),
    ('[devices.a]\nagents = ["http://h:1"]\n', "exactly one of token_file and token_env"),
    ('[devices.a]\nagents = ["http://h:1"]\ntoken_env = "T"\ntoken_file = "f"\n', "exactly one"),
    ('[devices.a]\nagents = ["http://h:1"]\ntoken_env = "T"\nthreads = 0\n', "threads"),
    ('[devices.a]\nagents = ["http://h:1"]\ntoken_env = "T"\nthreads = "2"\n', "threads"),
    ('[devices.a]\nagents = ["http://h:1"]\ntoken_env = "T"\nthread = 2\n', "unknown key.*thread"),
    ('[devices."../x"]\nagents = ["http://h:1"]\ntoken_env = "T"\n', "device name"),
    ('[devices.local]\nagents = ["http://h:1"]\ntoken_env = "T"\n', "not 'local'"),
])
def test_invalid_inventories_are_one_line_errors(tmp_path, text, match):
    path = tmp_path / "devices.toml"
    path.write_text(text)
    with pytest.raises(DeviceError, match=match) as info:
        load_inventory(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_an_explicit_path_must_exist(tmp_path, monkeypatch):
    with pytest.raises(DeviceError, match="does not exist"):
        load_inventory(tmp_path / "missing.toml")
    monkeypatch.setenv(INVENTORY_ENV, str(tmp_path / "missing.toml"))
    with pytest.raises(DeviceError, match="does not exist"):
        load_inventory()


def test_token_problems_surface_when_the_device_is_used(inventory_file, monkeypatch):
    inventory = load_inventory(inventory_file)  # loading needs no token
    monkeypatch.delenv("XEON_TOKEN", raising=False)
    with pytest.raises(DeviceError, match="XEON_TOKEN is empty or unset"):
        inventory.open_target("xeon")
    monkeypatch.setenv("XEON_TOKEN", "short")
    with pytest.raises(DeviceError, match="shorter than 16"):
        inventory.open_target("xeon")
    (inventory_file.parent / "rpi4.token").unlink()
    with pytest.raises(DeviceError, match="cannot read token file"):
        inventory.open_target("rpi4")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_devices_list_and_check_commands(tmp_path, monkeypatch):
    monkeypatch.delenv(INVENTORY_ENV, raising=False)
    server = start_agent(tmp_path / "cache")
    try:
        (tmp_path / "good.token").write_text(TOKEN)
        (tmp_path / "bad.token").write_text("b" * 32)
        for name in ("good.token", "bad.token"):
            (tmp_path / name).chmod(0o600)  # the agent's tools refuse a token other users can read
        path = tmp_path / "devices.toml"
        path.write_text(
            f'[devices.good]\nagents = ["{server.url}"]\ntoken_file = "good.token"\n'
            f'[devices.wrongtoken]\nagents = ["{server.url}"]\ntoken_file = "bad.token"\n'
            f'[devices.down]\nagents = ["http://127.0.0.1:{_free_port()}"]\ntoken_file = "good.token"\n')
        runner = CliRunner()
        listed = runner.invoke(cli, ["devices", "list", "--inventory", str(path)])
        assert listed.exit_code == 0, listed.output
        assert "good:" in listed.output and server.url in listed.output and "local" in listed.output

        good = runner.invoke(cli, ["devices", "check", "good", "--inventory", str(path)])
        assert good.exit_code == 0, good.output
        assert "ok" in good.output and "onnxruntime" in good.output and "protocol 1" in good.output

        wrong = runner.invoke(cli, ["devices", "check", "wrongtoken", "--inventory", str(path)])
        assert wrong.exit_code == 1 and "not authenticated" in wrong.output

        down = runner.invoke(cli, ["devices", "check", "down", "--inventory", str(path)])
        assert down.exit_code == 1 and "unreachable" in down.output

        unknown = runner.invoke(cli, ["devices", "check", "nope", "--inventory", str(path)])
        assert unknown.exit_code == 1 and "unknown device 'nope'" in unknown.output
        assert "Traceback" not in unknown.output
    finally:
        server.close()
