"""`hatprof agent`, `hatprof devices` and `hatprof collect`: thin click commands.

`hatprof agent serve` hands its arguments to the agent's own argparse parser
(`python -m device_agents.agent`), so the device side keeps one definition of its
options and needs no click.
"""
from __future__ import annotations

from pathlib import Path

import click

from device_agents.client import AgentError, AgentUnavailable
from device_agents.inventory import DeviceSpec, load_inventory
from profiler.errors import DeviceError, ErrorCode
from hatprof.options import (cache_dir_option, format_option, interleave_option, output_file,
                              protocol_options, retry_unstable_option, seed_option, space_option)

inventory_option = click.option(
    "--inventory", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="Device inventory (devices.toml); default: $HATPROF_DEVICES, else ~/.config/hatprof/devices.toml.")


@click.group()
def agent() -> None:
    """The device agent: run it on each device you measure on."""


@agent.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                 "help_option_names": []})
@click.pass_context
def serve(ctx: click.Context) -> None:
    """Serve measurements over HTTP (see `hatprof agent serve --help`)."""
    from device_agents.agent import main

    ctx.exit(main(["serve", *ctx.args]))


@agent.command()
@click.option("--out", type=output_file, required=True,
              help="File to write the token to (mode 600); give it to the agent and the inventory.")
@click.option("--force", is_flag=True, help="Replace an existing token file (agents using it must restart).")
def token(out: Path, force: bool) -> None:
    """Write a new random token for an agent and its clients."""
    from device_agents.agent import write_token

    write_token(out, force)
    click.echo(f"wrote a new token to {out}")


@click.group()
def devices() -> None:
    """The devices named in the inventory."""


@devices.command("list")
@inventory_option
def list_(inventory: Path | None) -> None:
    """List the devices of the inventory and their agents."""
    inv = load_inventory(inventory)
    click.echo(f"inventory: {inv.path or 'none found'}")
    click.echo("local: this machine (no agent)")
    for name in inv.names():
        spec = inv.get(name)
        source = f"token_file {spec.token_file}" if spec.token_file else f"token_env {spec.token_env}"
        click.echo(f"{name}: {', '.join(spec.agents)} (threads {spec.threads}, {source})")


def _describe(info: dict) -> str:
    env = info.get("environment", {})
    libs = env.get("libraries") or {}
    versions = ", ".join(f"{k} {v}" for k, v in sorted(libs.items()) if v)
    return (f"protocol {info.get('protocol')}, host {env.get('hostname')}, {env.get('cpu_model')} "
            f"({env.get('logical_cores')} logical cores), {env.get('platform')}; {versions}; "
            f"formats {', '.join(info.get('agent', {}).get('formats', []))}")


def _check_agents(spec: DeviceSpec) -> bool:
    ok = True
    for client in spec.clients():
        client.retries = 0
        try:
            client.health()
        except (AgentUnavailable, AgentError) as exc:
            click.echo(f"{spec.name} {client.url}: unreachable ({exc})")
            ok = False
            continue
        try:
            info = client.info(spec.threads)
        except AgentError as exc:
            what = "not authenticated: wrong token" if exc.code == "unauthorized" else "failed"
            click.echo(f"{spec.name} {client.url}: reachable, {what} ({exc.code})")
            ok = False
            continue
        except AgentUnavailable as exc:
            click.echo(f"{spec.name} {client.url}: reachable, then failed ({exc})")
            ok = False
            continue
        click.echo(f"{spec.name} {client.url}: ok, {_describe(info)}")
    return ok


@devices.command()
@click.argument("name")
@inventory_option
def check(name: str, inventory: Path | None) -> None:
    """Is each agent of device NAME reachable and authenticated, and what does it run on?"""
    spec = load_inventory(inventory).get(name)
    if not _check_agents(spec):
        raise DeviceError(f"device {name!r}: not every agent is ready")


