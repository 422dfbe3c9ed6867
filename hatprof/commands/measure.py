"""`hatprof measure`: time sampled SubTransformers on one device into a latency dataset."""
from __future__ import annotations

import json
from pathlib import Path

import click

from hatprof.devices import open_device, run_measure
from hatprof.options import (cache_dir_option, cpus_option, format_option, interleave_option, protocol_options,
                             retry_unstable_option, seed_option, space_option)
from profiler.errors import HatprofError
from profiler.hat_configs import is_hat_config_file, read_hat_config
from profiler.measure import ArchResult, MeasureJob
from profiler.protocol import TimingProtocol
from profiler.space import ArchConfig, DesignSpace


def read_arch_lines(path: Path, space: DesignSpace | None) -> list[ArchConfig]:
    """Architectures from a file of JSON lines (as `hatprof space sample` writes), one JSON
    object or list, or the one in a HAT SubTransformer config (.yml); validated against
    `space` when one is given."""
    def check(arch: ArchConfig) -> ArchConfig:
        return arch if space is None else arch.validate(space)

    if is_hat_config_file(path):
        arch = read_hat_config(path)  # its errors name the file
        try:
            return [check(arch)]
        except HatprofError as exc:
            raise HatprofError(f"{path}: {exc}") from None
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise HatprofError(f"{path} is not a text file of architectures (JSON lines, as "
                           "`hatprof space sample` writes)") from None
    except OSError as exc:
        raise HatprofError(f"cannot read {path}: {exc.strerror}") from None
    try:
        whole = json.loads(text)
    except ValueError:  # not one JSON value: JSON lines
        items = [(number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    else:
        items = [(None, json.dumps(item)) for item in (whole if isinstance(whole, list) else [whole])]
    archs = []
    for number, line in items:
        try:
            archs.append(check(ArchConfig.from_json(line)))
        except HatprofError as exc:
            raise HatprofError(f"{path}{'' if number is None else f':{number}'}: {exc}") from None
    if not archs:
        raise HatprofError(f"{path} holds no architectures")
    return archs


def _result_line(result: ArchResult) -> str:
    if not result.ok:
        return f"{result.arch.arch_id}  FAILED ({result.error}): {result.message}"
    row = result.row
    notes = [f"+-{row['interval']:.1%}"] if row["interval"] is not None else []
    if row["rounds_discarded"]:
        notes.append(f"{row['rounds_discarded']} round(s) discarded ({row['discarded_why']})")
    if row["unstable"]:
        notes.append("UNSTABLE: did not converge" if row["converged"] is False else "UNSTABLE")
    return (f"{result.arch.arch_id}  encoder {row['latency_mean_encoder']:8.2f} ms  "
            f"decoder {row['latency_mean_decoder']:8.2f} ms  total {row['latency_ms']:8.2f} ms  "
            + "  ".join(notes)).rstrip()


@click.command()
@click.option("--device", default="local", show_default=True,
              help="'local', or a device name from the inventory (see `hatprof devices list`).")
@click.option("--inventory", type=click.Path(dir_okay=False), default=None,
              help="Device inventory file (default: $HATPROF_DEVICES, then ~/.config/hatprof/devices.toml).")
@space_option
@click.option("--samples", type=click.IntRange(min=1), default=None,
              help="Number of architectures to sample from the space.  [default: 10]")
@click.option("--archs", "archs_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Measure these architectures instead of sampling: JSON lines (as `hatprof space "
                   "sample` writes), or one of HAT's published SubTransformer configs (.yml).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Latency CSV to write; raw samples go to <name>.raw.jsonl beside it.")
@seed_option
@protocol_options
@format_option
@cpus_option
@click.option("--resume", is_flag=True,
              help="Append to an existing file of the same device and settings, skipping measured archs.")
@retry_unstable_option
@interleave_option
@cache_dir_option
def measure(device: str, inventory: str | None, space: DesignSpace, samples: int | None,
            archs_file: Path | None, out: Path, seed: int, protocol: TimingProtocol, fmt: str,
            cpus: set[int] | None, resume: bool, retry_unstable: int, interleave: int,
            cache_dir: Path | None) -> None:
    """Time SubTransformers with HAT's trimmed-mean statistic and write a latency dataset.

    Each architecture is exported (cached), then its encoder and its beam-search decoder
    are timed separately in rounds of warm-up and timed runs, interleaved over a few
    architectures. A round disturbed by other load (a slow reference kernel timed between
    runs, CPU taken by other processes, a hot or throttled board, a mean far from the other
    rounds) is discarded and timed again; rounds go on until the label's 95% interval across
    clean rounds is within --precision, or a budget is spent (then the row is flagged
    unstable). The label is the trimmed mean of the clean runs; every raw sample, discarded
    rounds included, goes to the sidecar. --fixed times HAT's fixed protocol instead.
    """
    if archs_file is not None and samples is not None:
        raise click.BadParameter("give --samples or --archs, not both")
    ctx = click.get_current_context()
    for option in ("threads", "cpus"):
        if device != "local" and ctx.get_parameter_source(option) != click.core.ParameterSource.DEFAULT:
            raise click.BadParameter(f"device {device!r} sets its own {option} in the inventory",
                                     param_hint=f"--{option}")
    archs = (read_arch_lines(archs_file, space) if archs_file is not None
             else space.sample_many(samples or 10, seed))
    target, protocol = open_device(device, protocol, cpus, inventory)
    job = MeasureJob(space=space, protocol=protocol, fmt=fmt, cache_dir=cache_dir,
                     interleave=interleave, retry_unstable=retry_unstable)
    try:
        results = run_measure(archs, job, target, out, resume, device,
                              on_result=lambda result: click.echo(_result_line(result)))
    finally:
        target.close()
    failed = [r for r in results if not r.ok]
    unstable = [r for r in results if r.ok and r.row["unstable"]]
    click.echo(f"{len(results) - len(failed)} measured into {out}, {len(unstable)} flagged unstable, "
               f"{len(failed)} failed", err=True)
    if failed:
        raise HatprofError(f"{len(failed)} architectures failed; rerun with --resume to retry them")
