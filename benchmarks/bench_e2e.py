"""HAT end to end on this machine: the issue's acceptance run of the supernet and the search.

For each latency statistic (HAT's trimmed mean, and the minimum):
1. train the default predictor on the bundled latency dataset, with that statistic as label;
2. measure the largest SubTransformer (inherited weights, full protocol) here;
3. set the limit to `--limit-fraction` (default half) of that measured latency;
4. run the default evolutionary search (HAT's 30 x 125) per seed, timed;
5. measure each winner the same way, and check it against the limit plus 5%.
The winners' validation loss and BLEU are reported next to the largest SubTransformer's.
With `--busy`, a busy-loop process keeps each CPU the measurements are not pinned to busy
all along (the search then shares the machine with it too), and the measured latencies say
whether they converged. With `--adapt K`, step 1 also measures the K architectures
`predictor suggest` picks here, now, and adapts the predictor to them (for a machine whose
speed is no longer the bundled dataset's); with `--confidence C` the search keeps only
candidates whose predicted upper bound at C fits the limit; `--duet` measures in duet mode.
Writes benchmarks/results/search_e2e.json.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_e2e.py [--seeds 0,1] [--statistics min] [--busy]
        [--adapt 20 --confidence 0.9 --duet]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from _load import busy_loops
from nas.experiment import SearchTask, search_and_measure
from nas.latency import PredictedLatency
from nas.measured import measure_inherited
from nas.search import SearchSettings
from predictor import train_predictor
from predictor.suggest import suggest_archs
from predictor.transfer import adapt
from profiler.bundled import CHECKPOINT, DATASET, bundled_path
from profiler.dataset import read_dataset
from profiler.measure import MeasureJob, measure_archs, open_dataset
from profiler.protocol import TimingProtocol
from profiler.worker import WorkerTarget

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "search_e2e.json"
TOLERANCE = 0.05

log = logging.getLogger("bench_e2e")


def _quality(report: dict) -> dict:
    """A candidate's losses and BLEU under this benchmark's names."""
    return {"fitness_loss": report["valid_loss"], "valid_loss": report["reference_loss"],
            "test_bleu": report["test_bleu"]}


def _statistic_run(args: argparse.Namespace, statistic: str, task: SearchTask, target: WorkerTarget,
                   protocol: TimingProtocol, work: Path) -> dict:
    """Steps 1-5 with `statistic` as the predictor's label and the measured latencies."""
    largest = task.space.largest()
    bundled = train_predictor(read_dataset(args.data, statistic))
    predictor = _adapted(args, bundled, task, target, protocol, work, statistic) if args.adapt else bundled
    latency = PredictedLatency(predictor, args.confidence)
    csv = work / f"measured_{statistic}.csv"

    def measure(archs, csv=csv, statistic=statistic):
        return measure_inherited(task.net, archs, target, protocol, csv, "local", statistic)

    largest_ms = measure([largest])[largest.arch_id].latency_ms
    limit = args.limit_fraction * largest_ms
    log.info("%s: largest measured %.2f ms, limit %.2f ms", statistic, largest_ms, limit)
    winners, largest_quality = [], {}
    for seed in (int(s) for s in args.seeds.split(",")):
        settings = SearchSettings(iterations=args.iterations, population=args.population, seed=seed)
        record = search_and_measure(task, latency, [limit], settings, measure)
        largest_quality = _quality(record["reference"])
        run = record["runs"][0]
        best, search = run["winner"], run["search"]
        measured_ms = best["measured_latency_ms"]
        winners.append({
            "seed": seed, "arch_id": best["arch_id"], "arch": best["arch"],
            "predicted_ms": best["predicted_latency_ms"], "measured_ms": measured_ms,
            "measured_trusted": best["measured_trusted"], "measured_interval": best["measured_interval"],
            "within_limit_plus_5pct": measured_ms <= limit * (1 + TOLERANCE),
            "speedup_vs_largest": largest_ms / measured_ms, **_quality(best),
            "search": {"evaluated": search["evaluated"], "proposed": search["proposed"],
                       "rejected": search["rejected"], "elapsed_s": round(search["elapsed_s"], 1),
                       "cpu_s": round(search["cpu_s"], 1),
                       "best_loss_by_iteration": [i["best_loss"] for i in search["iterations"]]}})
        log.info("%s seed %d: winner %.2f ms measured (%.2f predicted), limit %.2f; loss %.4f vs %.4f; "
                 "search %.0f s", statistic, seed, measured_ms, best["predicted_latency_ms"], limit,
                 winners[-1]["valid_loss"], largest_quality["valid_loss"], search["elapsed_s"])
    return {"statistic": statistic, "predictor": bundled.model,
            "predictor_holdout": bundled.metadata["metrics"]["holdout"],
            "adapted": predictor.metadata.get("cross_validation") if args.adapt else None,
            "largest_measured_ms": largest_ms, "largest_predicted_ms": latency([largest])[0],
            "largest_quality": largest_quality, "latency_limit_ms": limit, "winners": winners}


