"""The Ray backend: devices join a Ray cluster and measurement is placed by device name.

On each device (with hatprof's agent dependencies and ray installed)::

    ray start --address HEAD:6379 --resources '{"rpi4": 1}'

and on the workstation::

    hatprof collect --backend ray --address HEAD:6379 --devices rpi4,xeon ...

Every unit of a device's custom resource hosts one measuring actor (a
`profiler.target.LocalTarget` on that node), so several nodes advertising `rpi4` share
rpi4's work exactly as several HTTP agents of one device do: `RayTarget` has the
target interface and `device_agents.fleet.collect` runs unchanged. An actor that dies
with its node surfaces as `AgentUnavailable`, so its work moves to the device's other
actors. Artifacts travel through Ray's object store, once per actor.

Ray clusters trust their members (whoever reaches the cluster runs code on every
node); use the token-protected HTTP agents for devices on networks you do not control.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from device_agents.client import AgentUnavailable
from device_agents.fleet import FleetDevice
from device_agents.ray_actor import DeviceActor
from device_agents.wire import artifact_files
from profiler.errors import DeviceError
from profiler.protocol import RoundSpec, TimingProtocol

logger = logging.getLogger(__name__)


def _ray():
    try:
        import ray
    except ImportError:
        raise DeviceError("the Ray backend needs ray: pip install 'ray>=2.9'") from None
    return ray


class RayTarget:
    """One device actor as a measuring target (the interface of `LocalTarget`)."""

    def __init__(self, actor: Any, name: str, threads: int, timeout_s: float = 3900.0) -> None:
        self.actor, self.name, self.threads, self.timeout_s = actor, name, threads, timeout_s
        self._info: dict[str, Any] | None = None
        self._refs: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"RayTarget({self.name!r}, {self.actor})"

    def _get(self, ref: Any) -> Any:
        ray = _ray()
        try:
            return ray.get(ref, timeout=self.timeout_s)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError,
                ray.exceptions.ObjectLostError) as exc:
            raise AgentUnavailable(f"Ray actor of device {self.name!r}: {type(exc).__name__}") from None
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if getattr(exc, "cause", None) is not None else exc
            raise DeviceError(f"device {self.name!r} (Ray): {str(cause).splitlines()[0]}") from None

    def info(self) -> dict[str, Any]:
        if self._info is None:
            self._info = self._get(self.actor.info.remote())
        return self._info

    def _artifact(self, artifact_dir: Path, fmt: str) -> tuple[str, dict[str, bytes]]:
        files = {name: (artifact_dir / name).read_bytes() for name in artifact_files(fmt)}
        digests = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
        return hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest(), files

    def _sent(self, artifact_dir: Path, fmt: str) -> str:
        """The content key of an artifact the actor holds, sending its files first if it does not."""
        try:
            key, files = self._artifact(Path(artifact_dir), fmt)
        except OSError as exc:
            raise DeviceError(f"artifact {artifact_dir} cannot be read: {exc.strerror}") from None
        if not self._get(self.actor.has.remote(key)):
            if key not in self._refs:
                self._refs[key] = _ray().put(files)
            self._get(self.actor.load.remote(key, fmt, self._refs[key]))
        return key

    def measure_round(self, artifact_dir: Path, fmt: str, spec: RoundSpec, reference_dir: Path | None = None):
        """One round of `spec` on the device (in duet mode, with the reference artifact timed
        around every run)."""
        from profiler.target import RoundPair

        key = self._sent(artifact_dir, fmt)
        reference = None if reference_dir is None else self._sent(reference_dir, fmt)
        return RoundPair.from_dict(self._get(self.actor.measure_round.remote(key, fmt, spec.to_dict(), reference)))

    def close(self) -> None:
        try:
            self._get(self.actor.close.remote())
        except DeviceError:
            logger.debug("Ray actor of %s was already gone", self.name)
        self._refs.clear()


def ray_fleet(names: list[str], protocol: TimingProtocol, address: str | None = None) -> list[FleetDevice]:
    """Connect to the cluster at `address` (unless connected) and start one actor per unit of
    each device's resource; the devices for `device_agents.fleet.collect`."""
    ray = _ray()
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise DeviceError(f"cannot join the Ray cluster at {address}: {exc}") from None
    resources = ray.cluster_resources()
    actor_class = ray.remote(DeviceActor)
    devices = []
    for name in names:
        units = int(resources.get(name, 0))
        if units < 1:
            known = sorted(k for k in resources if not k.startswith("node:") and k not in
                           ("CPU", "GPU", "memory", "object_store_memory"))
            raise DeviceError(f"no Ray node advertises the resource {name!r} (custom resources: "
                              f"{', '.join(known) or 'none'}); start the device with "
                              f"ray start --resources '{{\"{name}\": 1}}'")
        actors = [actor_class.options(resources={name: 1}, num_cpus=0).remote(protocol.threads)
                  for _ in range(units)]
        devices.append(FleetDevice(name, [RayTarget(a, name, protocol.threads) for a in actors], protocol))
    return devices
