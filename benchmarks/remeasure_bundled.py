"""Remeasure the bundled dataset's architectures with the default protocol, in one process or in
shards pinned one per physical core, checked against measurements made alone.

1. The architectures: the `arch` column of `--archs-from` (the bundled dataset's 500).
2. All of them are exported first (a process pool), so no export runs beside a timing.
3. They are split round-robin over `--shards` `hatprof measure` processes, each confined
   (export, Python and runtime alike) to one CPU of its own physical core; the core of CPU 0
   is left to the system. A shard is its own dataset file, written row by row.
4. The shards are merged into `--out` and its raw sidecar: one header, every setting
   checked equal, rows in the order of `--archs-from`.
5. `--check` of the architectures are measured again alone, nothing else running, on the
   first shard's CPU: how far the labels measured side by side lie from those measured alone
   says whether the shards disturbed each other.
Writes `results/remeasure.json` (the machine, the shards, the merged dataset's quality, the check).
On a 16-vCPU Xeon server, 10 shards disturbed each other: 4 labels measured again alone were
13% apart from their side-by-side ones (median; `results/remeasure_server.json`). Hence one
shard by default: more are worth it only where the check says they agree. On the 2-core
development VM one shard measured 264 rows in 74 minutes before the host slowed down by about
20% and the run was stopped (`results/remeasure_vm.json`).

    PYTHONPATH=. .venv/bin/python benchmarks/remeasure_bundled.py --out datasets/compact_local.csv --work /tmp/remeasure
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from profiler.bundled import DATASET, bundled_path  # noqa: E402
from profiler.dataset import SETTINGS, raw_path_for  # noqa: E402
from profiler.files import write_atomically  # noqa: E402
from profiler.metadata import cpu_model, current_affinity  # noqa: E402
from profiler.space import ArchConfig, load_space  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SPACE = "compact"


def physical_cores() -> list[list[int]]:
    """The CPUs this process may use, grouped by physical core (SMT siblings together)."""
    cores: dict[tuple[str, str], list[int]] = {}
    for cpu in sorted(current_affinity()):
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            key = ((topology / "physical_package_id").read_text().strip(), (topology / "core_id").read_text().strip())
        except OSError:
            key = ("?", str(cpu))
        cores.setdefault(key, []).append(cpu)
    return sorted(cores.values())


def shard_cpus(shards: int) -> list[int]:
    """One CPU from each of `shards` physical cores, spread out, avoiding CPU 0's core when others exist."""
    cores = physical_cores()
    usable = [c for c in cores if 0 not in c] or cores
    step = max(1, len(usable) // shards)
    return [core[0] for core in usable[::step][:shards]]


def _export(arch_json: str, cache: str) -> None:
    import torch

    from profiler.artifacts import get_artifact

    torch.set_num_threads(1)
    get_artifact(ArchConfig.from_json(arch_json), load_space(SPACE), "onnx", cache_dir=cache)


def export_all(archs: list[str], cache: Path, workers: int) -> float:
    """Export every architecture into the cache `hatprof measure` reads; the seconds it took."""
    start = time.monotonic()
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_export, archs, [str(cache)] * len(archs), chunksize=4))
    return time.monotonic() - start


def measure_command(archs_file: Path, out: Path, cpu: int, cache: Path) -> list[str]:
    return [sys.executable, "-m", "hatprof", "measure", "--device", "local", "--space", SPACE,
            "--archs", str(archs_file), "--out", str(out), "--cpus", str(cpu), "--cache-dir", str(cache),
            *(["--resume"] if out.exists() else [])]


def run_confined(commands: list[tuple[list[str], int, Path]], deadline: float) -> list[int]:
    """Run each (command, cpu, log) at once, the whole process confined to its CPU; interrupt at `deadline`."""
    processes = []
    for command, cpu, log in commands:
        with open(log, "a") as log_file:
            processes.append(subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                              preexec_fn=lambda cpu=cpu: os.sched_setaffinity(0, {cpu})))
    for process in processes:
        try:
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGINT)  # the rows written so far stay; a rerun resumes
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return [p.returncode for p in processes]


def merge(shards: list[Path], order: list[str], out: Path) -> pd.DataFrame:
    """One dataset from the shard files: settings checked equal, rows and raw lines in `order`."""
    present = [s for s in shards if s.exists()]
    if not present:
        raise SystemExit("no shard wrote a row")
    headers = {s.read_text().splitlines()[0] for s in present}
    if len(headers) != 1:
        raise SystemExit(f"shards have different columns: {sorted(headers)}")
    frames = [pd.read_csv(s, dtype=str, keep_default_na=False) for s in present]
    rows = pd.concat(frames, ignore_index=True)
    differing = [name for name in SETTINGS if rows[name].nunique() > 1]
    if differing:
        raise SystemExit(f"shards were measured with different settings: {differing}")
    header = next(iter(headers))
    rank = {arch_id: i for i, arch_id in enumerate(order)}
    column = next(csv.reader([header])).index("arch_id")
    body = sorted((line for s in present for line in s.read_text().splitlines()[1:] if line.strip()),
                  key=lambda line: rank[next(csv.reader([line]))[column]])
    raw = sorted((line for s in present for line in raw_path_for(s).read_text().splitlines() if line.strip()),
                 key=lambda line: rank[json.loads(line)["arch_id"]])
    write_atomically(raw_path_for(out), "".join(line + "\n" for line in raw))
    write_atomically(out, "".join(line + "\n" for line in [header, *body]))
    return pd.read_csv(out)


