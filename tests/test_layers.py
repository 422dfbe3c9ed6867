"""The packages' imports point down the layers only, and the device agent stays light.

    hatprof  >  nas  >  predictor, device_agents  >  profiler

Every module's imports are read with `ast` (function-level imports included, since lazy
imports are still dependencies), so a new upward edge fails here, with the module and
the line that adds it.
"""
from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: Each package and the packages of this project it may import (besides itself).
ALLOWED = {
    "profiler": set(),
    "predictor": {"profiler"},
    "device_agents": {"profiler"},
    "nas": {"profiler", "predictor", "device_agents"},
    "hatprof": {"profiler", "predictor", "device_agents", "nas"},
}
#: The agent's own modules: it runs on the device with onnxruntime, numpy and psutil alone.
AGENT_MODULES = ("agent", "sandbox", "validate", "wire", "store")
HEAVY = {"torch", "pandas", "sklearn", "click"}


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module) of every absolute import in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def modules_of(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def test_every_package_is_checked():
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")}
    assert packages == set(ALLOWED)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_down_the_layers(package):
    forbidden = set(ALLOWED) - ALLOWED[package] - {package}
    upward = [f"{path.relative_to(REPO)}:{line} imports {module}"
              for path in modules_of(package) for line, module in imports_of(path) if module in forbidden]
    assert upward == []


@pytest.mark.parametrize("module", AGENT_MODULES)
def test_the_agent_imports_no_heavy_library(module):
    path = REPO / "device_agents" / f"{module}.py"
    assert [f"{line}: {name}" for line, name in imports_of(path) if name in HEAVY] == []


def test_the_agent_and_its_worker_load_with_the_heavy_libraries_blocked():
    """What the agent loads from the profiler, transitively, at import time: none of them."""
    script = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {sorted(HEAVY)!r}:
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        import device_agents.agent, device_agents.sandbox, profiler.worker, profiler.target
        print(sorted(m for m in sys.modules if m.split(".")[0] in {sorted(HEAVY)!r}))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_walker_sees_function_level_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import os\n\ndef f():\n    from nas.search import run_search\n    import torch.nn\n")
    assert imports_of(source) == [(1, "os"), (4, "nas"), (5, "torch")]


def test_the_readme_layout_names_every_module():
    readme = (REPO / "README.md").read_text()
    layout = readme.split("\n## Layout\n", 1)[1].split("\nOne architecture", 1)[0]
    unnamed = []
    for package in ALLOWED:
        for path in modules_of(package):
            if path.name in ("__init__.py", "__main__.py"):
                continue
            name = path.relative_to(REPO / package).as_posix()
            if not re.search(rf"(?<![\w/]){re.escape(name)}\b", layout):
                unnamed.append(f"{package}/{name}")
    assert unnamed == []
