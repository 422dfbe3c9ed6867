"""A content-addressed cache of exported artifacts, so remeasuring never re-exports.

The key hashes everything an artifact depends on: the architecture, the design space,
the format, the weights (the initialisation seed, or a digest of a given model's state
dict) and the toolchain (`profiler.workload.versions`). An artifact is exported into a
temporary directory under the cache root and renamed into place, so a concurrent or
killed export never leaves a partial artifact under a key. The exporting process holds a
lock on `<tmp>.lock` beside its `.tmp-*` directory; the next export removes the `.tmp-*`
directories whose lock is free (their exporter is gone), never one still being written.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING

from profiler.errors import ArtifactError
from profiler.space import ArchConfig, DesignSpace
from profiler.workload import FORMATS, MANIFEST_NAME, versions

if TYPE_CHECKING:
    from profiler.model import SubTransformer

try:  # the lock that tells a live export's temporary directory from a dead one's; POSIX only
    import fcntl
except ImportError:  # pragma: no cover - Windows: only the age rule below applies
    fcntl = None

logger = logging.getLogger(__name__)

CACHE_ENV = "HATPROF_CACHE"
_TMP_PREFIX = ".tmp-"
#: A `.tmp-*` directory without a lock this old is a leftover (an export takes minutes at most).
_STALE_UNLOCKED_S = 3600.0


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The explicit `cache_dir`, else `$HATPROF_CACHE`, else `~/.cache/hatprof/artifacts`."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path.home() / ".cache" / "hatprof" / "artifacts"


def _new_tmp(root: Path) -> tuple[Path, IO[str]]:
    """A fresh temporary directory under `root`, and the open, locked file that says it is in use."""
    tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=root))
    lock = open(f"{tmp}.lock", "w")
    if fcntl is not None:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    return tmp, lock


def _abandoned(tmp: Path) -> bool:
    """Whether no live process is exporting into `tmp`."""
    try:
        lock = open(f"{tmp}.lock", "r+")
    except FileNotFoundError:  # no lock (yet): trust only age
        try:
            return time.time() - tmp.stat().st_mtime > _STALE_UNLOCKED_S
        except OSError:
            return False
    with lock:
        if fcntl is None:
            return time.time() - tmp.stat().st_mtime > _STALE_UNLOCKED_S
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # its exporter holds the lock
        return True


def clean_stale_tmp(root: str | Path) -> list[Path]:
    """Remove the `.tmp-*` directories (and their lock files) that killed exports left in `root`."""
    removed = []
    for tmp in Path(root).glob(f"{_TMP_PREFIX}*"):
        if tmp.suffix == ".lock" or not tmp.is_dir() or not _abandoned(tmp):
            continue
        shutil.rmtree(tmp, ignore_errors=True)
        Path(f"{tmp}.lock").unlink(missing_ok=True)
        logger.info("removed %s, left by an export that was killed", tmp)
        removed.append(tmp)
    return removed


def artifact_key(arch: ArchConfig, space: DesignSpace, fmt: str, seed: int = 0,
                 model: SubTransformer | None = None) -> str:
    """SHA-256 (hex) naming the artifact of `arch` in `fmt` with the given weights."""
    if model is None:
        weights = f"seed:{seed}"
    else:
        from profiler.export import weights_digest

        weights = f"sha256:{weights_digest(model)}"
    payload = {"arch": arch.canonical_json(), "space": space.to_dict(), "format": fmt,
               "weights": weights, "versions": versions()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def get_artifact(arch: ArchConfig, space: DesignSpace, fmt: str, cache_dir: str | Path | None = None,
                 seed: int = 0, model: SubTransformer | None = None) -> Path:
    """The cached artifact directory of `arch` in `fmt`, exported only on a miss.

    Weights come from `model` when given (it must be built from `arch`), else from
    `SubTransformer(arch, space, seed)`.
    """
    if fmt not in FORMATS:
        raise ArtifactError(f"unknown export format {fmt!r} (known: {', '.join(FORMATS)})")
    if model is not None and model.arch != arch:
        raise ArtifactError(f"the given model is architecture {model.arch.arch_id}, not {arch.arch_id}")
    root = cache_root(cache_dir)
    final = root / artifact_key(arch, space, fmt, seed, model)
    if final.is_dir():
        if not (final / MANIFEST_NAME).is_file():
            raise ArtifactError(f"cached artifact {final} has no manifest: delete the directory")
        logger.debug("artifact cache hit %s", final)
        return final
    from profiler import export  # torch is loaded only when something must be exported

    try:
        root.mkdir(parents=True, exist_ok=True)
        clean_stale_tmp(root)
        tmp, lock = _new_tmp(root)
    except OSError as exc:
        raise ArtifactError(f"cannot write to artifact cache {root}: {exc.strerror}") from None
    try:
        if model is None:
            export.export_arch(arch, space, fmt, tmp, seed=seed)
        else:
            export.export_model(model, fmt, tmp)
        try:
            os.rename(tmp, final)
        except OSError as exc:
            if not (final / MANIFEST_NAME).is_file():
                raise ArtifactError(f"cannot move artifact into {final}: {exc.strerror}") from None
            logger.debug("artifact %s was exported concurrently; keeping that one", final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        Path(lock.name).unlink(missing_ok=True)
        lock.close()
    logger.debug("exported %s as %s into %s", arch.arch_id, fmt, final)
    return final
