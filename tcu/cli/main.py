"""Entry point of the ``tcu`` console script.

Subcommands are plug-ins: every module in :mod:`tcu.cli` (other than this one
and private ``_x`` modules) defines ``register(subparsers)``, which adds its
parser and sets ``func`` to a callable ``(args) -> int``. Errors from the
:class:`~tcu.errors.TcuError` tree print one line (``--debug`` shows the trace).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Sequence

import tcu.cli
from tcu import __version__
from tcu.errors import TcuError

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tcu",
        description="Connected-vehicle telematics gateway: agent, ingest, demo and CAN tools.",
        epilog="Example: tcu demo --duration 60 --speed max",
    )
    parser.add_argument("--version", action="version", version=f"tcu {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("--log-level", default="INFO", help="log level (default: INFO)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(tcu.cli.__path__), key=lambda m: m.name):
        if info.name == "main" or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"tcu.cli.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(subparsers)
    return parser


def configure_logging(level: str, debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    configure_logging(args.log_level, args.debug)
    try:
        result: int = args.func(args)
    except TcuError as exc:
        if args.debug:
            raise
        print(f"tcu {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
