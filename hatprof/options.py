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
    from profiler.protocol import SPACE_SEQ_LEN, TimingProtocol, default_seq_len

    defaults = TimingProtocol()
    options = [
        click.option("--runs", type=int, default=defaults.runs, show_default=True,
                     help="Timed runs per architecture and part that the label is made of (HAT: 300); "
                          "converging, at least this many clean ones."),
        click.option("--warmup", type=int, default=defaults.warmup, show_default=True,
                     help="Untimed runs before each round."),
        click.option("--trim", type=float, default=defaults.trim, show_default=True,
                     help="Fraction of fastest and of slowest runs dropped before the mean."),
        click.option("--rounds", type=int, default=None,
                     help="Rounds the runs are split into, interleaved over architectures; converging, "
                          f"at least this many clean ones.  [default: {defaults.rounds}; "
                          f"{TimingProtocol.hat().rounds} with --fixed]"),
        click.option("--precision", type=float, default=defaults.precision, show_default=True,
                     help="Converge: time more rounds until the 95% interval of the label across clean "
                          "rounds is within +-this fraction (or a budget below is spent)."),
        click.option("--max-rounds", type=int, default=defaults.max_rounds, show_default=True,
                     help="Budget: rounds per architecture, clean or discarded."),
        click.option("--max-seconds", type=float, default=None,
                     help="Budget: seconds of timing per architecture.  [default: no limit]"),
        click.option("--fixed", is_flag=True,
                     help="HAT's fixed protocol instead: exactly --runs runs in --rounds rounds, every "
                          "round kept, none added (for exact replication of HAT's numbers)."),
        click.option("--canary-every", type=int, default=defaults.canary_every, show_default=True,
                     help="Time the reference kernel (canary) every this many runs, to spot disturbed "
                          "rounds (0: never)."),
        click.option("--duet", is_flag=True,
                     help="Duet mode: time the space's smallest SubTransformer before "
                          "and after every run instead of the canary, and restate each run by them, so a "
                          "burst that slows both cancels; rounds whose reference ran off its calibrated "
                          "level are measured again (the row records the scale used)."),
        click.option("--max-temp", "max_temp_c", type=float, default=defaults.max_temp_c, show_default=True,
                     help="Before a round, wait while the board is this hot (degrees C), its firmware "
                          "says it is throttled, or (converging; 60 s at most per architecture) its "
                          "canary runs 25% slower than the machine's fast level..."),
        click.option("--cooldown", "cooldown_s", type=float, default=defaults.cooldown_s, show_default=True,
                     help="...but at most this many seconds (then the round is timed, and discarded)."),
        click.option("--threads", type=int, default=defaults.threads, show_default=True,
                     help="Runtime threads, each pinned to its own CPU."),
        click.option("--seq-len", type=int, default=None,
                     help="Source tokens and decoder steps, as HAT measured the space's models.  "
                          f"[default: {defaults.seq_len}; "
                          + "; ".join(f"{n} for {space}" for space, n in SPACE_SEQ_LEN.items()) + "]"),
        click.option("--beam", type=int, default=defaults.beam, show_default=True,
                     help="Beam size of the timed decode (HAT: 5)."),
    ]
    names = ("runs", "warmup", "trim", "rounds", "precision", "max_rounds", "max_seconds", "canary_every",
             "duet", "max_temp_c", "cooldown_s", "threads", "seq_len", "beam")

    @functools.wraps(command)
    def wrapper(*args, fixed: bool, **kwargs):
        settings = {name: kwargs.pop(name) for name in names}
        if settings["rounds"] is None:
            settings["rounds"] = TimingProtocol.hat().rounds if fixed else defaults.rounds
        if settings["seq_len"] is None:
            space = kwargs.get("space")
            settings["seq_len"] = default_seq_len(getattr(space, "name", None))
        if fixed:
            given = click.get_current_context().get_parameter_source("precision")
            if given is not click.core.ParameterSource.DEFAULT:
                raise click.BadParameter("--fixed times a fixed number of runs; it takes no --precision",
                                         param_hint="--precision")
            settings["precision"] = 0.0
        try:
            protocol = TimingProtocol(**settings)
        except HatprofError as exc:
            raise click.BadParameter(str(exc), param_hint=_option_named(str(exc))) from None
        return command(*args, protocol=protocol, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


_OPTION_OF_FIELD = {"max_temp_c": "--max-temp", "cooldown_s": "--cooldown"}


def _option_named(message: str) -> str | None:
    """The option a protocol error is about (its messages start with the field's name)."""
    field = message.split()[0].strip("(") if message else ""
    return _OPTION_OF_FIELD.get(field, "--" + field.replace("_", "-")) if field.isidentifier() else None


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


class OutputFile(click.ParamType):
    """A file an option will write: checked when the command line is read, before any work
    (`profiler.files.check_writable`); missing parent folders are created when it is written."""

    name = "file"

    def convert(self, value, param: click.Parameter | None, ctx: click.Context | None) -> Path:
        from profiler.files import check_writable

        try:
            return check_writable(value)
        except HatprofError as exc:
            self.fail(str(exc), param, ctx)


output_file = OutputFile()
