"""Drift within one measuring process, and how well the bundled labels repeat.

From datasets already measured (raw samples beside each CSV):
- `--one-process`: the bundled architectures measured by one long-lived process (the code
  before the measuring worker was renewed every 75 rounds); `--fresh`: the same
  architectures with a fresh process per 25 (the bundled dataset). Reported: the ratio of
  their minima by blocks of 25 rows in measurement order, and `order_drift` of each;
- `--repeats`: some of the same architectures measured again at another time; reported:
  the share of the fresh dataset's labels within +-10% (and +-5%) of each repeat.
Writes benchmarks/results/drift.json.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_drift.py
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from predictor.evaluation import order_drift
from profiler.dataset import read_dataset

ROOT = Path(__file__).resolve().parents[1]
DRIFT = ROOT / "benchmarks" / "results" / "drift"
STATISTICS = ("trimmed-mean", "min")


def _labels(path: Path, statistic: str) -> pd.Series:
    return read_dataset(path, statistic).set_index("arch_id")["latency_ms"].astype(float)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one-process", type=Path, default=DRIFT / "one_process.csv")
    parser.add_argument("--fresh", type=Path, default=ROOT / "datasets" / "compact_local.csv")
    parser.add_argument("--repeats", default=f"{DRIFT / 'repeat_a.csv'},{DRIFT / 'repeat_b.csv'}")
    parser.add_argument("--block", type=int, default=25)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "drift.json")
    args = parser.parse_args()

    one, fresh = _labels(args.one_process, "min"), _labels(args.fresh, "min")
    ratio = (one / fresh[one.index]).to_numpy()  # in the one process's measurement order
    blocks = [round(float(b.mean()), 3) for b in np.array_split(ratio, max(1, len(ratio) // args.block))]
    results = {
        "one_process_over_fresh_min_by_block": blocks,
        "order_drift": {name: {s: order_drift(read_dataset(path, s)) for s in STATISTICS}
                        for name, path in (("one_process", args.one_process), ("fresh", args.fresh))},
        "repeatability": {},
    }
    for repeat in map(Path, args.repeats.split(",")):
        for statistic in STATISTICS:
            again, labels = _labels(repeat, statistic), _labels(args.fresh, statistic)
            deviation = np.abs(labels[again.index] / again - 1)
            results["repeatability"][f"{repeat.name} {statistic}"] = {
                "n": int(len(again)), "median_deviation": float(deviation.median()),
                "within_5": float((deviation <= 0.05).mean()), "within_10": float((deviation <= 0.10).mean())}
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
