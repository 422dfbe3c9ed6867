"""`hatprof supernet train` and `hatprof search`: thin commands over `nas`.

They read options, call `nas.train` / `nas.experiment.search_and_measure`, print progress
and write files. Domain errors are `HatprofError`s, which the main `hatprof` CLI turns
into a one-line message; usage errors are `click.BadParameter`.
"""
from __future__ import annotations

import contextlib
import json
import logging
import platform
import time
from pathlib import Path
from typing import Any, Sequence

import click
import torch

from hatprof.devices import open_device, progress_bar
from hatprof.options import output_file, seed_option, space_option
from nas.corpus import parallel_text_corpus, synthetic_corpus
from nas.evaluate import REFERENCE_SENTENCES, LossScorer
from nas.evolution import STRATEGIES
from nas.experiment import SearchTask, search_and_measure
from nas.grammar import SyntheticTaskConfig
from nas.latency import PredictedLatency
from nas.measured import measure_inherited
from nas.search import SearchSettings
from predictor.conformal import intervals_of
from nas.supernet import SuperTransformer
from nas.train import SAMPLING_RULES, TrainConfig, save_checkpoint, train_supernet
from profiler.bundled import CHECKPOINT, bundled_path
from profiler.errors import HatprofError
from profiler.files import check_writable, write_atomically
from profiler.protocol import TimingProtocol
from profiler.space import ArchConfig, DesignSpace

logger = logging.getLogger(__name__)

threads_option = click.option("--threads", type=click.IntRange(min=1), default=None,
                              help="torch intra-op threads (default: torch's choice).")


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        torch.set_num_threads(threads)


@click.group()
def supernet() -> None:
    """Train weight-sharing SuperTransformers."""


@supernet.command("train")
@space_option
@click.option("--steps", type=click.IntRange(min=1), default=TrainConfig.steps, show_default=True,
              help="Training steps (one batch of sentences, one sampled SubTransformer each).")
@click.option("--out", required=True, type=output_file,
              help="Checkpoint to write; a JSON training record is written next to it.")
@click.option("--force", is_flag=True, help="Overwrite an existing checkpoint at --out.")
@click.option("--sampling", type=click.Choice(SAMPLING_RULES), default="uniform", show_default=True,
              help="SubTransformers per step: one uniform sample (HAT), or largest+smallest+uniform.")
@click.option("--batch-sentences", type=click.IntRange(min=1), default=TrainConfig.batch_sentences, show_default=True,
              help="Sentence pairs per training step.")
@click.option("--lr", type=float, default=TrainConfig.lr, show_default=True, help="Peak learning rate.")
@click.option("--warmup-steps", type=click.IntRange(min=1), default=TrainConfig.warmup_steps, show_default=True,
              help="Steps of linear learning-rate warmup up to --lr (capped at --steps).")
@click.option("--train-size", type=click.IntRange(min=1), default=SyntheticTaskConfig.train_size, show_default=True,
              help="Sentence pairs of the synthetic task's training split.")
@click.option("--src", "src_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Your own source text (one sentence per line) instead of the synthetic task.")
@click.option("--tgt", "tgt_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Target text, line-aligned with --src.")
@seed_option
@threads_option
def train(space: DesignSpace, steps: int, out: Path, force: bool, sampling: str, batch_sentences: int, lr: float,
          warmup_steps: int, train_size: int, src_file: str | None, tgt_file: str | None, seed: int,
          threads: int | None) -> None:
    """Train a SuperTransformer on CPU and write its checkpoint."""
    if (src_file is None) != (tgt_file is None):
        raise click.BadParameter("give both --src and --tgt, or neither", param_hint="--src/--tgt")
    if out.exists() and not force:
        raise HatprofError(f"{out} already exists; give another --out, or --force to overwrite it")
    check_writable(out.with_suffix(".json"))
    _set_threads(threads)
    if src_file is not None:
        corpus = parallel_text_corpus(src_file, tgt_file, space, seed=seed)
    else:
        corpus = synthetic_corpus(SyntheticTaskConfig(train_size=train_size))
    config = TrainConfig(steps=steps, batch_sentences=batch_sentences, lr=lr,
                         warmup_steps=min(warmup_steps, steps), sampling=sampling, seed=seed)
    net = SuperTransformer(space, seed=seed)
    with click.progressbar(length=steps, label="training") as bar:
        report = train_supernet(net, corpus, config, on_step=lambda step, loss: bar.update(1))
    click.echo(f"validating the largest and smallest SubTransformers on {min(REFERENCE_SENTENCES, len(corpus.valid))} "
               "sentences...", err=True)
    scorer = LossScorer(net, corpus.valid[:REFERENCE_SENTENCES])
    largest, smallest = scorer([space.largest(), space.smallest()])
    training = {"elapsed_s": round(report["elapsed_s"], 1), "cpu_s": round(report["cpu_s"], 1),
                "threads": report["threads"],
                "valid_loss_largest": round(largest, 4), "valid_loss_smallest": round(smallest, 4),
                "valid_sentences": min(REFERENCE_SENTENCES, len(corpus.valid))}
    save_checkpoint(out, net, corpus, extra={"train": config.to_dict(), "training": training})
    record = {"checkpoint": out.name, "checkpoint_bytes": out.stat().st_size, "space": space.name,
              "corpus": corpus.spec, "train": config.to_dict(), "training": training,
              "loss_curve": report["loss_curve"], "torch": torch.__version__,
              "python": platform.python_version(), "machine": platform.processor() or platform.machine(),
              "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_atomically(out.with_suffix(".json"), json.dumps(record, indent=2) + "\n")
    click.echo(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) in {training['elapsed_s']:.0f} s; "
               f"valid loss largest {largest:.3f}, smallest {smallest:.3f}")


