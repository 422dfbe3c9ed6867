"""`hatprof demo`: the main job on the bundled defaults, as `make demo` runs it."""
from __future__ import annotations

from pathlib import Path

import click

from profiler.commands.measure import run_measure
from profiler.measure import MeasureJob
from profiler.options import protocol_options
from profiler.protocol import TimingProtocol
from profiler.space import load_space
from profiler.target import LocalTarget


@click.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-out"),
              show_default=True, help="Directory for the demo's dataset (a rerun resumes it).")
@click.option("--samples", type=click.IntRange(min=1), default=6, show_default=True,
              help="Architectures sampled from the compact space.")
@protocol_options
def demo(out: Path, samples: int, protocol: TimingProtocol) -> None:
    """Measure a few compact SubTransformers on this machine with the full protocol."""
    space = load_space("compact")
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "local.csv"
    archs = space.sample_many(samples, seed=0)
    target = LocalTarget(threads=protocol.threads)
    try:
        run_measure(archs, MeasureJob(space=space, protocol=protocol), target, csv_path,
                    resume=csv_path.exists(), device="local")
    finally:
        target.close()
    _print_table(csv_path)


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
