"""The data bundled with hatprof: measured latency datasets, a supernet checkpoint.

One place that knows where they are, so the app, the libraries' defaults and the
benchmarks all find the same files. They live in `datasets/` at the top of the repository
and install as the data-only package `hatprof_datasets` (setup.cfg maps one to the other,
for wheels and editable installs alike). It has no `__init__.py` (a `datasets/__init__.py`
would make the folder importable as `datasets`, shadowing Hugging Face's), so it is found
through the import system's view of that namespace package rather than
`importlib.resources.files`: in an editable install its path also lists setuptools'
path-hook placeholder, which Python 3.11's resource reader rejects.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from profiler.errors import HatprofError

PACKAGE = "hatprof_datasets"
#: The compact-space dataset measured on the development VM (trimmed mean, raw samples kept).
DATASET = "compact_local.csv"
#: The same architectures exported to TorchScript: the transfer benchmark's target device.
TORCHSCRIPT_DATASET = "compact_torchscript.csv"
#: The compact SuperTransformer trained on the synthetic translation task.
CHECKPOINT = "supernet_compact.pt"


def bundled_path(name: str) -> Path:
    """The path of the bundled file `name` (e.g. `DATASET`); its sidecars lie beside it."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.submodule_search_locations is None:
        raise HatprofError(f"the bundled data ({PACKAGE}) is not installed; reinstall hatprof")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / name
        if path.is_file():
            return path
    raise HatprofError(f"bundled file {name!r} is missing from this installation")
