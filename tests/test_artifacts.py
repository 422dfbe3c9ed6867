"""The content-addressed artifact cache: hits never re-export, misses never leave half artifacts."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from profiler import artifacts, export, workload
from profiler.errors import ArtifactError
from profiler.model import SubTransformer
from profiler.space import load_space
from profiler.workload import MANIFEST_NAME

SPACE = load_space("compact")
SMALL, LARGE = SPACE.smallest(), SPACE.largest()


@pytest.fixture
def export_calls(monkeypatch):
    """The formats of the real exports made, counted where every export goes through."""
    calls = []
    real = export.export_model

    def counting(model, fmt, out_dir, seed=None):
        calls.append(fmt)
        return real(model, fmt, out_dir, seed=seed)

    monkeypatch.setattr(export, "export_model", counting)
    return calls


def test_second_call_hits_the_cache(tmp_path, export_calls):
    first = artifacts.get_artifact(SMALL, SPACE, "onnx", cache_dir=tmp_path)
    second = artifacts.get_artifact(SMALL, SPACE, "onnx", cache_dir=tmp_path)
    assert first == second
    assert export_calls == ["onnx"]
    assert first.parent == tmp_path
    assert json.loads((first / MANIFEST_NAME).read_text())["arch_id"] == SMALL.arch_id
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary directory left
    other = artifacts.get_artifact(SMALL, SPACE, "torchscript", cache_dir=tmp_path)
    assert other != first
    assert export_calls == ["onnx", "torchscript"]


def test_key_depends_on_format_arch_seed_and_weights():
    keys = {
        artifacts.artifact_key(SMALL, SPACE, "onnx"),
        artifacts.artifact_key(SMALL, SPACE, "torchscript"),
        artifacts.artifact_key(LARGE, SPACE, "onnx"),
        artifacts.artifact_key(SMALL, SPACE, "onnx", seed=1),
        artifacts.artifact_key(SMALL, SPACE, "onnx", model=SubTransformer(SMALL, SPACE, seed=0)),
        artifacts.artifact_key(SMALL, load_space("wmt14.en-de"), "onnx"),
    }
    assert len(keys) == 6
    assert artifacts.artifact_key(SMALL, SPACE, "onnx") == artifacts.artifact_key(SMALL, SPACE, "onnx")
    same = [artifacts.artifact_key(SMALL, SPACE, "onnx", model=SubTransformer(SMALL, SPACE, seed=3))
            for _ in range(2)]
    assert same[0] == same[1]


def test_key_depends_on_toolchain(monkeypatch):
    before = artifacts.artifact_key(SMALL, SPACE, "onnx")
    monkeypatch.setattr(workload, "OPSET", 18)
    assert artifacts.artifact_key(SMALL, SPACE, "onnx") != before


def test_given_model_is_exported_once(tmp_path, export_calls):
    model = SubTransformer(SMALL, SPACE, seed=5)
    first = artifacts.get_artifact(SMALL, SPACE, "torchscript", cache_dir=tmp_path, model=model)
    assert artifacts.get_artifact(SMALL, SPACE, "torchscript", cache_dir=tmp_path, model=model) == first
    assert export_calls == ["torchscript"]
    manifest = json.loads((first / MANIFEST_NAME).read_text())
    assert manifest["seed"] is None
    assert manifest["weights_sha256"] == export.weights_digest(model)
    with pytest.raises(ArtifactError, match="architecture"):
        artifacts.get_artifact(LARGE, SPACE, "onnx", cache_dir=tmp_path, model=model)


def test_root_comes_from_argument_then_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("HATPROF_CACHE", str(tmp_path / "env"))
    assert artifacts.cache_root() == tmp_path / "env"
    assert artifacts.cache_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("HATPROF_CACHE")
    assert artifacts.cache_root().parts[-3:] == (".cache", "hatprof", "artifacts")


def test_failed_export_leaves_nothing_behind(tmp_path, monkeypatch):
    def half_export(arch, space, fmt, out_dir, seed=0):
        (out_dir / "encoder.onnx").write_bytes(b"partial")
        raise ArtifactError("killed mid-export")

    monkeypatch.setattr(export, "export_arch", half_export)
    with pytest.raises(ArtifactError, match="killed"):
        artifacts.get_artifact(SMALL, SPACE, "onnx", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_concurrent_export_keeps_the_first_finished(tmp_path, monkeypatch):
    final = tmp_path / artifacts.artifact_key(SMALL, SPACE, "onnx")
    real = export.export_arch

    def racing_export(arch, space, fmt, out_dir, seed=0):
        real(arch, space, fmt, final, seed=seed)  # another process finishes first
        (final / "winner").write_text("")
        return real(arch, space, fmt, out_dir, seed=seed)

    monkeypatch.setattr(export, "export_arch", racing_export)
    assert artifacts.get_artifact(SMALL, SPACE, "onnx", cache_dir=tmp_path) == final
    assert (final / "winner").exists()
    assert [p.name for p in tmp_path.iterdir()] == [final.name]


def test_directory_without_manifest_is_refused(tmp_path):
    (tmp_path / artifacts.artifact_key(SMALL, SPACE, "onnx")).mkdir()
    with pytest.raises(ArtifactError, match="no manifest"):
        artifacts.get_artifact(SMALL, SPACE, "onnx", cache_dir=tmp_path)


def _fake_export(arch, space, fmt, out_dir, seed=0):
    (out_dir / MANIFEST_NAME).write_text("{}")


_HOLD_A_TMP = """
import sys, time
from pathlib import Path
from profiler.artifacts import _new_tmp
tmp, lock = _new_tmp(Path(sys.argv[1]))
print(tmp.name, flush=True)
time.sleep(600)
"""


def test_tmp_folders_of_a_killed_exporter_are_removed_and_live_ones_kept(tmp_path, monkeypatch):
    import os
    import subprocess
    import sys
    import time

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    killed = subprocess.Popen([sys.executable, "-c", _HOLD_A_TMP, str(tmp_path)], stdout=subprocess.PIPE,
                              text=True, env=env)
    live = subprocess.Popen([sys.executable, "-c", _HOLD_A_TMP, str(tmp_path)], stdout=subprocess.PIPE,
                            text=True, env=env)
    try:
        killed_name, live_name = killed.stdout.readline().strip(), live.stdout.readline().strip()
        assert killed_name.startswith(".tmp-") and live_name.startswith(".tmp-")
        killed.kill()
        killed.wait()
        (tmp_path / ".tmp-old-unlocked").mkdir()  # left by a version without locks, long ago
        old = time.time() - 2 * 3600
        os.utime(tmp_path / ".tmp-old-unlocked", (old, old))
        (tmp_path / ".tmp-new-unlocked").mkdir()  # an exporter between mkdtemp and its lock
        monkeypatch.setattr(export, "export_arch", _fake_export)
        final = artifacts.get_artifact(SMALL, SPACE, "onnx", cache_dir=tmp_path)
        left = sorted(p.name for p in tmp_path.iterdir())
        assert left == sorted([final.name, live_name, f"{live_name}.lock", ".tmp-new-unlocked"])
    finally:
        for process in (killed, live):
            process.kill()
            process.wait()
            process.stdout.close()
    assert artifacts.clean_stale_tmp(tmp_path) == [tmp_path / live_name]  # its exporter is gone now
