"""`hatprof export`: one SubTransformer as an ONNX or TorchScript artifact directory."""
from __future__ import annotations

from pathlib import Path

import click

from profiler.errors import HatprofError
from profiler.export import export_arch
from hatprof.commands.measure import read_arch_lines
from hatprof.options import space_option
from profiler.space import DesignSpace


@click.command()
@space_option
@click.option("--arch", "arch_file", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Architecture JSON (a line as `hatprof space sample` prints, or HAT's nested form), "
                   "or one of HAT's published SubTransformer configs (.yml).")
@click.option("--format", "fmt", type=click.Choice(["onnx", "torchscript"]), default="onnx",
              show_default=True, help="Artifact format.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory to create (must not exist or be empty).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the weight initialisation.")
def export(space: DesignSpace, arch_file: Path, fmt: str, out: Path, seed: int) -> None:
    """Export the encoder, the encoder-decoder key/value projection and one cached
    decoder step, with a manifest, into OUT."""
    archs = read_arch_lines(arch_file, space)
    if len(archs) != 1:
        raise HatprofError(f"{arch_file} holds {len(archs)} architectures; export takes one "
                           "(give a file with one line)")
    arch = archs[0]
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise HatprofError(f"{out} exists and is not an empty directory")
    export_arch(arch, space, fmt, out, seed=seed)
    click.echo(f"exported {arch.arch_id} ({fmt}) to {out}")
