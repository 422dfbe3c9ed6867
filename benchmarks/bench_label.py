"""How well one latency label repeats, and what it costs: converging protocol vs HAT's fixed one, and duet mode.

For each condition (`quiet`; `hog`: a busy-loop process pinned to the CPU the measurement
does not use) and each protocol (`converging`: the default, ±1% across clean rounds;
`fixed`: HAT's 300 runs in 3 rounds, nothing discarded; `duet`: the default with `--duet`,
each run restated by the reference model's runs around it), one compact SubTransformer is
measured `--repeats` times, each by `hatprof measure` in a fresh process, the protocols
alternating so that slow changes of the machine hit both alike. Then, at equal precision:
the converging protocol with `--precision` set to the median 95% interval the fixed
protocol's three rounds gave (`converging_at_fixed_precision`). Reported per condition and
protocol: every label, its spread (max - min) / median, how many rows were flagged
unstable, the rounds used and discarded, the label's interval, and the device seconds per
architecture (the time the target spent on the architecture's rounds, the row's `device_s`).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_label.py      # -> benchmarks/results/label.json

`--protocol NAME=OPTIONS` adds a protocol of your own (`hatprof measure` options), e.g.
shorter rounds: `--protocol 'short=--rounds 20 --max-rounds 48 --warmup 2'`.

Run it on a quiet machine (`uptime` before and after): the `quiet` figures are only that
when nothing else runs.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

from _load import busy_loops
from profiler.dataset import measurements_from_raw, raw_path_for
from profiler.metadata import cpu_model

RESULTS = Path(__file__).resolve().parent / "results"
PROTOCOLS = {"converging": [], "fixed": ["--fixed"], "duet": ["--duet"]}


def measure_once(args: argparse.Namespace, extra: list[str], out: Path) -> dict:
    command = [sys.executable, "-m", "hatprof", "measure", "--device", "local", "--space", "compact",
               "--samples", "1", "--seed", str(args.seed), "--out", str(out), "--cooldown", str(args.cooldown), *extra]
    subprocess.run(command, check=True, capture_output=True, text=True)
    row = pd.read_csv(out).iloc[0]
    raw = json.loads(raw_path_for(out).read_text())
    canaries = [c for r in raw["environment"]["rounds"] for part in r["canary_ns"].values() for c in part]
    return {"latency_ms": float(row["latency_ms"]), "latency_min_ms": float(row["latency_min_ms"]),
            "unstable": bool(row["unstable"]), "interval": float(row["interval"]),
            "rounds_used": int(row["rounds_used"]), "rounds_discarded": int(row["rounds_discarded"]),
            "discarded_why": "" if pd.isna(row["discarded_why"]) else str(row["discarded_why"]),
            "device_s": float(row["device_s"]), "gate_wait_s": float(row["gate_wait_s"]),
            # duet mode: the reference's latency the runs were restated with (label / scale: the ratio)
            "reference_ms": None if pd.isna(row["reference_ms"]) else float(row["reference_ms"]),
            # how the machine behaved: each label round's total, and the canary's median over its fastest
            "round_totals_ms": _round_totals_ms(raw, float(row["trim"])),
            "canary_median_over_min": statistics.median(canaries) / min(canaries) if canaries else None,
            # every round in the sidecar (discarded ones too): aligned with round_totals_ms under --fixed;
            # in duet mode the "canary" is the reference model
            "round_canary_us": [statistics.median(c for part in r["canary_ns"].values() for c in part) / 1e3
                                for r in raw["environment"]["rounds"]]}


def _round_totals_ms(raw: dict, trim: float) -> list[float]:
    """The encoder + decoder trimmed mean of each round the label is made of (from the sidecar)."""
    encoder, decoder = measurements_from_raw(raw, trim)
    return [e + d for e, d in zip(encoder.round_trimmed_means_ms, decoder.round_trimmed_means_ms)]


def summarise(rows: list[dict]) -> dict:
    labels = [r["latency_ms"] for r in rows]
    minima = [r["latency_min_ms"] for r in rows]
    return {"spread": (max(labels) - min(labels)) / statistics.median(labels),
            "spread_min": (max(minima) - min(minima)) / statistics.median(minima),
            "unstable": sum(r["unstable"] for r in rows), "repeats": len(rows),
            "device_s_mean": statistics.fmean(r["device_s"] for r in rows),
            "rounds_used_mean": statistics.fmean(r["rounds_used"] for r in rows),
            "rounds_discarded_mean": statistics.fmean(r["rounds_discarded"] for r in rows),
            "interval_median": statistics.median(r["interval"] for r in rows),
            "labels_ms": labels}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7, help="seed of the one sampled compact architecture")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--conditions", default="quiet,hog")
    parser.add_argument("--protocols", default=",".join(PROTOCOLS), help=f"some of {', '.join(PROTOCOLS)}")
    parser.add_argument("--protocol", action="append", default=[], metavar="NAME=OPTIONS",
                        help="one more protocol: a name and `hatprof measure` options, e.g. "
                             "'short=--rounds 20 --max-rounds 48 --warmup 2' (repeatable)")
    parser.add_argument("--cooldown", type=float, default=120.0,
                        help="the gate's longest wait before a round (hatprof measure --cooldown)")
    parser.add_argument("--out", type=Path, default=RESULTS / "label.json")
    args = parser.parse_args()
    protocols = {name: PROTOCOLS[name] for name in args.protocols.split(",") if name}
    for spec in args.protocol:
        name, _, options = spec.partition("=")
        protocols[name] = shlex.split(options)
    cpus = sorted(os.sched_getaffinity(0))
    hog_cpu = cpus[0] if len(cpus) > 1 else None  # the measurement pins the highest-numbered CPU
    result: dict = {"seed": args.seed, "machine": {"host": os.uname().nodename, "cpu_model": cpu_model(),
                                                   "cpus": cpus, "hog_cpu": hog_cpu},
                    "load_before": os.getloadavg(), "conditions": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for condition in args.conditions.split(","):
            runs: dict[str, list[dict]] = {name: [] for name in protocols}
            with busy_loops([hog_cpu] if condition == "hog" and hog_cpu is not None else []):
                for repeat in range(args.repeats):
                    for name, extra in protocols.items():
                        runs[name].append(measure_once(args, extra, Path(tmp) / f"{condition}-{name}-{repeat}.csv"))
                        print(f"{condition} {name} {repeat + 1}/{args.repeats}: {runs[name][-1]}", file=sys.stderr)
                if condition == "quiet" and "fixed" in protocols:
                    precision = statistics.median(r["interval"] for r in runs["fixed"])
                    name = "converging_at_fixed_precision"
                    runs[name] = [measure_once(args, ["--precision", f"{min(precision, 0.5):.6f}"],
                                               Path(tmp) / f"{condition}-{name}-{repeat}.csv")
                                  for repeat in range(args.repeats)]
            result["conditions"][condition] = {name: {"summary": summarise(rows), "rows": rows}
                                               for name, rows in runs.items()}
            result["load_after"] = os.getloadavg()
            args.out.parent.mkdir(exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2) + "\n")  # after each condition: a cut run keeps some
    print(json.dumps({c: {n: {k: v for k, v in p["summary"].items() if k != "labels_ms"} for n, p in ps.items()}
                      for c, ps in result["conditions"].items()}, indent=2))


if __name__ == "__main__":
    main()