def _device_names(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise click.BadParameter("name at least one device", ctx=ctx, param=param)
    if len(set(names)) != len(names):
        raise click.BadParameter("a device is named twice", ctx=ctx, param=param)
    if "local" in names:
        raise click.BadParameter("collect measures through agents; use `hatprof measure --device local` "
                                 "for this machine", ctx=ctx, param=param)
    return names


@click.command()
@click.option("--devices", "names", callback=_device_names, required=True,
              help="Comma-separated device names from the inventory, e.g. rpi4,xeon.")
@inventory_option
@space_option
@click.option("--samples", type=click.IntRange(min=1), default=10, show_default=True,
              help="Number of architectures sampled from the space (the same on every device).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory of the datasets: <device>.csv and <device>.raw.jsonl.")
@seed_option
@protocol_options
@format_option
@retry_unstable_option
@interleave_option
@cache_dir_option
@click.option("--backend", type=click.Choice(["http", "ray"]), default="http", show_default=True,
              help="Reach devices through their HTTP agents (the inventory), or through a Ray cluster "
                   "whose nodes advertise device names as custom resources.")
@click.option("--address", default=None, help="Ray cluster address for --backend ray, e.g. HEAD:6379.")
@click.pass_context
def collect(ctx: click.Context, names: list[str], inventory: Path | None, space, samples: int, out_dir: Path,
            seed: int, protocol, fmt: str, interleave: int, retry_unstable: int, cache_dir: Path | None,
            backend: str, address: str | None) -> None:
    """Measure the same sampled architectures on several devices, in parallel, resumably.

    Each device's rows go to OUT/<device>.csv; a device's agents share its work. With
    the HTTP backend each device times with the `threads` of its inventory entry; with
    Ray, with --threads. Rerunning the same command skips the rows already present,
    after a crash or an agent's loss.
    """
    from device_agents.fleet import collect as run_collect
    from device_agents.fleet import fleet_from_inventory
    from profiler.measure import MeasureJob

    if fmt not in ("onnx", "torchscript"):
        raise click.BadParameter("agents time exported artifacts: onnx or torchscript", param_hint="--format")
    if backend == "ray":
        from device_agents.ray_backend import ray_fleet

        devices = ray_fleet(names, protocol, address)
    else:
        if ctx.get_parameter_source("threads") != click.core.ParameterSource.DEFAULT:
            raise click.BadParameter("each device times with the threads of its inventory entry",
                                     param_hint="--threads")
        if address is not None:
            raise click.BadParameter("--address is for --backend ray", param_hint="--address")
        devices = fleet_from_inventory(load_inventory(inventory), names, protocol)
    archs = space.sample_many(samples, seed)
    job = MeasureJob(space=space, protocol=protocol, fmt=fmt, cache_dir=cache_dir, interleave=interleave,
                     retry_unstable=retry_unstable)
    try:
        reports = run_collect(devices, archs, job, out_dir,
                              on_progress=lambda p: click.echo(p.line(), err=True))
    finally:
        for device in devices:
            for target in device.targets:
                target.close()
    failed, codes_seen = 0, set()
    for report in reports.values():
        codes = sorted({r.error for r in report.failed})
        click.echo(f"{report.device}: {report.already + report.measured}/{report.total} rows in {report.path} "
                   f"({report.measured} new, {report.already} already there), {len(report.failed)} failed"
                   + (f" ({', '.join(codes)})" if codes else "")
                   + (f"; lost agents: {', '.join(report.lost_agents)}" if report.lost_agents else ""))
        failed += len(report.failed)
        codes_seen.update(r.error for r in report.failed)
    if failed:
        raise DeviceError(f"{failed} measurements failed; {_what_next(codes_seen, fmt)}")


def _what_next(codes: set, fmt: str) -> str:
    """What would make a rerun succeed: it resumes, but only once the cause is gone."""
    if ErrorCode.FORMAT_NOT_ALLOWED in codes:
        return (f"an agent does not run {fmt} artifacts: start it with --allow-torchscript, or collect "
                "with --format onnx, then rerun the same command to resume")
    if ErrorCode.UNAVAILABLE in codes or ErrorCode.UNAUTHORIZED in codes:
        return ("an agent could not be reached (see `hatprof devices check <device>`): start it or fix the inventory, "
                "then rerun the same command to resume")
    return "rerun the same command to resume"