def check_alone(df: pd.DataFrame, count: int, cpu: int, cache: Path, work: Path, deadline: float) -> dict:
    """Measure `count` of the merged rows again, alone; compare their labels."""
    picked = df.iloc[:: max(1, len(df) // count)].head(count)
    archs_file = work / "check.jsonl"
    archs_file.write_text("".join(a + "\n" for a in picked["arch"]))
    out = work / "check.csv"
    run_confined([(measure_command(archs_file, out, cpu, cache), cpu, work / "check.log")], deadline)
    if not out.exists():
        return {"rows": 0}
    alone = pd.read_csv(out).set_index("arch_id")
    together = picked.set_index("arch_id").loc[alone.index]
    ratio = together["latency_ms"] / alone["latency_ms"] - 1
    within = (ratio.abs() <= together["interval"] + alone["interval"])
    return {"rows": len(alone), "cpu": cpu,
            "relative_difference": {"median_abs": float(ratio.abs().median()), "max_abs": float(ratio.abs().max()),
                                    "mean": float(ratio.mean())},
            "within_both_intervals": int(within.sum()),
            "alone_unstable": int(alone["unstable"].sum()),
            "pairs": [{"arch_id": a, "together_ms": float(together.loc[a, "latency_ms"]),
                       "alone_ms": float(alone.loc[a, "latency_ms"])} for a in alone.index]}


def quality(df: pd.DataFrame) -> dict:
    return {"rows": len(df), "unstable": int(df["unstable"].sum()),
            "converged": int(df["converged"].sum()),
            "rounds_used": df["rounds_used"].value_counts().sort_index().to_dict(),
            "rounds_discarded_total": int(df["rounds_discarded"].sum()),
            "interval_median": float(df["interval"].median()),
            "interval_p90": float(df["interval"].quantile(0.9)),
            "device_s_per_arch": float(df["device_s"].mean()),
            "latency_ms_range": [float(df["latency_ms"].min()), float(df["latency_ms"].max())]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs-from", type=Path, default=bundled_path(DATASET))
    parser.add_argument("--out", type=Path, required=True, help="merged latency CSV (raw sidecar beside it)")
    parser.add_argument("--work", type=Path, required=True, help="folder for the shards, logs and cache")
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--limit", type=int, default=None, help="only the first N architectures (a try run)")
    parser.add_argument("--check", type=int, default=20, help="architectures measured again alone")
    parser.add_argument("--seconds", type=float, default=None, help="stop the shards after this long")
    parser.add_argument("--check-seconds", type=float, default=180.0, help="stop the check after this long")
    parser.add_argument("--results", type=Path, default=RESULTS / "remeasure.json")
    args = parser.parse_args()
    start = time.monotonic()
    source = pd.read_csv(args.archs_from, usecols=["arch_id", "arch"]).head(args.limit)
    order, archs = list(source["arch_id"]), list(source["arch"])
    cpus = shard_cpus(args.shards)
    args.work.mkdir(parents=True, exist_ok=True)
    cache = args.work / "cache"
    result: dict = {"machine": {"cpu_model": cpu_model(), "cpus": os.cpu_count(), "cores": physical_cores(),
                                "host": os.uname().nodename},
                    "load_before": os.getloadavg(), "shard_cpus": cpus, "archs": len(archs)}
    result["export_s"] = export_all(archs, cache, workers=len(current_affinity()))
    print(f"exported {len(archs)} in {result['export_s']:.0f} s; shards on CPUs {cpus}", file=sys.stderr, flush=True)
    shards = []
    for i, cpu in enumerate(cpus):
        shard_archs = args.work / f"shard{i}.jsonl"
        shard_archs.write_text("".join(a + "\n" for a in archs[i::len(cpus)]))
        shards.append((shard_archs, args.work / f"shard{i}.csv", cpu))
    timing_start = time.monotonic()
    result["shard_exit_codes"] = run_confined(
        [(measure_command(a, out, cpu, cache), cpu, out.with_suffix(".log")) for a, out, cpu in shards],
        timing_start + (args.seconds or float("inf")))
    result["measure_wall_s"] = time.monotonic() - timing_start
    merged = merge([out for _, out, _ in shards], order, args.out)
    result["dataset"] = quality(merged)
    print(json.dumps(result["dataset"]), file=sys.stderr, flush=True)
    if args.check:
        result["check_alone"] = check_alone(merged, args.check, cpus[0], cache, args.work,
                                            time.monotonic() + args.check_seconds)
    result["load_after"] = os.getloadavg()
    result["wall_s"] = time.monotonic() - start
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "check_alone"} | {
        "check_alone": {k: v for k, v in result.get("check_alone", {}).items() if k != "pairs"}}, default=str))


if __name__ == "__main__":
    main()
