"""A content-addressed cache of exported artifacts, so remeasuring never re-exports.

The key hashes everything an artifact depends on: the architecture, the design space,
the format, the weights (the initialisation seed, or a digest of a given model's state
dict) and the toolchain (`profiler.workload.versions`). An artifact is exported into a
temporary directory under the cache root and renamed into place, so a concurrent or
killed export never leaves a partial artifact under a key (only a `.tmp-*` directory,
which is never read and may be deleted).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from typing import TYPE_CHECKING

from profiler.errors import ArtifactError
from profiler.space import ArchConfig, DesignSpace
from profiler.workload import FORMATS, MANIFEST_NAME, versions

if TYPE_CHECKING:
    from profiler.model import SubTransformer

logger = logging.getLogger(__name__)

CACHE_ENV = "HATPROF_CACHE"


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The explicit `cache_dir`, else `$HATPROF_CACHE`, else `~/.cache/hatprof/artifacts`."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path.home() / ".cache" / "hatprof" / "artifacts"


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
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
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
    logger.debug("exported %s as %s into %s", arch.arch_id, fmt, final)
    return final
