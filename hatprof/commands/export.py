"""`hatprof export`: one SubTransformer as an ONNX or TorchScript artifact directory."""
from __future__ import annotations

from pathlib import Path

import click

from profiler.errors import HatprofError
from profiler.export import export_arch
from profiler.hat_configs import is_hat_config_file, read_hat_config
from hatprof.options import space_option
from profiler.space import ArchConfig, DesignSpace


@click.command()
@space_option
@click.option("--arch", "arch_file", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Architecture JSON (flat, as `hatprof space sample` prints, or HAT's nested form), "
                   "or one of HAT's published SubTransformer configs (.yml).")
@click.option("--format", "fmt", type=click.Choice(["onnx", "torchscript"]), default="onnx",
              show_default=True, help="Artifact format.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory to create (must not exist or be empty).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the weight initialisation.")
def export(space: DesignSpace, arch_file: Path, fmt: str, out: Path, seed: int) -> None:
    """Export the encoder, the encoder-decoder key/value projection and one cached
    decoder step, with a manifest, into OUT."""
    if is_hat_config_file(arch_file):
        arch = read_hat_config(arch_file)
    else:
        try:
            text = arch_file.read_text()
        except OSError as exc:
            raise HatprofError(f"cannot read {arch_file}: {exc.strerror}") from None
        arch = ArchConfig.from_json(text)
    arch.validate(space)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise HatprofError(f"{out} exists and is not an empty directory")
    export_arch(arch, space, fmt, out, seed=seed)
    click.echo(f"exported {arch.arch_id} ({fmt}) to {out}")
