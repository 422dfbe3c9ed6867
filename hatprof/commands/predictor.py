"""`hatprof predictor ...`: train, evaluate, apply, compare and adapt latency predictors.

Thin commands over the library; domain errors propagate as `HatprofError` for the main
CLI to print as one line.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import click
import pandas as pd

from hatprof.commands.measure import read_arch_lines
from hatprof.options import format_option, output_file, protocol_options, space_option

from profiler.dataset import LATENCY_STATISTICS, read_dataset
from profiler.files import write_atomically

from predictor.conformal import INTERVAL_CONFIDENCE, intervals_of
from predictor.core import DEFAULT_MODEL, MODELS, train_predictor
from predictor.data import check_space, measured_total
from predictor.metrics import latency_metrics
from predictor.persistence import load_predictor, save_predictor
from predictor.transfer import CHOICE_LEVEL, METHODS, PRIOR_KIND
from predictor.suggest import suggest_archs
from predictor.transfer import adapt as adapt_predictor

_csv = click.Path(exists=True, dir_okay=False, path_type=Path)
_out = output_file
data_option = click.option("--data", type=_csv, required=True, help="Latency CSV.")
statistic_option = click.option(
    "--statistic", type=click.Choice(LATENCY_STATISTICS), default=None,
    help="Latency to learn and score: HAT's trimmed mean as written, or the median or minimum "
         "recomputed from the raw samples.  [default: trimmed-mean, or the predictor's own for eval]")
seed_option = click.option("--seed", type=int, default=0, show_default=True,
                           help="Seed of HAT's 80/10/10 split and of the models.")
confidence_option = click.option(
    "--confidence", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
    help="Also give each prediction's interval at this confidence (e.g. 0.9), from the conformal "
         "scores stored in the predictor.")


def _metrics_line(metrics: dict) -> str:
    def fmt(value, spec):
        return "n/a" if value is None else format(value, spec)

    return (f"n={metrics['n']}  RMSE {metrics['rmse_ms']:.3f} ms  MAPE {metrics['mape']:.2f}%  "
            f"RMSPE {metrics['rmspe']:.2f}%  within 5% {100 * metrics['within_5']:.1f}%  "
            f"within 10% {100 * metrics['within_10']:.1f}%  tau {fmt(metrics['kendall_tau'], '.3f')}  "
            f"rho {fmt(metrics['spearman_rho'], '.3f')}")


@click.group()
def predictor() -> None:
    """Latency predictors: train, evaluate, predict, compare models, adapt to new hardware."""


@predictor.command()
@data_option
@click.option("--model", type=click.Choice(list(MODELS)), default=DEFAULT_MODEL, show_default=True,
              help="Model to train: " + "; ".join(f"{n}: {s.description}" for n, s in MODELS.items()))
@click.option("--out", type=_out, required=True, help="Predictor file to write.")
@statistic_option
@seed_option
def train(data: Path, model: str, out: Path, statistic: str | None, seed: int) -> None:
    """Train a predictor on a latency CSV (held-out metrics are stored with it)."""
    pred = train_predictor(read_dataset(data, statistic or "trimmed-mean"), model, seed=seed)
    save_predictor(pred, out)
    metrics = pred.metadata["metrics"]
    held = _metrics_line(metrics["holdout"]) if metrics else "no held-out metrics (under 20 rows)"
    click.echo(f"{model} ({pred.feature_set} features, targets {'+'.join(pred.targets)}) -> {out}")
    click.echo(f"held-out: {held}")


@predictor.command(name="eval")
@click.option("--predictor", "predictor_file", type=_csv, required=True, help="Predictor file.")
@data_option
@click.option("--json", "json_out", type=_out, help="Write the metrics as JSON here.")
@statistic_option
@click.option("--confidence", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help=f"Confidence of the intervals whose coverage is reported.  [default: {INTERVAL_CONFIDENCE}]")
def evaluate(predictor_file: Path, data: Path, json_out: Path | None, statistic: str | None,
             confidence: float | None) -> None:
    """Score a saved predictor on measured rows (total latency), and the coverage of its intervals."""
    pred = load_predictor(predictor_file)
    learned = pred.metadata.get("data", {}).get("latency_statistic", "trimmed-mean")
    df = read_dataset(data, statistic or learned)
    check_space(getattr(pred, "space", None), df, str(data))
    predicted, inputs = pred.predict_with_inputs(df)
    measured = measured_total(df)
    metrics = latency_metrics(measured, predicted)
    click.echo(_metrics_line(metrics))
    if pred.intervals is not None:
        level = confidence or INTERVAL_CONFIDENCE
        metrics[f"coverage_{round(100 * level)}"] = coverage = pred.intervals.coverage(
            measured, predicted, level, **inputs)
        click.echo(f"{level:.0%} intervals ({pred.intervals.method}, {pred.intervals.rows} scored rows) "
                   f"cover {coverage:.1%} of the rows")
    if json_out:
        report = {**metrics, "predictor": str(predictor_file), "data": str(data),
                  "model": pred.metadata.get("model"),
                  "device": pred.metadata.get("data", {}).get("device")}
        write_atomically(json_out, json.dumps(report, indent=2) + "\n")


@predictor.command()
@click.option("--predictor", "predictor_file", type=_csv, required=True, help="Predictor file.")
@click.option("--arch", "arch_file", type=_csv,
              help="Architectures: JSON lines (as `hatprof space sample` writes), one JSON object or a list.")
@click.option("--data", type=_csv, help="CSV with an arch column or HAT's feature columns.")
@click.option("--out", type=_out, help="Write predictions as CSV here (default: stdout).")
@confidence_option
def predict(predictor_file: Path, arch_file: Path | None, data: Path | None, out: Path | None,
            confidence: float | None) -> None:
    """Predict latency (ms) of architectures, with --confidence their intervals (and, for
    --data rows with measured latencies, the share the intervals cover)."""
    if (arch_file is None) == (data is None):
        raise click.UsageError("give exactly one of --arch and --data")
    pred = load_predictor(predictor_file)
    if arch_file is not None:
        archs = read_arch_lines(arch_file, None)
        if confidence is None:
            predicted, inputs = pred.predict_archs(archs), {}
        else:
            predicted, inputs = pred.predict_with_inputs(archs=archs)
        table = pd.DataFrame({"arch_id": [a.arch_id for a in archs], "predicted_ms": predicted})
    else:
        df = read_dataset(data)
        check_space(getattr(pred, "space", None), df, str(data))
        table = pred.predict_frame(df)
        inputs = {} if confidence is None else pred.interval_inputs(df)
        if "arch_id" in df.columns:
            table.insert(0, "arch_id", df["arch_id"])
    if confidence is not None:
        intervals = intervals_of(pred)
        table["lower_ms"], table["upper_ms"] = intervals.bounds(table["predicted_ms"].to_numpy(), confidence, **inputs)
        if data is not None:
            coverage = intervals.coverage(measured_total(df), table["predicted_ms"].to_numpy(), confidence, **inputs)
            click.echo(f"{confidence:.0%} intervals cover {coverage:.1%} of the {len(df)} measured rows", err=True)
    text = table.to_csv(index=False, float_format="%.4f")
    if out:
        write_atomically(out, text)
    else:
        click.echo(text, nl=False)


@predictor.command()
@data_option
@click.option("--models", default=",".join(MODELS), show_default=True,
              help="Comma-separated models to compare.")
@click.option("--plot", type=_out, help="Also draw predicted vs measured and the learning curve (PNG).")
@statistic_option
@seed_option
def compare(data: Path, models: str, plot: Path | None, statistic: str | None, seed: int) -> None:
    """Train every model on one split of the data and print one table of test metrics."""
    from predictor.evaluation import learning_curve, plot_evaluation, run_comparison

    names = [m.strip() for m in models.split(",") if m.strip()]
    unknown = [m for m in names if m not in MODELS]
    if unknown or not names:
        raise click.BadParameter(f"unknown model(s) {', '.join(unknown) or '(none)'}; "
                                 f"known: {', '.join(MODELS)}", param_hint="--models")
    df = read_dataset(data, statistic or "trimmed-mean")
    result = run_comparison(df, names, seed, on_model=ModelProgress("comparing"))
    click.echo(result.table.to_string(float_format=lambda v: f"{v:.4g}"))
    if plot:
        curve = learning_curve(df, names, seed=seed, on_model=ModelProgress("learning curve"))
        write_atomically(plot, lambda tmp: plot_evaluation(result, curve, str(tmp)))
        click.echo(f"plot -> {plot}")


#: Leave-one-out RMSPE (%) above which an adapted predictor is flagged: a predictor this far off
#: cannot tell apart candidates whose latencies differ by a fifth, about the gap between a search's
#: limit and the candidates it keeps, so a winner it picks may be well over the limit on the device.
#: HAT's own predictors reach a few percent; the reported bad adaptations were at 33-46%.
POOR_ADAPTATION_RMSPE = 20.0

class ModelProgress:
    """One stderr line before each model is fitted, with the time so far and an estimate of
    the time left (the mean per model so far: models differ, so it is rough)."""

    def __init__(self, label: str) -> None:
        self.label, self.start = label, time.monotonic()

    def __call__(self, name: str, index: int, count: int) -> None:
        elapsed = time.monotonic() - self.start
        eta = f", ETA {elapsed / index * (count - index):.0f} s" if index else ""
        click.echo(f"{self.label}: fitting {name} ({index + 1}/{count}), {elapsed:.0f} s elapsed{eta}", err=True)


base_option = click.option("--base", type=_csv, required=True, multiple=True,
                           help="Predictor of another device (repeat for several bases).")


@predictor.command()
@base_option
@space_option
@click.option("-k", "k", type=click.IntRange(min=1), default=20, show_default=True,
              help="Architectures to suggest.")
@click.option("--candidates", type=click.IntRange(min=1), default=4000, show_default=True,
              help="Architectures sampled from the space to choose from.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the candidates' sampling.")
@click.option("--out", type=_out, required=True, help="JSON lines of architectures (as `measure --archs` reads).")
def suggest(base: tuple[Path, ...], space, k: int, candidates: int, seed: int, out: Path) -> None:
    """Suggest the k architectures to measure on a new device: a farthest-point design over the
    base predictor's features, so that the rows cover the space the predictor sees."""
    archs = suggest_archs(_bases(base), k, space=space, n_candidates=candidates, seed=seed)
    write_atomically(out, "".join(a.canonical_json() + "\n" for a in archs))
    click.echo(f"{len(archs)} architectures of {space.name} -> {out}")


