"""Uniform sampling vs the sandwich rule for supernet training, at equal estimated compute.

Trains one compact supernet per rule on the synthetic task (one thread), then reports the
validation loss with inherited weights of the largest, the smallest and 16 random
SubTransformers, and BLEU of the largest and smallest. The sandwich rule runs three
SubTransformers per step, so it gets fewer steps: as many as make the summed analytic
cost (non-embedding parameters plus output projection, a per-token proxy) equal.

    nice -n 10 .venv/bin/python benchmarks/bench_supernet.py --rule uniform
    nice -n 10 .venv/bin/python benchmarks/bench_supernet.py --rule sandwich

Each run merges its entry into benchmarks/results/supernet_sampling.json.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import random
import statistics
from pathlib import Path

import torch

from nas.corpus import synthetic_corpus
from nas.evaluate import LossScorer, bleu
from nas.grammar import SyntheticTaskConfig
from nas.supernet import SuperTransformer
from nas.train import TrainConfig, train_supernet
from profiler.cost import count_params
from profiler.space import ArchConfig, DesignSpace, load_space

RESULTS = Path(__file__).parent / "results" / "supernet_sampling.json"


def step_cost(arch: ArchConfig, space: DesignSpace) -> float:
    return count_params(arch, space)["total_without_embeddings"] + arch.decoder_embed_dim * space.tgt_vocab


def sandwich_steps(space: DesignSpace, uniform_steps: int) -> int:
    rng = random.Random(0)
    mean = statistics.fmean(step_cost(space.sample(rng), space) for _ in range(2000))
    per_step = step_cost(space.largest(), space) + step_cost(space.smallest(), space) + mean
    return round(uniform_steps * mean / per_step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rule", choices=("uniform", "sandwich"), required=True)
    parser.add_argument("--space", default="compact")
    parser.add_argument("--uniform-steps", type=int, default=600)
    parser.add_argument("--train-size", type=int, default=50_000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    space = load_space(args.space)
    steps = args.uniform_steps if args.rule == "uniform" else sandwich_steps(space, args.uniform_steps)
    corpus = synthetic_corpus(SyntheticTaskConfig(train_size=args.train_size))
    supernet = SuperTransformer(space, seed=0)
    config = TrainConfig(steps=steps, warmup_steps=min(300, steps // 5), sampling=args.rule)
    report = train_supernet(supernet, corpus, config)
    scorer = LossScorer(supernet, corpus.valid[:256])
    randoms = space.sample_many(16, seed=123)
    random_losses = scorer(randoms)
    largest, smallest = scorer([space.largest(), space.smallest()])
    entry = {
        "train_config": config.to_dict(),
        "corpus": corpus.spec,
        "subtransformer_passes": steps * (3 if args.rule == "sandwich" else 1),
        "train_elapsed_s": round(report["elapsed_s"], 1),
        "train_cpu_s": round(report["cpu_s"], 1),
        "valid_loss_largest": round(largest, 4),
        "valid_loss_smallest": round(smallest, 4),
        "valid_loss_random16_mean": round(statistics.fmean(random_losses), 4),
        "bleu_largest": round(bleu(supernet, space.largest(), corpus.valid[:200], corpus.tgt_vocab).score, 2),
        "bleu_smallest": round(bleu(supernet, space.smallest(), corpus.valid[:200], corpus.tgt_vocab).score, 2),
        "torch": torch.__version__,
        "threads": 1,
    }
    folder = os.open(RESULTS.parent, os.O_RDONLY)  # locked: the two rules may finish together
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        results[args.rule] = entry
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    finally:
        os.close(folder)
    logging.info("%s: %s", args.rule, entry)


if __name__ == "__main__":
    main()
