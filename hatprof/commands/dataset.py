"""`hatprof dataset import-hat|info`: bring HAT's files in, summarise any dataset."""
from __future__ import annotations

import json
from pathlib import Path

import click

from profiler.dataset import dataset_info, import_hat
from profiler.space import load_space


@click.group()
def dataset() -> None:
    """Latency datasets (CSV files with a raw-samples sidecar)."""


@dataset.command("import-hat")
@click.argument("src", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="CSV to write in hatprof's schema (must not exist).")
@click.option("--device", default=None, help="Device name for the rows (default: the file's stem).")
@click.option("--space", "space_name", default=None,
              help="Design space of the rows, recorded in them (e.g. wmt14.en-de, iwslt14.de-en).  "
                   "[default: the smallest built-in space that holds every row's features]")
def import_hat_command(src: Path, out: Path, device: str | None, space_name: str | None) -> None:
    """Convert one of HAT's published latency CSVs (10 features + 4 latencies, ms)."""
    space = None if space_name is None else load_space(space_name)
    rows, space = import_hat(src, out, device=device, space=space)
    click.echo(f"imported {rows} rows of space {space.name} from {src} into {out}")


@dataset.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def info(path: Path, as_json: bool) -> None:
    """Rows, devices, settings, latency range and unstable rows of a dataset."""
    summary = dataset_info(path)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"{summary['path']}: {summary['rows']} rows")
    click.echo(f"  devices:  {', '.join(map(str, summary['devices'])) or '-'}")
    for name, values in summary["settings"].items():
        if name != "device":
            click.echo(f"  {name + ':':9} {', '.join(map(str, values)) or '-'}")
    latency = summary["latency_ms"]
    if latency:
        click.echo(f"  latency:  {latency['min']:.2f} / {latency['median']:.2f} / {latency['max']:.2f} ms "
                   "(min / median / max)")
    unstable = summary["unstable"]
    click.echo(f"  unstable: {'-' if unstable is None else unstable}")
    click.echo(f"  raw samples: {summary['raw_sidecar'] or 'none'}")
