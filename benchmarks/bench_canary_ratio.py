"""Would a reference-normalised label repeat better? Each round's latency against its canary.

One compact SubTransformer is measured `--repeats` times with HAT's fixed protocol, each by
`hatprof measure --fixed` in a fresh process. For every round the sidecar gives the encoder +
decoder trimmed mean and the median of the canaries timed between its runs. If a slow host
slowed the canary and the model alike, the ratio latency / canary would spread less across
rounds than the latency itself; the spreads (max - min) / median of both are reported.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_canary_ratio.py   # -> benchmarks/results/canary_ratio.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from bench_label import RESULTS, measure_once


def spread(values: list[float]) -> float:
    return (max(values) - min(values)) / statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7, help="seed of the one sampled compact architecture")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cooldown", type=float, default=0.0)
    args = parser.parse_args()
    totals, canaries = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            row = measure_once(args, ["--fixed"], Path(tmp) / f"run{i}.csv")
            totals += row["round_totals_ms"]
            canaries += row["round_canary_us"]
    ratios = [t * 1e3 / c for t, c in zip(totals, canaries)]
    result = {"round_totals_ms": totals, "round_canary_median_us": canaries, "ratio": ratios,
              "spread_totals": spread(totals), "spread_ratio": spread(ratios), "settings": vars(args)}
    (RESULTS / "canary_ratio.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"rounds {len(totals)}: latency spread {spread(totals):.0%}, latency / canary spread {spread(ratios):.0%}")


if __name__ == "__main__":
    main()
