"""`hatprof demo`: HAT's method end to end on this machine, as `make demo` runs it.

1. measure a few compact SubTransformers here with the full protocol;
2. adapt the predictor of the bundled dataset's device to this machine with those rows;
3. search the bundled supernet for the best SubTransformer under half the largest one's
   predicted latency (a short search: HAT's defaults take longer than a demo should);
4. measure the largest SubTransformer and the winner here, with their inherited weights.
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from hatprof.devices import open_device, run_measure
from hatprof.options import protocol_options
from profiler.bundled import CHECKPOINT, DATASET, bundled_path
from profiler.errors import HatprofError
from profiler.files import check_writable
from profiler.measure import MeasureJob
from profiler.protocol import TimingProtocol
from profiler.space import load_space


@click.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-out"),
              show_default=True, help="Directory for the demo's files (a rerun resumes the measurements).")
@click.option("--samples", type=click.IntRange(min=3), default=8, show_default=True,
              help="Architectures sampled from the compact space and measured here.")
@click.option("--iterations", type=click.IntRange(min=1), default=6, show_default=True,
              help="Search iterations (HAT: 30).")
@click.option("--population", type=click.IntRange(min=5), default=40, show_default=True,
              help="Search population (HAT: 125).")
@protocol_options
@click.pass_context
def demo(ctx: click.Context, out: Path, samples: int, iterations: int, population: int,
         protocol: TimingProtocol) -> None:
    """Measure -> predictor -> search -> measure the winner, on the bundled defaults."""
    import torch

    from hatprof.commands.predictor import adapt, train
    from hatprof.commands.search import SearchProgress, echo_table, measuring
    from nas.experiment import SearchTask, search_and_measure
    from nas.latency import PredictedLatency
    from nas.search import SearchSettings

    space = load_space("compact")
    try:  # before any work: a demo that cannot write its files fails now, in one line
        check_writable(out / "search.json")
    except HatprofError as exc:
        raise click.BadParameter(str(exc), param_hint="--out") from None
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "local.csv"
    click.echo(f"1/4 measuring {samples} compact SubTransformers on this machine")
    target, protocol = open_device("local", protocol)
    try:
        run_measure(space.sample_many(samples, seed=0), MeasureJob(space=space, protocol=protocol),
                    target, csv_path, resume=csv_path.exists(), device="local")
    finally:
        target.close()
    _print_table(csv_path)

    click.echo(f"\n2/4 predictor: trained on {DATASET}, adapted to this machine")
    base, local = out / "bundled.predictor", out / "local.predictor"
    ctx.invoke(train, data=bundled_path(DATASET), out=base)
    ctx.invoke(adapt, base=base, data=csv_path, out=local)

    latency = PredictedLatency.load(local)
    limit = 0.5 * latency([space.largest()])[0]
    click.echo(f"\n3/4 search: lowest validation loss under {limit:.2f} ms "
               f"(half the largest SubTransformer's predicted latency)")
    click.echo("4/4 then the largest SubTransformer and the winner are measured here")
    torch.set_num_threads(1)  # as `hatprof search` does by default
    task = SearchTask.load(bundled_path(CHECKPOINT))
    settings = SearchSettings(iterations=iterations, population=population)
    with measuring("local", protocol.runs, task.net, out / "search.measured.csv", latency) as measure:
        record = search_and_measure(task, latency, [limit], settings, measure,
                                    on_iteration=SearchProgress(1, iterations))
    (out / "search.json").write_text(json.dumps(record, indent=2) + "\n")
    echo_table(record["reference"], record["runs"])


def _print_table(csv_path: Path) -> None:
    from profiler.dataset import read_dataset

    df = read_dataset(csv_path)
    click.echo(f"\n{csv_path}: {len(df)} SubTransformers, latency in ms (trimmed mean of "
               f"{df['runs'].iloc[0]} runs in {df['rounds'].iloc[0]} rounds)")
    click.echo(f"{'arch_id':16}  {'enc dim':>7} {'dec layers':>10} {'encoder':>9} {'decoder':>9} "
               f"{'total':>9} {'cv dec':>7}  stable")
    for _, r in df.sort_values("latency_ms").iterrows():
        click.echo(f"{r['arch_id']:16}  {int(r['encoder_embed_dim']):7d} {int(r['decoder_layer_num']):10d} "
                   f"{r['latency_mean_encoder']:9.2f} {r['latency_mean_decoder']:9.2f} "
                   f"{r['latency_ms']:9.2f} {r['cv_decoder']:7.3f}  {'no' if r['unstable'] else 'yes'}")
