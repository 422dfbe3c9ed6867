"""What a duet round's ratio depends on: the time it was timed, the session, or the process.

`--processes` measuring processes (`profiler.worker.WorkerTarget`, pinned to the highest
CPU), each holding `--copies` sessions of one compact SubTransformer (`--seed`) and of the
duet's reference (the space's smallest): each copy is its own artifact folder, so its own
onnxruntime sessions. Every pass times one duet round (`--runs` runs, the reference before
and after each) on every (process, copy) unit, in a random order, so the host's drift in
time hits the units alike. For the model's round trimmed mean (encoder + decoder), the
reference's, and their ratio, a nested two-way analysis: the pass (time) effect removed,
then the spread between sessions of one process and between processes, each as a relative
standard deviation, with the round-to-round residual.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_sessions.py   # -> benchmarks/results/sessions.json
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from profiler.artifacts import get_artifact  # noqa: E402
from profiler.convergence import PARTS, round_total_ms  # noqa: E402
from profiler.metadata import cpu_model  # noqa: E402
from profiler.protocol import RoundSpec, trimmed_mean  # noqa: E402
from profiler.space import load_space  # noqa: E402
from profiler.worker import WorkerTarget  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TRIM = 0.1


def nested_effects(table: dict[tuple[int, int], list[float]], processes: int, copies: int) -> dict:
    """Relative standard deviations of the time, process and session effects and the residual,
    from the rounds of each (process, copy) unit, one per pass (method of moments)."""
    units = list(table)
    passes = len(table[units[0]])
    grand = statistics.fmean(v for u in units for v in table[u])
    by_pass = [statistics.fmean(table[u][j] for u in units) for j in range(passes)]
    adjusted = {u: [table[u][j] - by_pass[j] + grand for j in range(passes)] for u in units}
    unit_mean = {u: statistics.fmean(adjusted[u]) for u in units}
    process_mean = [statistics.fmean(unit_mean[(p, c)] for c in range(copies)) for p in range(processes)]
    ms_residual = (sum((adjusted[u][j] - unit_mean[u]) ** 2 for u in units for j in range(passes))
                   / ((len(units) - 1) * (passes - 1)))
    ms_session = passes * sum((unit_mean[(p, c)] - process_mean[p]) ** 2
                              for p in range(processes) for c in range(copies)) / (processes * (copies - 1))
    ms_process = passes * copies * sum((m - grand) ** 2 for m in process_mean) / (processes - 1)
    ms_time = len(units) * sum((m - grand) ** 2 for m in by_pass) / (passes - 1)
    return {"mean": grand, "unit_means": {f"{p}.{c}": unit_mean[(p, c)] for p, c in units},
            "residual_sd": ms_residual ** 0.5 / grand,
            "session_sd": max(0.0, (ms_session - ms_residual) / passes) ** 0.5 / grand,
            "session_F": ms_session / ms_residual,
            "process_sd": max(0.0, (ms_process - ms_session) / (passes * copies)) ** 0.5 / grand,
            "process_F": ms_process / ms_session,
            "time_sd": max(0.0, (ms_time - ms_residual) / len(units)) ** 0.5 / grand}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7, help="seed of the one sampled compact architecture")
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--copies", type=int, default=2, help="sessions of each model per process")
    parser.add_argument("--passes", type=int, default=6)
    parser.add_argument("--runs", type=int, default=50, help="timed runs per round")
    parser.add_argument("--out", type=Path, default=RESULTS / "sessions.json")
    args = parser.parse_args()
    space = load_space("compact")
    cpu = max(os.sched_getaffinity(0))
    result: dict = {"settings": vars(args) | {"out": str(args.out), "cpu": cpu, "trim": TRIM},
                    "machine": {"host": os.uname().nodename, "cpu_model": cpu_model()}, "load_before": os.getloadavg()}
    units = [(p, c) for p in range(args.processes) for c in range(args.copies)]
    table: dict[str, dict] = {key: {u: [] for u in units} for key in ("model", "reference", "ratio")}
    with tempfile.TemporaryDirectory() as tmp:
        model = get_artifact(space.sample_many(1, args.seed)[0], space, "onnx", cache_dir=tmp)
        reference = get_artifact(space.smallest(), space, "onnx", cache_dir=tmp)
        folders = {c: tuple(shutil.copytree(src, Path(tmp) / f"copy{c}-{src.name}") for src in (model, reference))
                   for c in range(args.copies)}
        spec = RoundSpec(runs=args.runs, warmup=5, trim=TRIM)  # with a reference, every run is bracketed
        targets = [WorkerTarget(1, {cpu}, recycle_rounds=10 ** 6) for _ in range(args.processes)]
        try:
            rng = random.Random(args.seed)
            for done in range(args.passes):
                for process, copy in rng.sample(units, len(units)):
                    pair = targets[process].measure_round(folders[copy][0], "onnx", spec, reference_dir=folders[copy][1])
                    m = round_total_ms(pair, TRIM)
                    r = sum(trimmed_mean(getattr(pair, part).canary_ns, TRIM) for part in PARTS) / 1e6
                    for key, value in (("model", m), ("reference", r), ("ratio", m / r)):
                        table[key][(process, copy)].append(value)
                print(f"pass {done + 1}/{args.passes}", file=sys.stderr, flush=True)
        finally:
            for target in targets:
                target.close()
    result["rounds"] = {key: {f"{p}.{c}": v for (p, c), v in t.items()} for key, t in table.items()}
    result["effects"] = {key: nested_effects(t, args.processes, args.copies) for key, t in table.items()}
    result["load_after"] = os.getloadavg()
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({key: {k: round(v, 4) for k, v in e.items() if k != "unit_means"}
                      for key, e in result["effects"].items()}, indent=2))


if __name__ == "__main__":
    main()
