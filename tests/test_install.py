"""The package as a user installs it: a wheel, in a fresh virtual environment outside the
source tree, offline.

- The full install runs a short `hatprof search` on the bundled checkpoint and dataset.
- The agent-only install sees nothing but the agent extra's dependencies (onnxruntime,
  numpy, psutil and what they need): `hatprof-agent` serves, `hatprof` says what is missing.

Dependencies come from the environment running the tests (a `.pth` line to its
site-packages, or links to just the agent's dependencies), so nothing is downloaded.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import urllib.request
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
_NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache",
                                     "demo-out", "out")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the source tree (so the shared tree gets no build/)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    shutil.copytree(REPO, source, ignore=_NOT_SOURCE)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(work / "dist"), str(source)], check=True, capture_output=True, timeout=300)
    (built,) = (work / "dist").glob("hatprof-*.whl")
    return built


def _venv(path: Path, wheel: Path, deps: list[Path]) -> Path:
    """A fresh venv with `wheel` installed (no dependencies), then `deps` put on its path."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
    python = path / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                    "-q", str(wheel)], check=True, capture_output=True, timeout=300)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "zz_test_deps.pth").write_text("".join(f"{d}\n" for d in deps))
    return path / "bin"


def _run(bin_dir: Path, *args: str, cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(bin_dir / args[0]), *args[1:]], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600, **kwargs)


def test_the_wheel_carries_the_bundled_data_and_runs_a_search(wheel, tmp_path):
    bin_dir = _venv(tmp_path / "venv", wheel, [Path(sysconfig.get_paths()["purelib"])])
    work = tmp_path / "work"
    work.mkdir()
    where = _run(bin_dir, "python", "-c", "import profiler, hatprof_datasets; from profiler.bundled import "
                 "bundled_path, DATASET; print(profiler.__file__); print(bundled_path(DATASET))", cwd=work)
    assert where.returncode == 0, where.stderr
    for line in where.stdout.splitlines():  # the installed copy, never the source tree
        assert Path(line).is_relative_to(tmp_path / "venv"), line
    data = Path(where.stdout.splitlines()[1])
    assert data.with_suffix(".raw.jsonl").name in {p.name for p in data.parent.iterdir()}

    trained = _run(bin_dir, "hatprof", "predictor", "train", "--data", str(data), "--out", "p.predictor", cwd=work)
    assert trained.returncode == 0, trained.stderr
    found = _run(bin_dir, "hatprof", "search", "--predictor", "p.predictor", "--latency-limit-ms", "15",
                 "--iterations", "1", "--population", "5", "--score-sentences", "4", "--bleu-sentences", "2",
                 "--out", "result.json", cwd=work)
    assert found.returncode == 0, found.stderr
    result = json.loads((work / "result.json").read_text())
    assert Path(result["supernet"]).is_relative_to(tmp_path / "venv")  # the bundled checkpoint
    winner = result["runs"][0]["winner"]
    assert winner["predicted_latency_ms"] <= 15 and result["space"] == "compact"
    assert "iteration 1/1" in found.stderr


def _agent_dependencies(into: Path) -> Path:
    """Links to the agent extra's dependencies and theirs, and nothing else."""
    todo, seen = ["onnxruntime", "numpy", "psutil"], set()
    while todo:
        name = re.split(r"[ ;<>=!~\[(]", todo.pop(), maxsplit=1)[0].lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        dist = metadata.distribution(name)
        todo += [r for r in dist.requires or [] if "extra ==" not in r]
        for top in {f.parts[0] for f in dist.files or [] if not f.parts[0].endswith((".dist-info", ".."))}:
            source = Path(dist.locate_file(top))
            if source.exists() and not (into / top).exists():
                (into / top).symlink_to(source)
    return into


def test_the_agent_install_needs_only_its_three_dependencies(wheel, tmp_path):
    deps = _agent_dependencies(tmp_path / "agent-deps")  # mkdir by the fixture below
    bin_dir = _venv(tmp_path / "venv", wheel, [deps])
    work = tmp_path / "work"
    work.mkdir()
    heavy = _run(bin_dir, "python", "-c", "import importlib.util as u; print([m for m in "
                 "('torch', 'pandas', 'sklearn', 'click') if u.find_spec(m)])", cwd=work)
    assert heavy.stdout.strip() == "[]", heavy.stderr

    cli = _run(bin_dir, "hatprof", "--help", cwd=work)
    assert cli.returncode == 1 and "workstation extra" in cli.stderr and "Traceback" not in cli.stderr

    token = _run(bin_dir, "hatprof-agent", "token", "--out", "dev.token", cwd=work)
    assert token.returncode == 0, token.stderr
    assert (work / "dev.token").stat().st_mode & 0o777 == 0o600
    server = subprocess.Popen([str(bin_dir / "hatprof-agent"), "serve", "--host", "127.0.0.1", "--port", "0",
                               "--token-file", "dev.token", "--cache-dir", str(tmp_path / "cache")], cwd=work,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        assert "listening on http://127.0.0.1:" in line, server.stderr.read() if server.poll() is not None else line
        url = line.split("listening on ")[1].strip()
        with urllib.request.urlopen(f"{url}/v1/health", timeout=30) as reply:
            assert json.load(reply)["status"] == "ok"
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0


@pytest.fixture(autouse=True)
def _agent_deps_dir(tmp_path):
    (tmp_path / "agent-deps").mkdir()
