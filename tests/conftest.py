"""Shared test set-up: every test session uses its own artifact cache, never ~/.cache."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_artifact_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("HATPROF_CACHE", str(tmp_path_factory.mktemp("artifact-cache")))
    yield
    mp.undo()
