"""Evolutionary vs random search with the same number of evaluated candidates, over seeds.

Fitness is the bundled supernet's validation loss with inherited weights. Latency comes from
the default predictor trained on a latency CSV (--data), a predictor file (--predictor,
predictor.persistence format) or, by default, the analytic MAC count of HAT's latency
workload read as "ms" (MACs / 1e6): a stand-in with the right ordering. The limit defaults
to half the largest SubTransformer's predicted latency. Writes
benchmarks/results/search_vs_random.json.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_search.py --seeds 0,1,2
    PYTHONPATH=. .venv/bin/python benchmarks/bench_search.py --data datasets/compact_local.csv \
        --seeds 0,1,2,3,4 --iterations 10 --population 50 --out benchmarks/results/search_vs_random_predictor.json
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import torch

from nas.evaluate import LossScorer
from nas.evolution import EvolutionStrategy, RandomStrategy
from nas.search import run_search
from nas.train import checkpoint_corpus, load_checkpoint
from profiler.bundled import CHECKPOINT, bundled_path
from profiler.cost import count_macs

RESULTS = Path(__file__).parent / "results" / "search_vs_random.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--supernet", default=str(bundled_path(CHECKPOINT)))
    parser.add_argument("--predictor", default=None, help="predictor file")
    parser.add_argument("--data", default=None, help="latency CSV to train the default predictor on")
    parser.add_argument("--limit-fraction", type=float, default=0.5)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--population", type=int, default=40)
    parser.add_argument("--score-sentences", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    net, header = load_checkpoint(args.supernet)
    space = net.space
    if args.predictor or args.data:
        from nas.latency import PredictedLatency
        from predictor import train_predictor
        from profiler.dataset import read_dataset

        latency_fn = (PredictedLatency.load(args.predictor) if args.predictor
                      else PredictedLatency(train_predictor(read_dataset(args.data))))
        latency_source = args.predictor or f"default predictor trained on {Path(args.data).name}"
    else:
        def latency_fn(archs):
            return [count_macs(a, space)["total"] / 1e6 for a in archs]
        latency_source = "analytic MACs / 1e6"
    scorer = LossScorer(net, checkpoint_corpus(header, space).valid[: args.score_sentences])
    limit = args.limit_fraction * latency_fn([space.largest()])[0]
    largest, smallest = scorer([space.largest(), space.smallest()])
    runs = []
    for seed in (int(s) for s in args.seeds.split(",")):
        start = time.perf_counter()
        evo = run_search(EvolutionStrategy(space, population=args.population, seed=seed), latency_fn, scorer,
                         limit, args.iterations)
        evo_s = time.perf_counter() - start
        start = time.perf_counter()
        rnd = run_search(RandomStrategy(space, population=args.population, seed=seed), latency_fn, scorer,
                         limit, iterations=10**6, max_evaluations=evo.evaluated)
        runs.append({"seed": seed, "evaluated": evo.evaluated,
                     "evolution": {"best_loss": evo.best.loss, "best_latency_ms": evo.best.latency_ms,
                                   "elapsed_s": round(evo_s, 1),
                                   "best_loss_by_iteration": [s["best_loss"] for s in evo.iterations]},
                     "random": {"best_loss": rnd.best.loss, "best_latency_ms": rnd.best.latency_ms,
                                "elapsed_s": round(time.perf_counter() - start, 1)}})
        logging.info("seed %d: evolution %.4f, random %.4f (%d evaluated)", seed, evo.best.loss,
                     rnd.best.loss, evo.evaluated)
    summary = {
        "supernet": Path(args.supernet).name, "latency": latency_source, "latency_limit_ms": limit,
        "limit_fraction_of_largest": args.limit_fraction, "iterations": args.iterations,
        "population": args.population, "score_sentences": args.score_sentences, "threads": args.threads,
        "valid_loss_largest": largest, "valid_loss_smallest": smallest,
        "evolution_wins": sum(r["evolution"]["best_loss"] < r["random"]["best_loss"] for r in runs),
        "mean_best_loss": {"evolution": statistics.fmean(r["evolution"]["best_loss"] for r in runs),
                           "random": statistics.fmean(r["random"]["best_loss"] for r in runs)},
        "runs": runs, "torch": torch.__version__,
    }
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    logging.info("evolution beat random in %d of %d seeds", summary["evolution_wins"], len(runs))


if __name__ == "__main__":
    main()
