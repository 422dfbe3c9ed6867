"""The device inventory: named devices, their agents, token sources and measurement settings.

Found through an explicit path, else `$HATPROF_DEVICES`, else
`$XDG_CONFIG_HOME/hatprof/devices.toml` (`~/.config/hatprof/devices.toml`). Example::

    [devices.rpi4]
    agents = ["http://127.0.0.1:8765", "http://127.0.0.1:8766"]
    token_file = "rpi4.token"        # relative to this file; or token_env = "VAR"
    threads = 1

Optional per device: `timeout_s` (ordinary requests, default 60), `measure_timeout_s`
(one measurement, default 3900, above the agent's default time limit) and `retries`
(default 5). Tokens are read only when a device is used.
"""
from __future__ import annotations

import logging
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device_agents.client import AgentClient, PoolTarget, RemoteTarget
from device_agents.wire import read_token
from profiler.errors import DeviceError

logger = logging.getLogger(__name__)

INVENTORY_ENV = "HATPROF_DEVICES"
#: Device names become file names (`DIR/<device>.csv`), so they are restricted.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_RESERVED = {"local"}
_KEYS = {"agents", "token_file", "token_env", "threads", "timeout_s", "measure_timeout_s", "retries"}


def default_path() -> Path:
    """Where the inventory is looked for when no path is given."""
    if os.environ.get(INVENTORY_ENV):
        return Path(os.environ[INVENTORY_ENV])
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config / "hatprof" / "devices.toml"


@dataclass(frozen=True)
class DeviceSpec:
    """One named device: its agents and how to reach and use them."""

    name: str
    agents: tuple[str, ...]
    token_file: Path | None = None
    token_env: str | None = None
    threads: int = 1
    timeout_s: float = 60.0
    measure_timeout_s: float = 3900.0
    retries: int = 5

    def token(self) -> str:
        if self.token_file is not None:
            return read_token(self.token_file)
        return read_token(token_env=self.token_env)

    def clients(self) -> list[AgentClient]:
        token = self.token()
        return [AgentClient(url, token, **self._client_options()) for url in self.agents]

    def _client_options(self) -> dict[str, Any]:
        return {"timeout_s": self.timeout_s, "measure_timeout_s": self.measure_timeout_s,
                "retries": self.retries}

    def targets(self, threads: int | None = None) -> list[RemoteTarget]:
        """One `RemoteTarget` per agent (the fleet measures on them in parallel).

        `threads` overrides the inventory's thread count.
        """
        token = self.token()
        threads = self.threads if threads is None else threads
        return [RemoteTarget(url, token, threads=threads, name=self.name, **self._client_options())
                for url in self.agents]


def _number(device: str, data: dict[str, Any], key: str, kind: type, default: Any, lowest: float) -> Any:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int) \
            or value < lowest:
        raise DeviceError(f"device {device!r}: {key} must be a number of at least {lowest}, got {value!r}")
    return kind(value)


def _device(name: str, data: Any, base: Path) -> DeviceSpec:
    if not _NAME.fullmatch(name) or name in _RESERVED:
        raise DeviceError(f"device name {name!r} must be letters, digits, '_', '.', '-' (and not 'local')")
    if not isinstance(data, dict):
        raise DeviceError(f"device {name!r} must be a table")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise DeviceError(f"device {name!r}: unknown key(s) {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(_KEYS))})")
    agents = data.get("agents")
    if isinstance(agents, str):
        agents = [agents]
    if not isinstance(agents, list) or not agents or not all(isinstance(a, str) for a in agents):
        raise DeviceError(f"device {name!r}: agents must be a non-empty list of addresses")
    for url in agents:
        AgentClient(url, "")  # validates the address
    if len(set(agents)) != len(agents):
        raise DeviceError(f"device {name!r}: an agent is listed twice")
    token_file, token_env = data.get("token_file"), data.get("token_env")
    if (token_file is None) == (token_env is None):
        raise DeviceError(f"device {name!r}: give exactly one of token_file and token_env")
    if token_file is not None and not isinstance(token_file, str):
        raise DeviceError(f"device {name!r}: token_file must be a path")
    if token_env is not None and not isinstance(token_env, str):
        raise DeviceError(f"device {name!r}: token_env must be a variable name")
    return DeviceSpec(
        name=name, agents=tuple(a.rstrip("/") for a in agents),
        token_file=(base / token_file) if token_file is not None else None, token_env=token_env,
        threads=_number(name, data, "threads", int, 1, 1),
        timeout_s=_number(name, data, "timeout_s", float, 60.0, 0.001),
        measure_timeout_s=_number(name, data, "measure_timeout_s", float, 3900.0, 0.001),
        retries=_number(name, data, "retries", int, 5, 0),
    )


@dataclass
class Inventory:
    """The named devices of one inventory file (empty when there is none)."""

    path: Path | None
    devices: dict[str, DeviceSpec] = field(default_factory=dict)

    def names(self) -> list[str]:
        return sorted(self.devices)

    def get(self, name: str) -> DeviceSpec:
        if name not in self.devices:
            known = ", ".join(["local", *self.names()])
            where = f"inventory {self.path}" if self.path else \
                f"no inventory found (looked for {default_path()}; set {INVENTORY_ENV} or pass --inventory)"
            raise DeviceError(f"unknown device {name!r} (known: {known}; {where})")
        return self.devices[name]

    def open_target(self, name: str, threads: int | None = None) -> RemoteTarget | PoolTarget:
        """The target measuring on device `name`: its agent, or a pool over its agents.

        It times with the inventory's `threads` for the device unless `threads` is given.
        """
        targets = self.get(name).targets(threads)
        return targets[0] if len(targets) == 1 else PoolTarget(name, targets)


def load_inventory(path: str | Path | None = None) -> Inventory:
    """The inventory at `path`, else at `default_path()`; an empty one if no file is there.

    A path given explicitly (or through `$HATPROF_DEVICES`) must exist.
    """
    explicit = path is not None or bool(os.environ.get(INVENTORY_ENV))
    path = Path(path) if path is not None else default_path()
    if not path.is_file():
        if explicit:
            raise DeviceError(f"device inventory {path} does not exist")
        logger.debug("no device inventory at %s", path)
        return Inventory(None)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise DeviceError(f"cannot read device inventory {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise DeviceError(f"device inventory {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"devices"})
    if unknown:
        raise DeviceError(f"device inventory {path}: unknown top-level key(s) {', '.join(unknown)}")
    devices = data.get("devices", {})
    if not isinstance(devices, dict):
        raise DeviceError(f"device inventory {path}: 'devices' must be a table of devices")
    base = path.resolve().parent
    try:
        return Inventory(path, {name: _device(name, spec, base) for name, spec in devices.items()})
    except DeviceError as exc:
        raise DeviceError(f"device inventory {path}: {exc}") from None