def _bases(paths: tuple[Path, ...] | Path) -> list:
    """The trained predictors of --base (one path too, as `demo` passes it)."""
    from predictor.core import LatencyPredictor

    out = []
    for path in (paths,) if isinstance(paths, Path) else paths:
        pred = load_predictor(path)
        if not isinstance(pred, LatencyPredictor):
            raise click.BadParameter(f"{path} is an adapted predictor; give a trained one", param_hint="--base")
        out.append(pred)
    return out


@predictor.command()
@base_option
@click.option("--data", type=_csv, help="Rows already measured on the new device.")
@click.option("--device", help="Or measure -k suggested architectures on this device ('local', or a "
                               "name from the inventory) first.")
@click.option("-k", "k", type=click.IntRange(min=1), default=20, show_default=True,
              help="With --device: architectures to suggest and measure.")
@click.option("--inventory", type=click.Path(dir_okay=False), default=None,
              help="Device inventory file (default: $HATPROF_DEVICES, then ~/.config/hatprof/devices.toml).")
@click.option("--measurements", type=_out, default=None,
              help="With --device: latency CSV the measured rows go to.  [default: OUT with .csv]")
@click.option("--seed", type=int, default=0, show_default=True, help="With --device: seed of the candidates.")
@protocol_options
@format_option
@click.option("--method", type=click.Choice(["auto", *METHODS]), default="auto", show_default=True,
              help="Correction of the base predictions (auto: all of them and the rows alone, "
                   "weighted by stacking their leave-one-out predictions on the rows; or macs alone "
                   f"unless the stack, left out whole, predicts the rows better by a paired t-test at "
                   f"{CHOICE_LEVEL:.0%}).")