def _parse_limits(ctx: click.Context, param: click.Parameter, value: str | None) -> list[float] | None:
    if value is None:
        return None
    try:
        limits = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {value!r}") from None
    if not limits or min(limits) <= 0:
        raise click.BadParameter("latency limits must be positive numbers")
    return limits


@contextlib.contextmanager
def measuring(device: str | None, runs: int, net: SuperTransformer, csv_path: Path, latency: PredictedLatency):
    """The `measure` function of `search_and_measure` on `device` (None: no measurement),
    its rows in `csv_path`, with a progress bar, timed as `latency`'s predictor learnt (its
    statistic; duet mode if its rows were); the device is closed on exit."""
    if device is None:
        yield None
        return
    target, protocol = open_device(device, TimingProtocol(runs=runs, duet=latency.duet))

    def measure(archs: Sequence[ArchConfig]) -> dict[str, float]:
        with progress_bar(len(archs), f"measuring on {device}") as bar:
            return measure_inherited(net, archs, target, protocol, csv_path, device, latency.statistic,
                                     on_progress=lambda done, total: bar.update(1))

    try:
        yield measure
    finally:
        target.close()


class SearchProgress:
    """One line on stderr per search iteration: iteration, best loss, feasible candidates
    so far, elapsed time and the estimated time left for all the limits."""

    def __init__(self, limits: int, iterations: int) -> None:
        self.total = limits * iterations
        self.iterations = iterations
        self.done = 0
        self.start = time.monotonic()

    def __call__(self, limit: float, summary: dict[str, Any]) -> None:
        self.done += 1
        elapsed = time.monotonic() - self.start
        eta = elapsed / self.done * (self.total - self.done)
        click.echo(f"search <= {limit:g} ms: iteration {summary['iteration'] + 1}/{self.iterations}, "
                   f"best loss {summary['best_loss']:.4f} at {summary['best_latency_ms']:.2f} ms, "
                   f"{summary['feasible']} feasible, {elapsed:.0f} s elapsed, ETA {eta:.0f} s", err=True)


@click.command("search")
@click.option("--predictor", "predictor_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Latency predictor file, as `hatprof predictor train` or `predictor adapt` writes it.")
@click.option("--latency-limit-ms", type=float, default=None, help="Latency limit of the search, in ms.")
@click.option("--latency-limits", callback=_parse_limits, default=None,
              help="Comma-separated limits (ms): one search per limit, e.g. for --plot.")
@click.option("--supernet", "supernet_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="SuperTransformer checkpoint.  [default: the bundled compact one]")
@click.option("--strategy", type=click.Choice(sorted(STRATEGIES)), default="evolution", show_default=True,
              help="HAT's evolutionary search, or random search (the baseline).")
@click.option("--iterations", type=click.IntRange(min=1), default=SearchSettings.iterations, show_default=True,
              help="Generations of the search (each scores one --population of candidates).")
@click.option("--population", type=click.IntRange(min=5), default=SearchSettings.population, show_default=True,
              help="Per generation; evolution splits it 1:2:2 into parents, mutations, crossovers as in HAT.")
@click.option("--mutation-prob", type=click.FloatRange(0, 1), default=SearchSettings.mutation_prob,
              show_default=True, help="Evolution: chance that a mutation re-draws each gene of a parent.")
@click.option("--crossover-prob", type=click.FloatRange(0, 1), default=SearchSettings.crossover_prob,
              show_default=True,
              help="Evolution: chance that a crossover takes each gene from its first parent (else the second).")
@click.option("--score-sentences", type=click.IntRange(min=1), default=64, show_default=True,
              help="Validation sentences behind each candidate's loss.")
@click.option("--bleu-sentences", type=click.IntRange(min=1), default=REFERENCE_SENTENCES, show_default=True,
              help="Test sentences for the BLEU of the winners.")
@click.option("--out", required=True, type=output_file, help="Result JSON.")
@click.option("--plot", type=output_file, default=None,
              help="PNG of the loss-latency front and the winners.")
@click.option("--measure-device", default=None,
              help="Measure the largest SubTransformer and each winner, with their inherited weights and "
                   "the full protocol, on this device ('local' or an inventory name); rows go to "
                   "<out>.measured.csv.")
@click.option("--measure-runs", type=click.IntRange(min=3), default=300, show_default=True,
              help="Timed runs per part for --measure-device (the rest of the protocol is the default).")
@click.option("--confidence", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="Keep a candidate only when the upper bound of its predicted latency's interval at this "
                   "confidence (e.g. 0.9; the predictor's conformal intervals) is within the limit, so "
                   "that the winner measured on the device lands under it.  [default: the prediction]")
@seed_option
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="torch threads scoring the candidates: one keeps the search from fighting other work "
                   "on the machine for its cores.")
