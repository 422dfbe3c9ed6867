"""Search and measure as one library call: HAT's search end to end.

`hatprof search`, `hatprof demo` and `benchmarks/bench_e2e.py` all call
`search_and_measure`: for each latency limit, a search (`SearchSettings.strategy`) for the
lowest validation loss among candidates whose latency, as the `PredictedLatency` adapter
gives it, fits the limit; then the largest SubTransformer (the reference) and each winner
are described by their losses, BLEU and predicted latency and, given a `measure`
function, by their latency measured with the weights they inherit from the supernet.
"""
from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from nas.corpus import ParallelCorpus
from nas.evaluate import REFERENCE_SENTENCES, LossScorer, bleu
from nas.evolution import make_strategy
from nas.latency import PredictedLatency
from nas.measured import MeasuredLatency
from nas.search import SearchSettings, run_search
from nas.supernet import SuperTransformer
from nas.train import checkpoint_corpus, load_checkpoint
from profiler.space import ArchConfig, DesignSpace

#: Measured latency of each architecture, by arch id (see `nas.measured.measure_inherited`).
MeasureFn = Callable[[Sequence[ArchConfig]], Mapping[str, MeasuredLatency]]
#: Progress of one search: its latency limit and the iteration's summary (`nas.search.run_search`).
IterationFn = Callable[[float, dict[str, Any]], None]


class SearchTask:
    """A supernet and its task: the search's fitness (validation loss over `score_sentences`
    sentences), the reference loss over `reference_sentences`, and the BLEU test set."""

    def __init__(self, net: SuperTransformer, corpus: ParallelCorpus, score_sentences: int = 64,
                 bleu_sentences: int = REFERENCE_SENTENCES, reference_sentences: int = REFERENCE_SENTENCES) -> None:
        self.net, self.corpus = net, corpus
        self.score_sentences = len(corpus.valid[:score_sentences])
        self.scorer = LossScorer(net, corpus.valid[:score_sentences])
        self.reference = LossScorer(net, corpus.valid[:reference_sentences])
        self.test = corpus.test[:bleu_sentences]

    @classmethod
    def load(cls, checkpoint: str | Path, score_sentences: int = 64, bleu_sentences: int = REFERENCE_SENTENCES,
             reference_sentences: int = REFERENCE_SENTENCES) -> "SearchTask":
        """The task of a supernet checkpoint (`nas.train.save_checkpoint`)."""
        net, header = load_checkpoint(checkpoint)
        return cls(net, checkpoint_corpus(header, net.space), score_sentences, bleu_sentences, reference_sentences)

    @property
    def space(self) -> DesignSpace:
        return self.net.space

    def describe(self, name: str, arch: ArchConfig, predicted_ms: float,
                 valid_loss: float | None = None) -> dict[str, Any]:
        """A candidate's report: its losses (`valid_loss` is the search's fitness), test BLEU
        and predicted latency."""
        return {"name": name, "arch_id": arch.arch_id, "arch": arch.to_dict(),
                "valid_loss": self.scorer([arch])[0] if valid_loss is None else valid_loss,
                "reference_loss": self.reference([arch])[0],
                "predicted_latency_ms": float(predicted_ms),
                "test_bleu": bleu(self.net, arch, self.test, self.corpus.tgt_vocab).score}


def search_and_measure(task: SearchTask, latency: PredictedLatency, limits: Sequence[float],
                       settings: SearchSettings = SearchSettings(), measure: MeasureFn | None = None,
                       on_iteration: IterationFn | None = None,
                       on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """One search per limit, then the reference and the winners described (and measured).

    Returns a JSON-able record: the settings, the reference (the largest SubTransformer),
    and per limit the winner and the search's history (with its wall and CPU seconds).
    """
    def announce(step: str) -> None:  # the BLEU of a winner takes minutes on a CPU: say so first
        if on_step is not None:
            on_step(step)

    runs = []
    for limit in limits:
        wall, cpu = time.perf_counter(), time.process_time()
        result = run_search(make_strategy(task.space, settings), latency, task.scorer, limit, settings.iterations,
                            on_iteration=None if on_iteration is None else functools.partial(on_iteration, limit))
        timing = {"elapsed_s": round(time.perf_counter() - wall, 2), "cpu_s": round(time.process_time() - cpu, 2)}
        best = result.best
        announce(f"scoring the winner of <= {limit:g} ms: validation loss and BLEU on {len(task.test)} test sentences")
        runs.append({"latency_limit_ms": limit,
                     "winner": task.describe("winner", best.arch, best.latency_ms, best.loss),
                     "search": {**result.to_dict(), **timing}})
    largest = task.space.largest()
    announce(f"scoring the largest SubTransformer: validation loss and BLEU on {len(task.test)} test sentences")
    reference = task.describe("largest", largest, latency([largest])[0])
    if measure is not None:
        reports = [reference] + [run["winner"] for run in runs]
        measured = measure([ArchConfig.from_dict(report["arch"]) for report in reports])
        for report in reports:
            found = measured.get(report["arch_id"])
            if found is not None:
                report.update(measured_latency_ms=found.latency_ms, measured_trusted=found.trusted,
                              measured_interval=found.interval)
        for run in runs:  # the prediction kept it under the limit; the device may not have
            winner = run["winner"]
            if "measured_latency_ms" in winner:
                winner["over_limit"] = bool(winner["measured_latency_ms"] > run["latency_limit_ms"])
    return {"space": task.space.name, "latency_statistic": latency.statistic, "confidence": latency.confidence,
            "settings": settings.to_dict(), "score_sentences": task.score_sentences,
            "bleu_sentences": len(task.test), "reference": reference, "runs": runs}
