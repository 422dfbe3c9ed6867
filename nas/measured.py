"""Measuring searched SubTransformers for real, with the weights they inherit from the supernet.

Shared by `hatprof search --measure-device` and the end-to-end benchmark: the archs are
extracted from the supernet, exported and timed with the profiler's full protocol on a
device ('local' or an inventory name), and their rows go to a dataset CSV (a rerun resumes
it). Latencies come back as the statistic the predictor learnt, so that predicted and
measured latencies compare like with like.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from nas.supernet import SuperTransformer, extract_subtransformer
from profiler.protocol import TimingProtocol
from profiler.space import ArchConfig


def measure_inherited(net: SuperTransformer, archs: Sequence[ArchConfig], device: str, protocol: TimingProtocol,
                      csv_path: Path, statistic: str = "trimmed-mean",
                      cpus: set[int] | None = None) -> dict[str, float]:
    """Measured latency (ms, as `statistic`) of each arch, by arch id; rows already in
    `csv_path` from an earlier run are reused, not measured again."""
    from profiler.commands.measure import open_device, run_measure
    from profiler.dataset import read_dataset
    from profiler.measure import MeasureJob

    unique = {arch.arch_id: arch for arch in archs}
    models = {arch_id: extract_subtransformer(net, arch) for arch_id, arch in unique.items()}
    target, protocol = open_device(device, protocol, cpus)
    try:
        job = MeasureJob(space=net.space, protocol=protocol, models=models)
        run_measure(list(unique.values()), job, target, csv_path, csv_path.exists(), device)
    finally:
        target.close()
    rows = read_dataset(csv_path, statistic)
    return dict(zip(rows["arch_id"], rows["latency_ms"].astype(float)))