@click.option("--out", type=_out, required=True, help="Adapted predictor file to write.")
@statistic_option
def adapt(base: tuple[Path, ...], data: Path | None, device: str | None, k: int, inventory: str | None,
          measurements: Path | None, seed: int, protocol, fmt: str, method: str, out: Path,
          statistic: str | None) -> None:
    """Adapt predictors of other devices to a new device from a few of its measured rows.

    With --device, the whole loop: suggest k architectures, measure them on the device (as
    `hatprof measure` does), adapt, and report the error estimated by leave-one-out of the
    whole adaptation (the rows are too few to hold any out).
    """
    if (data is None) == (device is None):
        raise click.UsageError("give exactly one of --data and --device")
    base_predictors = _bases(base)
    if device is not None:
        data = _measure_suggested(base_predictors, device, k, inventory, measurements or out.with_suffix(".csv"),
                                  seed, protocol, fmt)
    from hatprof.devices import progress_bar

    rows = read_dataset(data, statistic or "trimmed-mean")
    with progress_bar(len(rows), "leaving each row out of the adaptation") as bar:
        adapted = adapt_predictor(base_predictors, rows, method, progress=lambda: bar.update(1))
    loo = adapted.metadata["loo_rmspe"].get(adapted.method)
    cv = adapted.metadata.get("cross_validation")
    error = cv["rmspe"] if cv is not None else loo
    poor = error is not None and error > POOR_ADAPTATION_RMSPE
    adapted.metadata["poorly_adapted"] = poor
    save_predictor(adapted, out)
    weights = ", ".join(f"{name} {w:.2f}" for name, w in adapted.metadata["weights"].items())
    quality = f"; leave-one-out RMSPE {loo:.2f}%" if loo is not None else ""
    click.echo(f"{'! ' if poor else ''}{adapted.method} correction from {adapted.metadata['data']['rows']} rows "
               f"({weights}{quality}) -> {out}")
    choice = adapted.metadata.get("choice")
    if choice is not None:
        click.echo(f"kept {'the stack' if choice['chosen'] == 'stack' else PRIOR_KIND + ' alone'}: leave-one-out "
                   f"MAPE {choice[PRIOR_KIND]:.2f}% for {PRIOR_KIND} alone, {choice['stack']:.2f}% for the stack "
                   f"left out whole (paired t {choice['t']:.2f}; the stack needs a significant gain)")
    if cv is not None:
        click.echo(f"held-out error by leave-one-out of the adaptation: {_metrics_line(cv)}")
    if poor:
        click.echo(f"! poorly adapted: its own leave-one-out RMSPE is {error:.1f}%, over "
                   f"{POOR_ADAPTATION_RMSPE:g}%; searches driven by it may miss their limit: measure more rows "
                   "(-k / --data) or a base closer to this device", err=True)


