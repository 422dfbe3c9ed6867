"""Would a duet label repeat better? A model timed in alternation with a fixed reference model.

Duet benchmarking (Bulej et al., ICPE 2020) and randomized interleaved trials (Abedi and
Brecht, ICPE 2017) compare two artifacts under the same disturbance: what slows one slows
the other, so their ratio repeats better than either time. `bench_canary_ratio.py` found the
pure-Python canary too unlike the model to serve (ratio spread 26% vs 27%); here the
reference is a SubTransformer itself (`--reference`: the space's smallest, or the
architecture sampled with that seed), run by the same runtime with the same threads, so it
stresses what the model stresses.

Every architecture (`--seeds`: each seed's one sampled architecture) is measured once per
pass (`--passes`), each time in a fresh process pinned to one CPU, which warms both models
up, then times `--pairs` pairs: the reference's encoder + decoder, then the model's (HAT's
workload, one timed run each), and the reference once more at the end, so every model run
sits between two reference runs. Per process: the model's trimmed mean (HAT's label from
these runs), the reference's, and the trimmed mean of the ratios of each model run to its
bracket (the geometric mean of the reference runs before and after it), each also by halves. Per architecture, across its passes: the spread (max - min) /
median of each label. Passes run one after another, so an architecture's labels are minutes
apart. And whether the ratio holds when the host changes speed: each architecture's pairs
grouped by how long their bracket took (fifths; and the host's fast stretches: both
reference runs 25% under the median). Raw samples are kept in the result, and `--recompute` recomputes every
figure from them.

    # one architecture, 10 fresh processes -> benchmarks/results/duet.json
    PYTHONPATH=. .venv/bin/python benchmarks/bench_duet.py
    # 60 architectures, each measured twice: how often a label repeats within 2% and 10%
    PYTHONPATH=. .venv/bin/python benchmarks/bench_duet.py --seeds 100-159 --passes 2 --pairs 100 \
        --out benchmarks/results/duet_sweep.json
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from _load import busy_loops
from profiler.artifacts import get_artifact
from profiler.protocol import TimingProtocol, canary_median_ns, spread, trimmed_mean
from profiler.space import load_space
from profiler.workload import open_runner

RESULTS = Path(__file__).resolve().parent / "results"
TRIM = TimingProtocol.trim


def _arch(space, choice: str):
    if choice in ("smallest", "largest"):
        return getattr(space, choice)()
    return space.sample_many(1, int(choice))[0]


def time_pairs(args: argparse.Namespace, seed: int) -> dict:
    """In this process: `args.pairs` alternating runs of the reference and `seed`'s architecture (ns)."""
    space = load_space(args.space)
    runners = {name: open_runner("onnx", get_artifact(_arch(space, choice), space, "onnx"))
               for name, choice in (("reference", args.reference), ("model", str(seed)))}
    clock = time.perf_counter_ns
    samples: dict[str, list[int]] = {name: [] for name in runners}

    def run(name: str) -> int:
        start = clock()
        runners[name].run_encoder()
        runners[name].run_decoder()
        return clock() - start

    for _ in range(TimingProtocol.warmup):
        run("reference")
        run("model")
    canary_before_us = canary_median_ns() / 1e3
    gc.disable()
    for _ in range(args.pairs):
        for name in runners:
            samples[name].append(run(name))
    samples["reference"].append(run("reference"))
    gc.enable()
    return {**samples, "canary_us": [canary_before_us, canary_median_ns() / 1e3]}


