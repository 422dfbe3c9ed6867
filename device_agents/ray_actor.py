"""The measuring actor of the Ray backend, which runs on device nodes.

Kept apart from `device_agents.ray_backend` (which imports the coordinator's fleet code)
so a device node imports only what the HTTP agent imports: no torch, pandas or
scikit-learn, and no ray import of its own (Ray loads this class on the node).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from device_agents.wire import artifact_files, is_sha256


class DeviceActor:
    """Runs on a device node: a pinned `LocalTarget` and the artifacts it was sent."""

    def __init__(self, threads: int) -> None:
        from profiler.target import LocalTarget

        self.target = LocalTarget(threads=threads)
        self.root = Path(tempfile.mkdtemp(prefix="hatprof-ray-"))

    def info(self) -> dict[str, Any]:
        return self.target.info()

    def has(self, key: str) -> bool:
        return is_sha256(key) and (self.root / key).is_dir()

    def load(self, key: str, fmt: str, files: dict[str, bytes]) -> None:
        """Write an artifact's files (allowed names only) under its content key."""
        if not is_sha256(key) or set(files) != set(artifact_files(fmt)):
            raise ValueError("not an artifact of this format")
        staging = Path(tempfile.mkdtemp(dir=self.root))
        for name, data in files.items():
            (staging / name).write_bytes(data)
        staging.rename(self.root / key)

    def measure_round(self, key: str, fmt: str, spec: dict, reference: str | None = None) -> dict:
        """One round of the artifact held under `key` (with the one under `reference` timed
        around every run, in duet mode)."""
        from profiler.protocol import RoundSpec

        if not self.has(key) or reference is not None and not self.has(reference):
            raise ValueError("no artifact held under that key")
        pair = self.target.measure_round(self.root / key, fmt, RoundSpec.from_dict(spec),
                                         None if reference is None else self.root / reference)
        return pair.to_dict()

    def close(self) -> None:
        self.target.close()
        shutil.rmtree(self.root, ignore_errors=True)
