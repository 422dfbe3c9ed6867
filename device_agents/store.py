"""The agent's content-addressed artifact cache: validated blobs, a size cap, LRU eviction.

A blob is stored as `blobs/<sha256>.<kind>` only after its bytes hashed to the name
and passed validation as `kind` (json, onnx, torchscript), so the kind in the name is
a promise. An artifact directory for the runner is assembled from blobs under
`artifacts/<key>/` with the allowed file names (hard links, so no extra space). No
name from a request ever becomes part of a path: digests are checked to be hex and
file names come from `wire.FILE_KINDS`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

from device_agents.wire import FILE_KINDS, WireError, is_sha256
from profiler.errors import DeviceError

try:  # one agent per cache directory; POSIX only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20


class BlobStore:
    """Validated, content-addressed files under `root`, at most `max_bytes` in all."""

    def __init__(self, root: str | Path, max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._blobs = self.root / "blobs"
        self._artifacts = self.root / "artifacts"
        self._tmp = self.root / "tmp"
        self._lock = threading.Lock()
        self._pinned: dict[str, int] = {}
        try:
            for folder in (self._blobs, self._artifacts, self._tmp):
                folder.mkdir(parents=True, exist_ok=True)
            self._lock_file = open(self.root / ".lock", "w")
        except OSError as exc:
            raise DeviceError(f"cannot use cache directory {self.root}: {exc.strerror}") from None
        if fcntl is not None:
            try:
                fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self._lock_file.close()
                raise DeviceError(f"cache directory {self.root} is used by another agent") from None
        # Leftovers of a killed agent: partial uploads, and artifact dirs rebuilt on demand.
        for folder in (self._tmp, self._artifacts):
            for entry in folder.iterdir():
                _remove(entry)

    def close(self) -> None:
        """Release the cache directory for another agent."""
        self._lock_file.close()

    def _blob(self, sha: str, kind: str) -> Path:
        return self._blobs / f"{sha}.{kind}"

    def has(self, sha: str, kind: str) -> bool:
        return self._blob(sha, kind).is_file()

    def stats(self) -> dict[str, int]:
        with self._lock:
            blobs = [p for p in self._blobs.iterdir() if p.is_file()]
            return {"blobs": len(blobs), "used_bytes": sum(p.stat().st_size for p in blobs),
                    "max_bytes": self.max_bytes}

    def receive(self, sha: str, stream: BinaryIO, length: int) -> Path:
        """Copy exactly `length` bytes from `stream` to a temporary file that hashes to `sha`.

        The caller validates the file and then calls `commit` (or `discard`).
        """
        fd, name = tempfile.mkstemp(dir=self._tmp, prefix="upload-")
        path = Path(name)
        digest = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as out:
                left = length
                while left:
                    chunk = stream.read(min(_CHUNK, left))
                    if not chunk:
                        raise WireError("bad_request", f"upload ended {left} bytes before its Content-Length")
                    digest.update(chunk)
                    out.write(chunk)
                    left -= len(chunk)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        if digest.hexdigest() != sha:
            path.unlink(missing_ok=True)
            raise WireError("hash_mismatch", "uploaded bytes do not hash to the SHA-256 in the URL",
                            actual=digest.hexdigest())
        return path

    def commit(self, tmp: Path, sha: str, kind: str) -> None:
        """Move a validated upload into the store, evicting least recently used blobs to fit."""
        size = tmp.stat().st_size
        with self._lock:
            self._evict(self.max_bytes - size)
            os.replace(tmp, self._blob(sha, kind))
        logger.info("stored %s blob %s (%d bytes)", kind, sha[:12], size)

    def discard(self, tmp: Path) -> None:
        tmp.unlink(missing_ok=True)

    def _evict(self, budget: int) -> None:
        blobs = sorted((p for p in self._blobs.iterdir() if p.is_file()), key=lambda p: p.stat().st_mtime)
        used = sum(p.stat().st_size for p in blobs)
        for blob in blobs:
            if used <= budget:
                break
            if blob.name.split(".")[0] in self._pinned:
                continue
            used -= blob.stat().st_size
            blob.unlink()
            logger.info("evicted blob %s", blob.name[:12])
            for artifact in self._artifacts.iterdir():
                if blob.name.split(".")[0] in _artifact_shas(artifact):
                    _remove(artifact)

    def missing(self, files: dict[str, str]) -> dict[str, str]:
        """The entries of `files` (name -> sha) whose blob, validated for that name, is absent."""
        return {name: sha for name, sha in files.items() if not self.has(sha, FILE_KINDS[name])}

    @contextmanager
    def artifact(self, files: dict[str, str]) -> Iterator[Path]:
        """An artifact directory holding `files`, kept from eviction while the context is open."""
        for name, sha in files.items():
            if name not in FILE_KINDS or not is_sha256(sha):
                raise WireError("bad_filename", f"not an artifact file: {name!r}")
        shas = sorted(files.values())
        with self._lock:
            missing = self.missing(files)
            if missing:
                raise WireError("missing_artifact", "upload these files first, then retry",
                                missing=[{"filename": n, "sha256": s} for n, s in sorted(missing.items())])
            for sha in shas:
                self._pinned[sha] = self._pinned.get(sha, 0) + 1
            try:
                folder = self._assemble(files)
            except BaseException:
                self._unpin(shas)
                raise
        try:
            yield folder
        finally:
            with self._lock:
                self._unpin(shas)

    def _unpin(self, shas: list[str]) -> None:
        for sha in shas:
            self._pinned[sha] -= 1
            if not self._pinned[sha]:
                del self._pinned[sha]

    def _assemble(self, files: dict[str, str]) -> Path:
        key = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
        folder = self._artifacts / key
        for name, sha in files.items():
            os.utime(self._blob(sha, FILE_KINDS[name]))  # least recently used goes first
        if folder.is_dir():
            return folder
        staging = Path(tempfile.mkdtemp(dir=self._tmp, prefix="artifact-"))
        for name, sha in files.items():
            blob = self._blob(sha, FILE_KINDS[name])
            try:
                os.link(blob, staging / name)
            except OSError:  # a file system without hard links
                shutil.copyfile(blob, staging / name)
        (staging / ".files.json").write_text(json.dumps(files, sort_keys=True))
        os.replace(staging, folder)
        return folder


def _artifact_shas(folder: Path) -> set[str]:
    try:
        return set(json.loads((folder / ".files.json").read_text()).values())
    except (OSError, ValueError):
        return set()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
