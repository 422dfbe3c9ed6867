"""The data bundled with hatprof: measured latency datasets, a supernet checkpoint.

One place that knows where they are, so the app, the libraries' defaults and the
benchmarks all find the same files.
"""
from __future__ import annotations

from pathlib import Path

from profiler.errors import HatprofError

_ROOT = Path(__file__).resolve().parents[1] / "datasets"

#: The compact-space dataset measured on the development VM (trimmed mean, raw samples kept).
DATASET = "compact_local.csv"
#: The same architectures exported to TorchScript: the transfer benchmark's target device.
TORCHSCRIPT_DATASET = "compact_torchscript.csv"
#: The compact SuperTransformer trained on the synthetic translation task.
CHECKPOINT = "supernet_compact.pt"


def bundled_path(name: str) -> Path:
    """The path of the bundled file `name` (e.g. `DATASET`)."""
    path = _ROOT / name
    if not path.is_file():
        raise HatprofError(f"bundled file {name!r} is missing from this installation ({path})")
    return path