def bracketed(raws: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Model runs (ms) from all of one architecture's processes, each with the reference runs
    timed just before and just after it, and its bracket (their geometric mean). (A run timed
    without a reference after it, as the first results were, is left out.)"""
    model, before, after = [], [], []
    for raw in raws:
        reference = np.asarray(raw["reference"]) / 1e6
        model.append(np.asarray(raw["model"][:len(reference) - 1]) / 1e6)
        before.append(reference[:-1])
        after.append(reference[1:])
    before, after = np.concatenate(before), np.concatenate(after)
    return np.concatenate(model), before, after, np.sqrt(before * after)


def summarise_process(raw: dict) -> dict:
    """One process's labels: model, reference and bracketed-ratio trimmed means, whole and by halves."""
    model, before, _, bracket = bracketed([raw])
    ratio = model / bracket
    half = len(model) // 2
    parts = {"all": slice(None), "first_half": slice(None, half), "second_half": slice(half, None)}
    return {part: {"model_ms": float(trimmed_mean(model[s], TRIM)),
                   "reference_ms": float(trimmed_mean(before[s], TRIM)),
                   "ratio": float(trimmed_mean(ratio[s], TRIM))} for part, s in parts.items()}


def _seeds(text: str) -> list[int]:
    """'7', '1,4,9' or '100-159'."""
    if "-" in text:
        low, high = map(int, text.split("-"))
        return list(range(low, high + 1))
    return [int(seed) for seed in text.split(",")]


def compare(passes: list[dict]) -> dict:
    """Per label: each architecture's spread across passes, their median and the share within
    2% and 10%; and the median disagreement of a process's halves (the within-process noise)."""
    out = {}
    for label in ("model_ms", "reference_ms", "ratio"):
        spreads = [spread([p[seed]["all"][label] for p in passes]) for seed in passes[0]]
        halves = [abs(p[seed]["first_half"][label] / p[seed]["second_half"][label] - 1)
                  for p in passes for seed in p]
        out[label] = {"spread_median": statistics.median(spreads), "spread_max": max(spreads),
                      "within_2pct": sum(x <= 0.02 for x in spreads) / len(spreads),
                      "within_10pct": sum(x <= 0.10 for x in spreads) / len(spreads),
                      "halves_disagree_median": statistics.median(halves)}
    return out


def by_reference_speed(raws: list[dict], bins: int = 5) -> list[dict]:
    """One architecture's model runs from all its processes, in `bins` groups by how long
    their bracket took (quantiles): each group's median bracket, model and ratio. Where the
    host's speed moves the model and the reference alike, the ratio stays flat across groups."""
    model, _, _, reference = bracketed(raws)
    edges = np.quantile(reference, np.linspace(0, 1, bins + 1))
    group = np.clip(np.searchsorted(edges, reference, side="right") - 1, 0, bins - 1)
    return [{"reference_ms": float(np.median(reference[group == g])), "model_ms": float(np.median(model[group == g])),
             "ratio": float(np.median(model[group == g] / reference[group == g])), "pairs": int(np.sum(group == g))}
            for g in range(bins)]


#: Reference runs this much faster than their median are taken to have run in a fast stretch of the host.
FAST_STRETCH = 0.75


def fast_stretch(raws: list[dict]) -> dict | None:
    """One architecture's model runs whose reference runs before and after both ran below
    `FAST_STRETCH` x their median, against all its runs: how many, and the median model and
    ratio of each (None when there are none). Also the ratio to the reference run before only,
    over the runs whose reference before was fast: runs that straddle a change of speed stay in."""
    model, before, after, bracket = bracketed(raws)
    limit = FAST_STRETCH * np.median(before)
    fast, fast_before = np.maximum(before, after) < limit, before < limit
    if not fast.any():
        return None
    return {"pairs": int(fast.sum()), "of": len(model),
            "model_ms": float(np.median(model[fast])), "model_ms_all": float(np.median(model)),
            "ratio": float(np.median(model[fast] / bracket[fast])), "ratio_all": float(np.median(model / bracket)),
            "ratio_to_before": float(np.median(model[fast_before] / before[fast_before])),
            "ratio_to_before_all": float(np.median(model / before))}


def speed_effect(passes: list[dict]) -> dict:
    """Per architecture, each value in the slowest fifth of its reference runs over the fastest
    fifth (`by_reference_speed`), the medians over architectures and the first one's groups; and
    the pairs of the host's fast stretches (`fast_stretch`) over all pairs, medians over architectures."""
    raws = {seed: [p[seed]["raw_ns"] for p in passes] for seed in passes[0]}
    tables = {seed: by_reference_speed(r) for seed, r in raws.items()}
    factors = {label: statistics.median(t[-1][label] / t[0][label] for t in tables.values())
               for label in ("reference_ms", "model_ms", "ratio")}
    stretches = {seed: fast_stretch(r) for seed, r in raws.items()}
    found = [f for f in stretches.values() if f is not None]
    fast = {"architectures": len(found), "of": len(stretches)}
    if found:
        fast.update({label: statistics.median(f[label] / f[f"{label}_all"] for f in found)
                     for label in ("model_ms", "ratio", "ratio_to_before")})
    return {"slowest_over_fastest_fifth": factors, "groups_of_first": next(iter(tables.values())),
            "fast_stretch_over_all": fast, "fast_stretch_of_first": next(iter(stretches.values()))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="compact")
    parser.add_argument("--seeds", default="7", help="architectures measured, by sampling seed: '7', '1,4,9' or '100-159'")
    parser.add_argument("--reference", default="smallest",
                        help="'smallest', 'largest' or the seed of a sampled architecture")
    parser.add_argument("--busy", action="store_true", help="a busy loop on every other CPU all along")
    parser.add_argument("--pairs", type=int, default=300, help="reference + model pairs timed per process")
    parser.add_argument("--passes", type=int, default=10, help="fresh processes per architecture, one per pass")
    parser.add_argument("--cpu", type=int, default=max(os.sched_getaffinity(0)), help="the CPU every process is pinned to")
    parser.add_argument("--out", type=Path, default=RESULTS / "duet.json")
    parser.add_argument("--recompute", action="store_true",
                        help="time nothing: recompute the statistics of --out from its raw samples")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child: time this seed, print JSON
    args = parser.parse_args()
    if args.one is not None:
        os.sched_setaffinity(0, {args.cpu})
        print(json.dumps(time_pairs(args, args.one)))
        return
    if args.recompute:
        result = json.loads(args.out.read_text())
        for measured in result["passes"]:
            for entry in measured.values():
                entry["summary"] = summarise_process(entry["raw_ns"])
        write_statistics(result, args.out)
        return
    seeds = _seeds(args.seeds)
    result: dict = {"settings": {k: v for k, v in vars(args).items() if k not in ("one", "out")},
                    "load_before": os.getloadavg(), "passes": []}
    with busy_loops(sorted(set(os.sched_getaffinity(0)) - {args.cpu}) if args.busy else []):
        for number in range(args.passes):
            measured = {}
            for seed in seeds:
                child = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--one", str(seed)], check=True,
                                       capture_output=True, text=True)
                raw = json.loads(child.stdout)
                measured[seed] = {"summary": summarise_process(raw), "raw_ns": raw}
                print(f"pass {number + 1}/{args.passes}, seed {seed}: {measured[seed]['summary']['all']}",
                      file=sys.stderr)
            result["passes"].append(measured)
    result["load_after"] = os.getloadavg()
    write_statistics(result, args.out)


def write_statistics(result: dict, out: Path) -> None:
    """`compare` and `speed_effect` of the processes' labels, into `result`, written to `out`."""
    result["across_passes"] = compare([{seed: m["summary"] for seed, m in p.items()} for p in result["passes"]])
    result["reference_speed"] = speed_effect(result["passes"])
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result) + "\n")
    print(json.dumps({k: result[k] for k in ("across_passes", "reference_speed")}, indent=2))


if __name__ == "__main__":
    main()
