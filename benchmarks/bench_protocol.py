"""How well the timing protocol repeats, and what collecting a dataset costs beyond timing.

    python benchmarks/bench_protocol.py stability   # -> benchmarks/results/protocol_stability.json
    python benchmarks/bench_protocol.py overhead    # -> benchmarks/results/collection_overhead.json

stability: one compact SubTransformer measured `--repeats` times in one process and as
many times in fresh processes, for each round count in `--rounds`, the configurations
interleaved so drift hits them alike. For each statistic (HAT's trimmed mean over all
samples, the plain mean, the median, the minimum, the median of per-round trimmed means) it reports
the relative spread (max - min) / median over the repeats.

overhead: `hatprof measure` for `--samples` architectures whose artifacts are already
cached; wall time of the command over the time spent inside timed runs (the sum of the
raw samples it wrote).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _arch(seed: int):
    from profiler.space import load_space

    space = load_space("compact")
    return space, space.sample_many(1, seed)[0]


def _measure_once(target, artifact, runs: int, rounds: int, trim: float = 0.1) -> dict:
    from profiler.protocol import Measurement, TimingProtocol

    protocol = TimingProtocol.hat(runs=runs, rounds=rounds, trim=trim)
    pairs = [target.measure_round(artifact, "onnx", protocol.round_spec(n)) for n in protocol.runs_per_round()]
    parts = [Measurement.from_rounds([getattr(p, part) for p in pairs], trim) for part in ("encoder", "decoder")]
    return {
        "trimmed_mean_ms": sum(m.trimmed_mean_ms for m in parts),
        "mean_ms": sum(m.mean_ms for m in parts),
        "median_ms": sum(m.median_ms for m in parts),
        "min_ms": sum(m.min_ms for m in parts),
        "median_of_rounds_ms": sum(statistics.median(m.round_trimmed_means_ms) for m in parts),
        "cv_decoder": parts[1].cv,
        "other_cpu": max((m.max_other_cpu or 0.0) for m in parts),
    }


def _child(args: argparse.Namespace) -> None:
    from profiler.artifacts import get_artifact
    from profiler.target import LocalTarget

    space, arch = _arch(args.arch_seed)
    target = LocalTarget(threads=1)
    print(json.dumps(_measure_once(target, get_artifact(arch, space, "onnx"), args.runs, args.child_rounds)))


def _spread(values: list[float]) -> float:
    return (max(values) - min(values)) / statistics.median(values)


def stability(args: argparse.Namespace) -> dict:
    from profiler.artifacts import get_artifact
    from profiler.target import LocalTarget

    space, arch = _arch(args.arch_seed)
    artifact = get_artifact(arch, space, "onnx")
    target = LocalTarget(threads=1)
    rounds_list = [int(r) for r in args.rounds.split(",")]
    runs = {(mode, r): [] for mode in ("in_process", "fresh_process") for r in rounds_list}
    for repeat in range(args.repeats):
        for r in rounds_list:
            runs[("in_process", r)].append(_measure_once(target, artifact, args.runs, r))
            child = subprocess.run(
                [sys.executable, __file__, "child", "--arch-seed", str(args.arch_seed),
                 "--runs", str(args.runs), "--child-rounds", str(r)],
                check=True, capture_output=True, text=True)
            runs[("fresh_process", r)].append(json.loads(child.stdout.splitlines()[-1]))
            print(f"repeat {repeat + 1}/{args.repeats}, rounds {r}: "
                  f"{runs[('in_process', r)][-1]['trimmed_mean_ms']:.2f} / "
                  f"{runs[('fresh_process', r)][-1]['trimmed_mean_ms']:.2f} ms", file=sys.stderr)
    stats = ("trimmed_mean_ms", "mean_ms", "median_ms", "min_ms", "median_of_rounds_ms")
    summary = {f"{mode}/rounds={r}": {f"spread_{s}": _spread([m[s] for m in ms]) for s in stats}
               for (mode, r), ms in runs.items()}
    return {"arch_id": arch.arch_id, "arch": arch.to_dict(), "runs": args.runs, "repeats": args.repeats,
            "environment": target.info(), "summary": summary,
            "measurements": {f"{mode}/rounds={r}": ms for (mode, r), ms in runs.items()}}


def overhead(args: argparse.Namespace) -> dict:
    from profiler.dataset import raw_path_for

    with tempfile.TemporaryDirectory() as tmp:
        base = [sys.executable, "-m", "hatprof", "measure", "--samples", str(args.samples),
                "--seed", str(args.arch_seed), "--runs", str(args.runs)]
        subprocess.run([*base, "--out", f"{tmp}/warm.csv"], check=True, capture_output=True)
        start = time.perf_counter_ns()
        subprocess.run([*base, "--out", f"{tmp}/timed.csv"], check=True, capture_output=True)
        wall_ms = (time.perf_counter_ns() - start) / 1e6
        timed_ms = sum(sum(raw["encoder_ms"]) + sum(raw["decoder_ms"])
                       for raw in map(json.loads, raw_path_for(f"{tmp}/timed.csv").read_text().splitlines()))
    return {"samples": args.samples, "runs": args.runs, "wall_ms": wall_ms, "timed_ms": timed_ms,
            "wall_over_timed": wall_ms / timed_ms, "target": 1.15}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["stability", "overhead", "child"])
    parser.add_argument("--arch-seed", type=int, default=0)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", default="1,3,5", help="round counts to compare (stability)")
    parser.add_argument("--child-rounds", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--samples", type=int, default=4, help="architectures (overhead)")
    args = parser.parse_args()
    if args.mode == "child":
        _child(args)
        return
    result = stability(args) if args.mode == "stability" else overhead(args)
    name = "protocol_stability.json" if args.mode == "stability" else "collection_overhead.json"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / name).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result.get("summary", result), indent=2))


if __name__ == "__main__":
    main()
