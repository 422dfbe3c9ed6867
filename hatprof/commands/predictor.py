"""`hatprof predictor ...`: train, evaluate, apply, compare and adapt latency predictors.

Thin commands over the library; domain errors propagate as `HatprofError` for the main
CLI to print as one line.
"""
from __future__ import annotations

import json
from pathlib import Path

import click
import pandas as pd

from profiler.dataset import LATENCY_STATISTICS, read_dataset
from hatprof.commands.measure import read_arch_lines
from hatprof.options import output_file
from profiler.files import write_atomically

from predictor.core import DEFAULT_MODEL, MODELS, train_predictor
from predictor.data import measured_total
from predictor.metrics import latency_metrics
from predictor.persistence import load_predictor, save_predictor
from predictor.transfer import METHODS
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
def evaluate(predictor_file: Path, data: Path, json_out: Path | None, statistic: str | None) -> None:
    """Score a saved predictor on measured rows (total latency)."""
    pred = load_predictor(predictor_file)
    learned = pred.metadata.get("data", {}).get("latency_statistic", "trimmed-mean")
    df = read_dataset(data, statistic or learned)
    predicted = pred.predict_frame(df)["predicted_ms"].to_numpy()
    metrics = latency_metrics(measured_total(df), predicted)
    click.echo(_metrics_line(metrics))
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
def predict(predictor_file: Path, arch_file: Path | None, data: Path | None, out: Path | None) -> None:
    """Predict latency (ms) of architectures."""
    if (arch_file is None) == (data is None):
        raise click.UsageError("give exactly one of --arch and --data")
    pred = load_predictor(predictor_file)
    if arch_file is not None:
        archs = read_arch_lines(arch_file, None)
        table = pd.DataFrame({"arch_id": [a.arch_id for a in archs],
                              "predicted_ms": pred.predict_archs(archs)})
    else:
        df = read_dataset(data)
        table = pred.predict_frame(df)
        if "arch_id" in df.columns:
            table.insert(0, "arch_id", df["arch_id"])
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
    result = run_comparison(df, names, seed)
    click.echo(result.table.to_string(float_format=lambda v: f"{v:.4g}"))
    if plot:
        curve = learning_curve(df, names, seed=seed)
        write_atomically(plot, lambda tmp: plot_evaluation(result, curve, str(tmp)))
        click.echo(f"plot -> {plot}")


@predictor.command()
@click.option("--base", type=_csv, required=True, help="Predictor of another device.")
@click.option("--data", type=_csv, required=True, help="A few rows measured on the new device.")
@click.option("--method", type=click.Choice(["auto", *METHODS]), default="auto", show_default=True,
              help="Correction of the base predictions (auto: best by leave-one-out on the rows).")
@click.option("--out", type=_out, required=True, help="Adapted predictor file to write.")
@statistic_option
def adapt(base: Path, data: Path, method: str, out: Path, statistic: str | None) -> None:
    """Adapt a predictor to a new device from a few of its measured rows."""
    adapted = adapt_predictor(load_predictor(base), read_dataset(data, statistic or "trimmed-mean"), method)
    save_predictor(adapted, out)
    scales = ", ".join(f"{t} x{c.scale:.3g}" for t, c in adapted.corrections.items())
    loo = adapted.metadata["loo_rmspe"].get(adapted.method)
    quality = f", leave-one-out RMSPE {loo:.2f}%" if loo is not None else ""
    click.echo(f"{adapted.method} correction from {adapted.metadata['data']['rows']} rows "
               f"({scales}{quality}) -> {out}")