def search(predictor_path: str, latency_limit_ms: float | None, latency_limits: list[float] | None,
           supernet_path: str | None, strategy: str, iterations: int, population: int, mutation_prob: float,
           crossover_prob: float, score_sentences: int, bleu_sentences: int, out: Path, plot: Path | None,
           measure_device: str | None, measure_runs: int, confidence: float | None, seed: int,
           threads: int) -> None:
    """Search the supernet for the lowest validation loss within a latency limit.

    Candidates whose predicted latency exceeds the limit are dropped before scoring (HAT);
    the winner and the largest SubTransformer are reported with loss, BLEU and predicted
    (with --measure-device, also measured) latency. Progress goes to stderr.
    """
    if (latency_limit_ms is None) == (latency_limits is None):
        raise click.BadParameter("give exactly one of --latency-limit-ms and --latency-limits",
                                 param_hint="--latency-limit-ms")
    if latency_limit_ms is not None and latency_limit_ms <= 0:
        raise click.BadParameter("must be positive", param_hint="--latency-limit-ms")
    torch.set_num_threads(threads)
    limits = latency_limits or [latency_limit_ms]
    supernet_path = supernet_path or str(bundled_path(CHECKPOINT))
    task = SearchTask.load(supernet_path, score_sentences, bleu_sentences)
    latency = PredictedLatency.load(predictor_path, confidence)
    latency.check_space(task.space, supernet_path)
    if confidence is not None:
        intervals_of(latency.predictor).check(confidence)  # fail now: no or too few scored rows
    settings = SearchSettings(strategy=strategy, iterations=iterations, population=population,
                              mutation_prob=mutation_prob, crossover_prob=crossover_prob, seed=seed)
    with measuring(measure_device, measure_runs, task.net, out.with_suffix(".measured.csv"), latency) as measure:
        record = search_and_measure(task, latency, limits, settings, measure,
                                    on_iteration=SearchProgress(len(limits), iterations),
                                    on_step=lambda step: click.echo(f"{step}...", err=True))
    payload = {"supernet": str(supernet_path), "predictor": str(predictor_path), "seed": seed,
               "threads": threads, **record}
    write_atomically(out, json.dumps(payload, indent=2) + "\n")
    if plot is not None:
        from nas.plot import plot_front

        write_atomically(plot, lambda tmp: plot_front(payload["runs"], payload["reference"], tmp))
    echo_table(payload["reference"], payload["runs"])


def echo_table(reference: dict[str, Any], runs: Sequence[dict[str, Any]]) -> None:
    click.echo(f"{'limit ms':>9} {'pred ms':>8} {'meas ms':>9} {'loss':>7} {'BLEU':>6}  arch")
    rows = [("-", reference)] + [(f"{r['latency_limit_ms']:g}", r["winner"]) for r in runs]
    for limit, row in rows:
        label = "largest" if row["name"] == "largest" else row["arch_id"]
        measured = row.get("measured_latency_ms")
        measured = "-" if measured is None else (f"{measured:.2f}" + ("" if row["measured_trusted"] else "?")
                                                 + ("!" if row.get("over_limit") else ""))
        click.echo(f"{limit:>9} {row['predicted_latency_ms']:8.2f} {measured:>9} {row['valid_loss']:7.3f} "
                   f"{row['test_bleu']:6.2f}  {label}")
    if any(row.get("over_limit") for _, row in rows):
        click.echo("! measured over its latency limit: the predictor under-estimates this device here "
                   "(adapt it with rows of this device, or search with a lower limit or --confidence)", err=True)
    if any(row.get("measured_trusted") is False for _, row in rows):
        click.echo("? did not converge: the machine kept disturbing the measurement, so this number is not "
                   "the model's latency (measure again on a quieter machine)", err=True)
