"""``tcu sim``: run the vehicle simulator (``python -m sim``) in this process's place.

``tcu`` never imports ``sim``; this command only executes it, passing every
argument through.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

from tcu.errors import TcuError

PASS_THROUGH = True
"""Every argument after ``sim`` goes to the simulator unparsed (``tcu.cli.main.parse_args``)."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "sim",
        help="run the vehicle simulator (CAN over socketcand, ground truth); see 'tcu sim --help'",
        description="Execute the simulator (python -m sim) with the given arguments, all passed as they are.",
        epilog="Example: tcu sim --duration 60 --speed 10 --socketcand-port 29536",
        add_help=False,  # --help is the simulator's
    )
    p.set_defaults(func=run, passed=[])


def run(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("sim") is None:
        raise TcuError("the simulator package 'sim' is not installed (pip install -e . installs it)")
    sim_args: list[str] = args.passed
    os.execv(sys.executable, [sys.executable, "-m", "sim", *sim_args])
    return 0  # not reached
