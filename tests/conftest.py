"""Shared test set-up: every test session uses its own artifact cache, never ~/.cache, and
every test starts without a machine's canary history (so no test's rounds wait for a fast
host unless it sets that up); the ONNX artifact of the compact space's smallest
SubTransformer, for tests that time one."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_artifact_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("HATPROF_CACHE", str(tmp_path_factory.mktemp("artifact-cache")))
    yield
    mp.undo()


@pytest.fixture(autouse=True)
def _no_canary_history(_isolated_artifact_cache):
    shutil.rmtree(Path(os.environ["HATPROF_CACHE"]) / "canary", ignore_errors=True)


@pytest.fixture(scope="session")
def artifact(_isolated_artifact_cache):
    from profiler.artifacts import get_artifact
    from profiler.space import load_space

    space = load_space("compact")
    return get_artifact(space.smallest(), space, "onnx")
