"""One definition of each CLI option shared by several commands (pip-tools style)."""
from __future__ import annotations

import functools
from pathlib import Path

import click

from profiler.errors import HatprofError


def _load_space(ctx: click.Context, param: click.Parameter, value: str):
    from profiler.space import load_space

    try:
        return load_space(value)
    except HatprofError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


space_option = click.option(
    "--space", callback=_load_space, default="compact", show_default=True,
    help="Built-in design space name (see `hatprof space list`) or a .yaml/.json space file.")
seed_option = click.option("--seed", type=int, default=0, show_default=True,
                           help="Seed of the architecture sampling.")
format_option = click.option(
    "--format", "fmt", type=click.Choice(["onnx", "torchscript", "eager"]), default="onnx",
    show_default=True,
    help="Artifact to time: onnx (onnxruntime), torchscript, or eager PyTorch (reference).")


def protocol_options(command):
    """Add the timing-protocol options; the command receives one `protocol` (TimingProtocol)."""
    from profiler.protocol import TimingProtocol

    defaults = TimingProtocol()
    options = [
        click.option("--runs", type=int, default=defaults.runs, show_default=True,
                     help="Timed runs per architecture and part (split over the rounds)."),
        click.option("--warmup", type=int, default=defaults.warmup, show_default=True,
                     help="Untimed runs before each round."),
        click.option("--trim", type=float, default=defaults.trim, show_default=True,
                     help="Fraction of fastest and of slowest runs dropped before the mean."),
        click.option("--rounds", type=int, default=defaults.rounds, show_default=True,
                     help="Separate rounds per architecture, interleaved over architectures."),
        click.option("--threads", type=int, default=defaults.threads, show_default=True,
                     help="Runtime threads, each pinned to its own CPU."),
        click.option("--seq-len", type=int, default=defaults.seq_len, show_default=True,
                     help="Source tokens and decoder steps (HAT: 30)."),
        click.option("--beam", type=int, default=defaults.beam, show_default=True,
                     help="Beam size of the timed decode (HAT: 5)."),
    ]

    @functools.wraps(command)
    def wrapper(*args, runs, warmup, trim, rounds, threads, seq_len, beam, **kwargs):
        try:
            protocol = TimingProtocol(warmup=warmup, runs=runs, trim=trim, rounds=rounds,
                                      threads=threads, seq_len=seq_len, beam=beam)
        except HatprofError as exc:
            raise click.BadParameter(str(exc)) from None
        return command(*args, protocol=protocol, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def cpus_option(command):
    """`--cpus 2,3`: the CPUs to pin to (default: chosen from the current affinity)."""

    def parse(ctx: click.Context, param: click.Parameter, value: str | None):
        if value is None:
            return None
        from profiler.metadata import parse_cpus

        try:
            return parse_cpus(value)
        except HatprofError as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from None

    return click.option("--cpus", callback=parse, default=None,
                        help="CPUs to pin the measurement to, e.g. '3' or '2-3' (default: the "
                             "highest-numbered ones allowed, one per thread).")(command)


interleave_option = click.option(
    "--interleave", type=click.IntRange(min=1), default=4, show_default=True,
    help="Architectures measured together, their rounds interleaved (a kill loses at most these rows).")
retry_unstable_option = click.option(
    "--retry-unstable", type=click.IntRange(min=0), default=0, show_default=True,
    help="Measure an architecture flagged unstable again, up to this many times.")
cache_dir_option = click.option(
    "--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Artifact cache (default: $HATPROF_CACHE, then ~/.cache/hatprof/artifacts).")
