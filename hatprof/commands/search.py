"""Click commands of the nas package: `supernet train` and `search`.

Thin commands over the library: they read options, call `nas.train` / `nas.search`, and
write files. Domain errors are `HatprofError`s, which the main `hatprof` CLI turns into a
one-line message; usage errors are `click.BadParameter`.
"""
from __future__ import annotations

import json
import logging
import platform
import time
from pathlib import Path
from typing import Any, Sequence

import click
import torch

from hatprof.devices import open_device, progress_bar
from hatprof.options import seed_option, space_option
from nas.corpus import parallel_text_corpus, synthetic_corpus
from nas.evaluate import REFERENCE_SENTENCES, LossScorer, bleu
from nas.evolution import EvolutionStrategy
from nas.grammar import SyntheticTaskConfig
from nas.measured import measure_inherited
from nas.search import run_search
from nas.supernet import SuperTransformer
from nas.train import SAMPLING_RULES, TrainConfig, checkpoint_corpus, load_checkpoint, save_checkpoint, train_supernet
from profiler.bundled import CHECKPOINT, bundled_path
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
@click.option("--steps", type=click.IntRange(min=1), default=TrainConfig.steps, show_default=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Checkpoint to write; a JSON training record is written next to it.")
@click.option("--sampling", type=click.Choice(SAMPLING_RULES), default="uniform", show_default=True,
              help="SubTransformers per step: one uniform sample (HAT), or largest+smallest+uniform.")
@click.option("--batch-sentences", type=click.IntRange(min=1), default=TrainConfig.batch_sentences, show_default=True)
@click.option("--lr", type=float, default=TrainConfig.lr, show_default=True, help="Peak learning rate.")
@click.option("--warmup-steps", type=click.IntRange(min=1), default=TrainConfig.warmup_steps, show_default=True)
@click.option("--train-size", type=click.IntRange(min=1), default=SyntheticTaskConfig.train_size, show_default=True,
              help="Sentence pairs of the synthetic task's training split.")
@click.option("--src", "src_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Your own source text (one sentence per line) instead of the synthetic task.")
@click.option("--tgt", "tgt_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Target text, line-aligned with --src.")
@seed_option
@threads_option
def train(space: DesignSpace, steps: int, out: Path, sampling: str, batch_sentences: int, lr: float,
          warmup_steps: int, train_size: int, src_file: str | None, tgt_file: str | None, seed: int,
          threads: int | None) -> None:
    """Train a SuperTransformer on CPU and write its checkpoint."""
    if (src_file is None) != (tgt_file is None):
        raise click.BadParameter("give both --src and --tgt, or neither", param_hint="--src/--tgt")
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
    scorer = LossScorer(net, corpus.valid[:REFERENCE_SENTENCES])
    largest, smallest = scorer([space.largest(), space.smallest()])
    training = {"elapsed_s": round(report["elapsed_s"], 1), "cpu_s": round(report["cpu_s"], 1),
                "threads": report["threads"],
                "valid_loss_largest": round(largest, 4), "valid_loss_smallest": round(smallest, 4),
                "valid_sentences": min(REFERENCE_SENTENCES, len(corpus.valid))}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, net, corpus, extra={"train": config.to_dict(), "training": training})
    record = {"checkpoint": out.name, "checkpoint_bytes": out.stat().st_size, "space": space.name,
              "corpus": corpus.spec, "train": config.to_dict(), "training": training,
              "loss_curve": report["loss_curve"], "torch": torch.__version__,
              "python": platform.python_version(), "machine": platform.processor() or platform.machine(),
              "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
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


def _predictor_latency_fn(path: str):
    """`latency_fn` of a saved latency predictor (ms per architecture), and the latency
    statistic it learnt (HAT's trimmed mean unless it was trained on another)."""
    from predictor.persistence import load_predictor

    model = load_predictor(path)
    statistic = getattr(model, "metadata", {}).get("data", {}).get("latency_statistic", "trimmed-mean")
    return (lambda archs: model.predict_archs(list(archs)).tolist()), statistic


def _arch_report(name: str, arch: ArchConfig, loss: float, latency_ms: float, test_bleu: float) -> dict[str, Any]:
    return {"name": name, "arch_id": arch.arch_id, "arch": arch.to_dict(), "valid_loss": loss,
            "predicted_latency_ms": latency_ms, "test_bleu": test_bleu}


@click.command("search")
@click.option("--predictor", "predictor_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Latency predictor file (predictor.persistence format).")
@click.option("--latency-limit-ms", type=float, default=None, help="Latency limit of the search, in ms.")
@click.option("--latency-limits", callback=_parse_limits, default=None,
              help="Comma-separated limits (ms): one search per limit, e.g. for --plot.")
@click.option("--supernet", "supernet_path", type=click.Path(exists=True, dir_okay=False),
              default=None, help="SuperTransformer checkpoint.  [default: the bundled compact one]")
@click.option("--iterations", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--population", type=click.IntRange(min=5), default=125, show_default=True,
              help="Per generation; split 1:2:2 into parents, mutations, crossovers as in HAT.")
@click.option("--mutation-prob", type=click.FloatRange(0, 1), default=0.3, show_default=True)
@click.option("--crossover-prob", type=click.FloatRange(0, 1), default=0.5, show_default=True)
@click.option("--score-sentences", type=click.IntRange(min=1), default=64, show_default=True,
              help="Validation sentences behind each candidate's loss.")
@click.option("--bleu-sentences", type=click.IntRange(min=1), default=500, show_default=True,
              help="Test sentences for the BLEU of the winners.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Result JSON.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="PNG of the loss-latency front and the winners.")
@click.option("--measure-device", default=None,
              help="Measure the largest SubTransformer and each winner, with their inherited weights and "
                   "the full protocol, on this device ('local' or an inventory name); rows go to "
                   "<out>.measured.csv.")
@click.option("--measure-runs", type=click.IntRange(min=3), default=300, show_default=True,
              help="Timed runs per part for --measure-device (the rest of the protocol is the default).")
@seed_option
@threads_option
def search(predictor_path: str, latency_limit_ms: float | None, latency_limits: list[float] | None,
           supernet_path: str, iterations: int, population: int, mutation_prob: float, crossover_prob: float,
           score_sentences: int, bleu_sentences: int, out: Path, plot: Path | None, measure_device: str | None,
           measure_runs: int, seed: int, threads: int | None) -> None:
    """Evolutionary search for the lowest validation loss within a latency limit."""
    if (latency_limit_ms is None) == (latency_limits is None):
        raise click.BadParameter("give exactly one of --latency-limit-ms and --latency-limits",
                                 param_hint="--latency-limit-ms")
    if latency_limit_ms is not None and latency_limit_ms <= 0:
        raise click.BadParameter("must be positive", param_hint="--latency-limit-ms")
    _set_threads(threads)
    limits = latency_limits or [latency_limit_ms]
    supernet_path = supernet_path or str(bundled_path(CHECKPOINT))
    net, header = load_checkpoint(supernet_path)
    space = net.space
    corpus = checkpoint_corpus(header, space)
    latency_fn, statistic = _predictor_latency_fn(predictor_path)
    scorer = LossScorer(net, corpus.valid[:score_sentences])
    test = corpus.test[:bleu_sentences]

    runs = []
    for limit in limits:
        strategy = EvolutionStrategy(space, population=population, mutation_prob=mutation_prob,
                                     crossover_prob=crossover_prob, seed=seed)
        with click.progressbar(length=iterations, label=f"search <= {limit:g} ms") as bar:
            result = run_search(strategy, latency_fn, scorer, limit, iterations,
                                on_iteration=lambda summary: bar.update(1))
        best = result.best
        winner = _arch_report("winner", best.arch, best.loss, best.latency_ms,
                              bleu(net, best.arch, test, corpus.tgt_vocab).score)
        runs.append({"latency_limit_ms": limit, "winner": winner, "search": result.to_dict()})
    largest = space.largest()
    reference = _arch_report("largest", largest, scorer([largest])[0], float(latency_fn([largest])[0]),
                             bleu(net, largest, test, corpus.tgt_vocab).score)
    if measure_device is not None:
        _measure_reports(net, [reference] + [r["winner"] for r in runs], measure_device,
                         TimingProtocol(runs=measure_runs), out.with_suffix(".measured.csv"), statistic)
    payload = {"supernet": str(supernet_path), "predictor": str(predictor_path), "space": space.name,
               "seed": seed, "latency_statistic": statistic, "score_sentences": len(corpus.valid[:score_sentences]),
               "bleu_sentences": len(test), "reference": reference, "runs": runs}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    if plot is not None:
        from nas.plot import plot_front

        plot_front(runs, reference, plot)
    _echo_table(reference, runs)


def _measure_reports(net: SuperTransformer, reports: list[dict[str, Any]], device: str,
                     protocol: TimingProtocol, csv_path: Path, statistic: str) -> None:
    """Add `measured_latency_ms` (as the statistic the predictor learnt) to each report."""
    archs = [ArchConfig.from_dict(r["arch"]) for r in reports]
    target, protocol = open_device(device, protocol)
    try:
        with progress_bar(len(archs), f"measuring on {device}") as bar:
            measured = measure_inherited(net, archs, target, protocol, csv_path, device, statistic,
                                         on_progress=lambda done, total: bar.update(1))
    finally:
        target.close()
    for report in reports:
        report["measured_latency_ms"] = measured.get(report["arch_id"])


def _echo_table(reference: dict[str, Any], runs: Sequence[dict[str, Any]]) -> None:
    click.echo(f"{'limit ms':>9} {'pred ms':>8} {'meas ms':>8} {'loss':>7} {'BLEU':>6}  arch")
    rows = [("-", reference)] + [(f"{r['latency_limit_ms']:g}", r["winner"]) for r in runs]
    for limit, row in rows:
        label = "largest" if row["name"] == "largest" else row["arch_id"]
        measured = row.get("measured_latency_ms")
        measured = "-" if measured is None else f"{measured:.2f}"
        click.echo(f"{limit:>9} {row['predicted_latency_ms']:8.2f} {measured:>8} {row['valid_loss']:7.3f} "
                   f"{row['test_bleu']:6.2f}  {label}")