def _adapted(args: argparse.Namespace, bundled, task: SearchTask, target: WorkerTarget, protocol: TimingProtocol,
             work: Path, statistic: str):
    """`bundled` adapted to this machine with the `args.adapt` architectures it suggests,
    measured here now (seeded weights: the latency does not depend on their values)."""
    archs = suggest_archs(bundled, args.adapt, task.space)
    csv = work / f"adapt_{statistic}.csv"
    job = MeasureJob(space=task.space, protocol=protocol)
    with open_dataset(csv, job, "local", [target], csv.exists()) as writer:
        measure_archs(archs, job, target, writer)
    log.info("%s: measured %d suggested architectures here; adapting", statistic, len(archs))
    return adapt(bundled, read_dataset(csv, statistic))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--supernet", default=str(bundled_path(CHECKPOINT)))
    parser.add_argument("--data", default=str(bundled_path(DATASET)))
    parser.add_argument("--statistics", default="trimmed-mean,min")
    parser.add_argument("--limit-fraction", type=float, default=0.5)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--population", type=int, default=125)
    parser.add_argument("--score-sentences", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the search")
    parser.add_argument("--cpus", default="1", help="CPUs the measurements are pinned to")
    parser.add_argument("--busy", action="store_true",
                        help="keep another process busy all along: a busy loop on each CPU the measurements "
                             "are not pinned to")
    parser.add_argument("--adapt", type=int, default=0, help="adapt the predictor to K suggested rows measured here")
    parser.add_argument("--confidence", type=float, default=None, help="search on the predictor's upper bound")
    parser.add_argument("--duet", action="store_true", help="measure in duet mode (hatprof measure --duet)")
    parser.add_argument("--work", default=None, help="folder for the measured CSVs (default: a temp dir)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    cpus = {int(c) for c in args.cpus.split(",")}
    work = Path(args.work or tempfile.mkdtemp(prefix="hatprof-e2e-"))
    work.mkdir(parents=True, exist_ok=True)

    task = SearchTask.load(args.supernet, args.score_sentences)
    space = task.space
    largest = space.largest()
    protocol = TimingProtocol(duet=args.duet)
    target = WorkerTarget(threads=protocol.threads, cpus=cpus)
    busy_cpus = sorted(set(os.sched_getaffinity(0)) - cpus) if args.busy else []
    load_before = os.getloadavg()
    try:
        with busy_loops(busy_cpus):
            runs = [_statistic_run(args, statistic, task, target, protocol, work) for statistic in
                    args.statistics.split(",")]
    finally:
        target.close()


    payload = {
        "what": "end-to-end HAT search: limit = fraction x measured latency of the largest SubTransformer; "
                "winner measured with inherited weights and the full protocol",
        "supernet": Path(args.supernet).name, "data": Path(args.data).name, "space": space.name,
        "limit_fraction": args.limit_fraction, "tolerance": TOLERANCE,
        "adapt_rows": args.adapt, "confidence": args.confidence,
        "budget": {"iterations": args.iterations, "population": args.population,
                   "score_sentences": args.score_sentences, "torch_threads": args.threads},
        "protocol": protocol.to_dict(),
        "measure_cpus": sorted(cpus), "busy_loops_on_cpus": busy_cpus,
        "load_before": load_before, "load_after": os.getloadavg(),
        "largest": {"arch_id": largest.arch_id, **runs[0]["largest_quality"]},
        "runs": runs,
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
