"""The agent's artifact cache: content addressing, the size cap, LRU eviction, pinning."""
from __future__ import annotations

import hashlib
import io
import os

import pytest

from device_agents.store import BlobStore
from device_agents.wire import WireError
from profiler.errors import DeviceError

NAMES = ("manifest.json", "encoder.onnx", "cross_kv.onnx", "decoder_step.onnx")


def put(store: BlobStore, data: bytes, kind: str = "onnx") -> str:
    sha = hashlib.sha256(data).hexdigest()
    store.commit(store.receive(sha, io.BytesIO(data), len(data)), sha, kind)
    return sha


def test_receive_checks_the_digest_and_the_length(tmp_path):
    store = BlobStore(tmp_path, 1000)
    with pytest.raises(WireError) as info:
        store.receive("0" * 64, io.BytesIO(b"abc"), 3)
    assert info.value.code == "hash_mismatch"
    with pytest.raises(WireError) as info:
        store.receive(hashlib.sha256(b"abcd").hexdigest(), io.BytesIO(b"abc"), 4)
    assert info.value.code == "bad_request"
    assert not list((tmp_path / "tmp").iterdir())


def test_least_recently_used_blobs_are_evicted_to_stay_under_the_cap(tmp_path):
    store = BlobStore(tmp_path, 250)
    first, second = put(store, b"a" * 100), put(store, b"b" * 100)
    os.utime(tmp_path / "blobs" / f"{first}.onnx", (1, 1))
    os.utime(tmp_path / "blobs" / f"{second}.onnx", (2, 2))
    third = put(store, b"c" * 100)
    assert not store.has(first, "onnx") and store.has(second, "onnx") and store.has(third, "onnx")
    assert store.stats()["used_bytes"] <= 250


def test_artifacts_are_assembled_pinned_and_dropped_with_their_blobs(tmp_path):
    store = BlobStore(tmp_path, 700)
    files = {name: put(store, name.encode() * 10, "json" if name.endswith(".json") else "onnx")
             for name in NAMES}
    with store.artifact(files) as folder:
        assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == sorted(NAMES)
        assert (folder / "encoder.onnx").read_bytes() == b"encoder.onnx" * 10
        put(store, b"x" * 600)  # would evict everything, but the artifact is in use
        assert all(store.has(sha, "json" if n.endswith(".json") else "onnx") for n, sha in files.items())
    put(store, b"y" * 600)
    assert not folder.exists()  # its blobs were evicted, and the directory with them
    with pytest.raises(WireError) as info:
        with store.artifact(files):
            pass
    assert info.value.code == "missing_artifact" and len(info.value.details["missing"]) == 4


def test_a_blob_validated_as_one_kind_does_not_serve_as_another(tmp_path):
    store = BlobStore(tmp_path, 1000)
    sha = put(store, b"{}", "json")
    assert store.missing({"encoder.onnx": sha}) == {"encoder.onnx": sha}
    assert store.missing({"manifest.json": sha}) == {}


def test_leftovers_of_a_killed_agent_are_cleared_on_start(tmp_path):
    store = BlobStore(tmp_path, 1000)
    sha = put(store, b"keep")
    (tmp_path / "tmp" / "upload-partial").write_bytes(b"half")
    (tmp_path / "artifacts" / "stale").mkdir()
    with pytest.raises(DeviceError, match="used by another agent"):
        BlobStore(tmp_path, 1000)
    store.close()
    BlobStore(tmp_path, 1000).close()
    assert not list((tmp_path / "tmp").iterdir()) and not list((tmp_path / "artifacts").iterdir())
    assert store.has(sha, "onnx")
