"""HAT end to end on this machine: the issue's acceptance run of the supernet and the search.

For each latency statistic (HAT's trimmed mean, and the minimum):
1. train the default predictor on the bundled latency dataset, with that statistic as label;
2. measure the largest SubTransformer (inherited weights, full protocol) here;
3. set the limit to `--limit-fraction` (default half) of that measured latency;
4. run the default evolutionary search (HAT's 30 x 125) per seed, timed;
5. measure each winner the same way, and check it against the limit plus 5%.
The winners' validation loss and BLEU are reported next to the largest SubTransformer's.
Writes benchmarks/results/search_e2e.json.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_e2e.py [--seeds 0,1] [--statistics min]
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

from nas.evaluate import REFERENCE_SENTENCES, LossScorer, bleu
from nas.evolution import EvolutionStrategy
from nas.measured import measure_inherited
from nas.search import run_search
from nas.train import checkpoint_corpus, load_checkpoint
from predictor import train_predictor
from profiler.bundled import CHECKPOINT, DATASET, bundled_path
from profiler.dataset import read_dataset
from profiler.protocol import TimingProtocol
from profiler.worker import WorkerTarget

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "search_e2e.json"
TOLERANCE = 0.05

log = logging.getLogger("bench_e2e")


def _quality(net, arch, reference, test, vocab) -> dict:
    return {"valid_loss": reference([arch])[0], "test_bleu": bleu(net, arch, test, vocab).score}


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
    parser.add_argument("--work", default=None, help="folder for the measured CSVs (default: a temp dir)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    cpus = {int(c) for c in args.cpus.split(",")}
    work = Path(args.work or tempfile.mkdtemp(prefix="hatprof-e2e-"))
    work.mkdir(parents=True, exist_ok=True)

    net, header = load_checkpoint(args.supernet)
    space = net.space
    corpus = checkpoint_corpus(header, space)
    scorer = LossScorer(net, corpus.valid[: args.score_sentences])
    reference = LossScorer(net, corpus.valid[:REFERENCE_SENTENCES])
    test = corpus.test[:REFERENCE_SENTENCES]
    largest = space.largest()
    largest_quality = {"fitness_loss": scorer([largest])[0],
                       **_quality(net, largest, reference, test, corpus.tgt_vocab)}
    protocol = TimingProtocol()
    target = WorkerTarget(threads=protocol.threads, cpus=cpus)

    runs = []
    for statistic in args.statistics.split(","):
        predictor = train_predictor(read_dataset(args.data, statistic))
        csv = work / f"measured_{statistic}.csv"
        largest_ms = measure_inherited(net, [largest], target, protocol, csv, "local", statistic)[largest.arch_id]
        limit = args.limit_fraction * largest_ms
        log.info("%s: largest measured %.2f ms, limit %.2f ms", statistic, largest_ms, limit)
        searches = []
        for seed in (int(s) for s in args.seeds.split(",")):
            wall, cpu = time.perf_counter(), time.process_time()
            result = run_search(EvolutionStrategy(space, population=args.population, seed=seed),
                                lambda archs: predictor.predict_archs(list(archs)).tolist(), scorer, limit,
                                args.iterations)
            searches.append({"seed": seed, "result": result, "elapsed_s": time.perf_counter() - wall,
                             "cpu_s": time.process_time() - cpu})
        measured = measure_inherited(net, [s["result"].best.arch for s in searches], target, protocol, csv,
                                     "local", statistic)
        winners = []
        for s in searches:
            best = s["result"].best
            winners.append({
                "seed": s["seed"], "arch_id": best.arch.arch_id, "arch": best.arch.to_dict(),
                "predicted_ms": best.latency_ms, "measured_ms": measured[best.arch.arch_id],
                "within_limit_plus_5pct": measured[best.arch.arch_id] <= limit * (1 + TOLERANCE),
                "speedup_vs_largest": largest_ms / measured[best.arch.arch_id],
                "fitness_loss": best.loss, **_quality(net, best.arch, reference, test, corpus.tgt_vocab),
                "search": {"evaluated": s["result"].evaluated, "proposed": s["result"].proposed,
                           "rejected": s["result"].rejected, "elapsed_s": round(s["elapsed_s"], 1),
                           "cpu_s": round(s["cpu_s"], 1),
                           "best_loss_by_iteration": [i["best_loss"] for i in s["result"].iterations]}})
            log.info("%s seed %d: winner %.2f ms measured (%.2f predicted), limit %.2f; loss %.4f vs %.4f; "
                     "search %.0f s", statistic, s["seed"], measured[best.arch.arch_id], best.latency_ms, limit,
                     winners[-1]["valid_loss"], largest_quality["valid_loss"], s["elapsed_s"])
        runs.append({"statistic": statistic, "predictor": predictor.model,
                     "predictor_holdout": predictor.metadata["metrics"]["holdout"],
                     "largest_measured_ms": largest_ms,
                     "largest_predicted_ms": float(predictor.predict_archs([largest])[0]),
                     "latency_limit_ms": limit, "winners": winners})

    payload = {
        "what": "end-to-end HAT search: limit = fraction x measured latency of the largest SubTransformer; "
                "winner measured with inherited weights and the full protocol",
        "supernet": Path(args.supernet).name, "data": Path(args.data).name, "space": space.name,
        "limit_fraction": args.limit_fraction, "tolerance": TOLERANCE,
        "budget": {"iterations": args.iterations, "population": args.population,
                   "score_sentences": args.score_sentences, "torch_threads": args.threads},
        "protocol": protocol.to_dict(),
        "measure_cpus": sorted(cpus), "largest": {"arch_id": largest.arch_id, **largest_quality},
        "runs": runs,
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    target.close()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
