"""The `hatprof` command line: thin click commands over the library.

Subcommands are imported only when they are used, so a command never loads the
libraries of another (the agent side needs no torch). Domain errors (`HatprofError`) become one line
on stderr and exit status 1; usage errors are click's (exit status 2).
"""
from __future__ import annotations

import importlib
import logging
import sys

import click

from profiler.errors import HatprofError

# name -> "module:attribute" of a click command or group
_COMMANDS = {
    "space": "hatprof.commands.space:space",
    "export": "hatprof.commands.export:export",
    "measure": "hatprof.commands.measure:measure",
    "dataset": "hatprof.commands.dataset:dataset",
    "demo": "hatprof.commands.demo:demo",
    "predictor": "hatprof.commands.predictor:predictor",
    "supernet": "hatprof.commands.search:supernet",
    "search": "hatprof.commands.search:search",
    "agent": "hatprof.commands.agents:agent",
    "devices": "hatprof.commands.agents:devices",
    "collect": "hatprof.commands.agents:collect",
}


_OWN_PACKAGES = {"hatprof", "profiler", "predictor", "nas", "device_agents"}


class _LazyGroup(click.Group):
    """A group whose commands are imported on first use, turning domain errors into one line."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = _COMMANDS.get(name)
        if target is None:
            return None
        module, attribute = target.split(":")
        try:
            return getattr(importlib.import_module(module), attribute)
        except ModuleNotFoundError as exc:
            missing = exc.name or "a dependency"
            if missing.split(".")[0] in _OWN_PACKAGES:
                raise
            raise click.ClickException(
                f"'hatprof {name}' needs {missing}; install the workstation extra: "
                "pip install 'hatprof[workstation]'") from None

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except HatprofError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="hatprof")
def cli(verbose: int) -> None:
    """hatprof: measure Transformer latency on real devices, learn predictors, search.

    \b
    Typical flow:
      hatprof measure --device local --space compact --samples 20 --out local.csv
      hatprof predictor train --data local.csv --out local.predictor
      hatprof search --predictor local.predictor --latency-limit-ms 40 --out result.json
    """
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s")


def main(args: list[str] | None = None) -> None:
    """Run the CLI; every error is one line on stderr (usage errors exit 2, others 1)."""
    try:
        cli.main(args=args, prog_name="hatprof", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:  # a bare `hatprof` (or group): its help, as git does
        click.echo(exc.ctx.get_help())
        sys.exit(0)
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        click.echo(f"Error: {exc.format_message()}{hint}", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"Error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
