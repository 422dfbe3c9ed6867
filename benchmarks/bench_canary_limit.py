"""Would a tighter canary limit make the default label repeat? Default rows' labels, recomputed.

The default protocol keeps a run when both canaries around it are within
`profiler.convergence.CANARY_LIMIT` (25%) of the session's typical canary. On a host that is
slow for long stretches, runs 10-20% slow pass that check. This asks, of default rows already
measured (their sidecars: every round's runs and canaries), what the label would have been had
each run been kept only when both its canaries were within LIMIT of the machine's fast level
(the gate's, recorded in each round): HAT's trimmed mean of those runs, encoder + decoder, and
how many runs were left (a label needs 300). Rows measured in fresh processes repeat under a
limit when their recomputed labels agree. Also the mean run of each part by how far its
canaries were above the fast level: whether the canary sees the slowdown at all.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_canary_limit.py --sidecars 'DIR/default*.raw.jsonl*' --out OUT

The run order inside an accepted round is rebuilt from its clean runs and its dropped ones by
the profiler's own rule (`clean_runs`, against the row's typical canary at the end); a round
where that does not account for every dropped run is left out and counted.
"""
from __future__ import annotations

import argparse
import glob
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_duet_level import _read_sidecar, _spread  # noqa: E402
from profiler.convergence import CANARY_LIMIT, PARTS, clean_runs  # noqa: E402
from profiler.protocol import RoundResult, trimmed_mean  # noqa: E402


def fast_level_ns(rounds: list[dict]) -> float | None:
    """The machine's fast canary level the gate judged the row's rounds by."""
    limit = next((r["gate"]["slow_ns"] for r in rounds if (r.get("gate") or {}).get("slow_ns")), None)
    return None if limit is None else limit / (1 + CANARY_LIMIT)


def rounds_in_order(raw: dict, canary_every: int) -> tuple[list[dict[str, list[float]]], list[dict], int]:
    """Each round's runs per part in the order timed (ms), the rounds' records, and how many
    accepted rounds could not be rebuilt."""
    env = raw["environment"]
    records = env["rounds"]
    label_only = any(r["verdict"] is None for r in records)  # else every run is in the label arrays
    sizes = {"encoder": raw["round_sizes"], "decoder": raw.get("decoder_round_sizes") or raw["round_sizes"]}
    canaries = [c for r in records for part in PARTS for c in r["canary_ns"][part]]
    fast = fast_level_ns(records)
    typical = statistics.median(canaries) if fast is None else min(statistics.median(canaries), fast)
    discarded, start, label_round = iter(raw["discarded_rounds"]), dict.fromkeys(PARTS, 0), 0
    out, kept_records, unbuilt = [], [], 0
    for r in records:
        if label_only and r["verdict"] is not None:
            timed = next(discarded)
            out.append({part: timed[f"{part}_ms"] for part in PARTS})
            kept_records.append(r)
            continue
        runs = {}
        for part in PARTS:
            n = sizes[part][label_round]
            clean = raw[f"{part}_ms"][start[part]:start[part] + n]
            start[part] += n
            dropped = ((r.get("dropped_ms") or {}).get(part) or []) if label_only else []
            mask = clean_runs(RoundResult((0,) * (n + len(dropped)), None, tuple(r["canary_ns"][part])),
                              canary_every, typical)
            if mask.count(False) != len(dropped):
                break
            clean_it, dropped_it = iter(clean), iter(dropped)
            runs[part] = [next(clean_it) if keep else next(dropped_it) for keep in mask]
        label_round += 1
        if len(runs) == len(PARTS):
            out.append(runs)
            kept_records.append(r)
        else:
            unbuilt += 1
    return out, kept_records, unbuilt


def canary_ratios(rounds: list[dict[str, list[float]]], records: list[dict], canary_every: int,
                  fast_ns: float) -> list[tuple[str, float, float]]:
    """Each run as (part, ms, how far above `fast_ns` the larger of its two canaries was)."""
    out = []
    for runs, record in zip(rounds, records):
        for part in PARTS:
            canaries = record["canary_ns"][part]
            for i, ms in enumerate(runs[part]):
                window = i // canary_every
                larger = max(canaries[window], canaries[min(window + 1, len(canaries) - 1)])
                out.append((part, ms, larger / fast_ns - 1))
    return out


def label_under(runs: list[tuple[str, float, float]], limit: float, trim: float) -> tuple[float | None, int]:
    """HAT's trimmed mean (ms, encoder + decoder) of the runs whose canaries were within `limit`
    of the fast level, and the fewest runs left in a part (None when a part kept none)."""
    kept = {part: [ms for p, ms, ratio in runs if p == part and ratio <= limit] for part in PARTS}
    fewest = min(len(v) for v in kept.values())
    if not fewest:
        return None, 0
    return sum(trimmed_mean([int(round(ms * 1e6)) for ms in v], trim) / 1e6 for v in kept.values()), fewest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sidecars", action="append", required=True,
                        help="default rows' sidecars (a glob; give it more than once for several)")
    parser.add_argument("--limits", default="0.05,0.10,0.15,0.25", help="canary limits over the fast level")
    parser.add_argument("--canary-every", type=int, default=10, help="runs between canaries, as measured")
    parser.add_argument("--trim", type=float, default=0.1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    limits = [float(v) for v in args.limits.split(",")]
    rows, every_run = [], []
    for path in sorted(p for pattern in args.sidecars for p in glob.glob(pattern)):
        raw = _read_sidecar(Path(path))
        if "duet" in raw["environment"]:
            continue
        rounds, records, unbuilt = rounds_in_order(raw, args.canary_every)
        fast = fast_level_ns(raw["environment"]["rounds"])
        if fast is None:
            continue
        row = {"sidecar": path, "rounds": len(rounds), "rounds_not_rebuilt": unbuilt, "fast_canary_us": fast / 1e3}
        runs = canary_ratios(rounds, records, args.canary_every, fast)
        every_run += runs
        for limit in limits:
            label, kept = label_under(runs, limit, args.trim)
            row[f"{limit:g}"] = {"label_ms": label, "runs": kept}
        rows.append(row)
    summary = {}
    for limit in limits:
        labels = [r[f"{limit:g}"]["label_ms"] for r in rows if r[f"{limit:g}"]["label_ms"] is not None]
        full = [r[f"{limit:g}"]["label_ms"] for r in rows if r[f"{limit:g}"]["runs"] >= 300]
        summary[f"{limit:g}"] = {"labels": len(labels), "spread": _spread(labels) if len(labels) > 1 else None,
                                 "labels_of_300_runs": len(full),
                                 "spread_of_300_runs": _spread(full) if len(full) > 1 else None}
    # How fast the runs were, by how far their canaries were above the fast level (all rows).
    edges = [-float("inf"), *sorted(limits), float("inf")]
    bands = {f"{'beyond' if high == float('inf') else f'{high:g}'}/{part}":
             {"runs": len(ms), "mean_ms": statistics.fmean(ms)}
             for low, high in zip(edges, edges[1:]) for part in PARTS
             if (ms := [m for p, m, ratio in every_run if p == part and low < ratio <= high])}
    result = {"canary_limit_now": CANARY_LIMIT, "rows": rows, "summary": summary, "runs_by_canary": bands}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({"summary": summary, "runs_by_canary": bands}, indent=1))


if __name__ == "__main__":
    main()
