"""The `hatprof` console script: the command line, or one clear line where it cannot run.

An agent-only install (`pip install hatprof[agent]`) gets this script too, without click;
it then points to the workstation extra and to `hatprof-agent`, instead of a traceback.
"""
from __future__ import annotations

import sys


def main() -> None:
    try:
        import click  # noqa: F401
    except ModuleNotFoundError:
        sys.exit("hatprof: the command line needs the workstation extra: pip install 'hatprof[workstation]'; "
                 "on a device, the agent is `hatprof-agent serve`")
    from hatprof.cli import main as cli_main

    cli_main()
