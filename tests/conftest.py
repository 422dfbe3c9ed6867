"""Shared test set-up: every test session uses its own artifact cache, never ~/.cache; the
ONNX artifact of the compact space's smallest SubTransformer, for tests that time one."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_artifact_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("HATPROF_CACHE", str(tmp_path_factory.mktemp("artifact-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def artifact(_isolated_artifact_cache):
    from profiler.artifacts import get_artifact
    from profiler.space import load_space

    space = load_space("compact")
    return get_artifact(space.smallest(), space, "onnx")
