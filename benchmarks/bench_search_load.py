"""Search time beside a CPU hog: does other work slow `hatprof search` in proportion?

Runs the same search (bundled supernet, default predictor trained on the bundled dataset,
limit half the largest SubTransformer's predicted latency, one seed) twice in one run:
once on a quiet machine, once beside `--hogs` busy-loop processes, and reports the wall
times and their ratio. With one torch thread per scoring process (the search's default),
a hog should cost a share of the CPUs, not the catastrophic slow-down of torch's default
threads fighting it; the acceptance is a ratio within 2.5. Writes
benchmarks/results/search_load.json.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_search_load.py            # HAT's population, 5 iterations
    PYTHONPATH=. .venv/bin/python benchmarks/bench_search_load.py --iterations 1 --population 10   # a smoke run
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path

import torch

from _load import busy_loops
from nas.experiment import SearchTask
from nas.evolution import make_strategy
from nas.latency import PredictedLatency
from nas.search import SearchSettings, run_search
from predictor import train_predictor
from profiler.bundled import CHECKPOINT, DATASET, bundled_path
from profiler.dataset import read_dataset

RESULTS = Path(__file__).resolve().parent / "results" / "search_load.json"
ACCEPTANCE_RATIO = 2.5

log = logging.getLogger("bench_search_load")


def _timed_search(task: SearchTask, latency: PredictedLatency, limit: float, settings: SearchSettings) -> dict:
    wall, cpu = time.perf_counter(), time.process_time()
    result = run_search(make_strategy(task.space, settings), latency, task.scorer, limit, settings.iterations)
    return {"elapsed_s": round(time.perf_counter() - wall, 2), "cpu_s": round(time.process_time() - cpu, 2),
            "evaluated": result.evaluated, "best_loss": result.best.loss, "best_arch_id": result.best.arch.arch_id}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--population", type=int, default=SearchSettings.population)
    parser.add_argument("--score-sentences", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the search (the CLI's default)")
    parser.add_argument("--hogs", type=int, default=1, help="busy-loop processes beside the loaded run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)

    # the search's own work only: no BLEU or reference loss of the winner
    task = SearchTask.load(bundled_path(CHECKPOINT), args.score_sentences, bleu_sentences=0, reference_sentences=0)
    latency = PredictedLatency(train_predictor(read_dataset(bundled_path(DATASET))))
    limit = 0.5 * latency([task.space.largest()])[0]
    settings = SearchSettings(iterations=args.iterations, population=args.population, seed=args.seed)
    task.scorer([task.space.largest()])  # warm-up: the first scoring pays one-time costs
    load_before = os.getloadavg()
    quiet = _timed_search(task, latency, limit, settings)
    log.info("quiet: %.1f s", quiet["elapsed_s"])
    with busy_loops([None] * args.hogs):
        loaded = _timed_search(task, latency, limit, settings)
    log.info("beside %d hog(s): %.1f s", args.hogs, loaded["elapsed_s"])
    ratio = loaded["elapsed_s"] / quiet["elapsed_s"]
    payload = {
        "what": "search wall time beside busy-loop processes / on a quiet machine, the same search twice",
        "settings": {**settings.to_dict(), "score_sentences": args.score_sentences, "torch_threads": args.threads,
                     "hogs": args.hogs, "latency_limit_ms": limit},
        "quiet": quiet, "loaded": loaded, "ratio": round(ratio, 3),
        "within_acceptance": ratio <= ACCEPTANCE_RATIO, "acceptance_ratio": ACCEPTANCE_RATIO,
        "same_result": quiet["best_arch_id"] == loaded["best_arch_id"],
        "machine": {"cpu_count": os.cpu_count(), "load_average_before": [round(x, 2) for x in load_before],
                    "python": platform.python_version(), "torch": torch.__version__},
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")
    print(f"quiet {quiet['elapsed_s']:.1f} s, beside {args.hogs} hog(s) {loaded['elapsed_s']:.1f} s: "
          f"ratio {ratio:.2f} (acceptance <= {ACCEPTANCE_RATIO}); wrote {args.out}")


if __name__ == "__main__":
    main()