def _measure_suggested(bases: list, device: str, k: int, inventory: str | None, csv_path: Path, seed: int,
                       protocol, fmt: str) -> Path:
    """Suggest k architectures of the base's space and measure them on `device` into `csv_path`."""
    from hatprof.devices import open_device, run_measure
    from profiler.measure import MeasureJob

    space = bases[0].space
    if space is None:
        raise click.BadParameter("the base predictor records no design space (trained on HAT's feature "
                                 "rows?); measure rows yourself and pass --data", param_hint="--base")
    archs = suggest_archs(bases, k, space=space, seed=seed)
    workload = {"seq_len": bases[0].context.seq_len, "beam": bases[0].context.beam}
    protocol = dataclasses.replace(protocol, **workload)
    click.echo(f"measuring {len(archs)} suggested architectures on {device} (the base's workload: "
               f"{workload['seq_len']} tokens, beam {workload['beam']}) -> {csv_path}", err=True)
    target, protocol = open_device(device, protocol, None, inventory)
    try:
        results = run_measure(archs, MeasureJob(space=space, protocol=protocol, fmt=fmt), target, csv_path,
                              False, device)
    finally:
        target.close()
    failed = [r for r in results if not r.ok]
    if failed:
        raise click.ClickException(f"{len(failed)} of {len(archs)} architectures failed to measure on {device} "
                                   f"(first: {failed[0].message})")
    return csv_path
