"""Entry point of the ``tcu`` console script.

Subcommands are plug-ins: every module in :mod:`tcu.cli` (other than this one
and private ``_x`` modules) defines ``register(subparsers)``, which adds its
parser and sets ``func`` to a callable ``(args) -> int``.

No traceback reaches the user without ``--debug``: an error from the
:class:`~tcu.errors.TcuError` tree (or an ``OSError``) prints one line and exits 1,
each error of an ``ExceptionGroup`` (a task group's) one line each, any other
exception (a bug) one line with its type and exits 70; a log record that carries an
exception and an exception that ends a thread are logged on one line too.
``--debug`` shows every traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
import threading
from collections.abc import Mapping, Sequence

import tcu.cli
from tcu import __version__
from tcu.errors import TcuError
from tcu.logfmt import FORMATS, TextFormatter, journal_stream, make_formatter

log = logging.getLogger(__name__)

EXIT_ERROR = 1
"""A :class:`TcuError` (bad input, configuration, unreachable resource) or an ``OSError``."""
EXIT_INTERNAL = 70
"""Any other exception: a bug (``EX_SOFTWARE``)."""

EXIT_BROKEN_PIPE = 141
"""The reader of stdout went away (128 + SIGPIPE, what a C tool killed by the signal returns)."""

_HINT = "run with --debug for the traceback"


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _log_level(text: str) -> str:
    level = text.upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(
            f"invalid choice: {text!r} (choose from {', '.join(lv.lower() for lv in LOG_LEVELS)})"
        )
    return level


def command_names() -> list[str]:
    """Every subcommand: one module of :mod:`tcu.cli` each (``main`` and ``_private`` excluded)."""
    return sorted(
        info.name
        for info in pkgutil.iter_modules(tcu.cli.__path__)
        if info.name != "main" and not info.name.startswith("_")
    )


def _chosen_command(argv: Sequence[str]) -> tuple[int, str] | None:
    """Where the subcommand is in ``argv`` and its name (skipping the options of ``tcu`` itself)."""
    skip = False
    for index, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg == "--log-level":
            skip = True
        elif arg == "--":
            return None
        elif not arg.startswith("-"):
            return index, arg
    return None


def build_parser(only: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; ``only`` registers just those subcommands (their modules alone are imported)."""
    parser = argparse.ArgumentParser(
        prog="tcu",
        description="Connected-vehicle telematics gateway: agent, ingest, demo and CAN tools.",
        epilog="Example: tcu demo --duration 60 --speed max",
    )
    parser.add_argument("--version", action="version", version=f"tcu {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument(
        "--log-level",
        type=_log_level,
        default="INFO",
        help=f"log level: {', '.join(lv.lower() for lv in LOG_LEVELS)} (default: info)",
    )
    parser.add_argument(
        "--log-format",
        choices=FORMATS,
        default="text",
        help="text, or json: one object per line with ts, level, logger, msg and extras (default: text)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in command_names() if only is None else only:
        module = importlib.import_module(f"tcu.cli.{name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(subparsers)
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv``, importing only the chosen subcommand's module (all of them for the overall help).

    A module with ``PASS_THROUGH = True`` (``tcu sim``) gets every argument after its name, unparsed,
    as ``args.passed``."""
    chosen = _chosen_command(argv)
    if chosen is None:
        needs_all = not argv or any(a in ("-h", "--help") for a in argv) or "--version" not in argv
        return build_parser(None if needs_all else []).parse_args(argv)
    index, name = chosen
    if name not in command_names():
        return build_parser().parse_args(argv)  # argparse names the valid choices
    module = importlib.import_module(f"tcu.cli.{name}")
    if getattr(module, "PASS_THROUGH", False):
        args = build_parser([name]).parse_args(argv[: index + 1])
        rest = list(argv[index + 1 :])
        args.passed = rest[1:] if rest[:1] == ["--"] else rest
        return args
    return build_parser([name]).parse_args(argv)


OneLineFormatter = TextFormatter
"""The text format without ``--debug`` (kept under its old name; see :mod:`tcu.logfmt`)."""


def _thread_excepthook(hook: threading.ExceptHookArgs) -> None:
    if hook.exc_type is SystemExit:
        return
    name = hook.thread.name if hook.thread is not None else "?"
    exc_info = (hook.exc_type, hook.exc_value, hook.exc_traceback) if hook.exc_value is not None else None
    logging.getLogger("tcu").error("thread %s ended with an exception", name, exc_info=exc_info)


def configure_logging(
    level: str, debug: bool, fmt: str = "text", env: Mapping[str, str] | None = None
) -> None:
    """Log to stderr in ``fmt`` (:mod:`tcu.logfmt`); without ``debug`` no record prints a traceback.

    Under systemd (``$JOURNAL_STREAM`` is stderr) lines carry ``<N>`` priorities and no timestamp.
    """
    handler = logging.StreamHandler(sys.stderr)
    journal = journal_stream(os.environ if env is None else env, sys.stderr)
    handler.setFormatter(make_formatter(fmt, debug=debug, journal=journal))
    logging.basicConfig(
        level=logging.DEBUG if debug else getattr(logging, level.upper()),
        handlers=[handler],
    )
    if not debug:
        threading.excepthook = _thread_excepthook
        logging.getLogger("numexpr").setLevel(logging.WARNING)  # its import says how many threads


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def report_error(command: str, exc: BaseException) -> int:
    """One line per error on stderr; the exit code (1 for ours and OS errors, 70 for a bug)."""
    code = EXIT_ERROR
    for leaf in _leaves(exc):
        if isinstance(leaf, TcuError | OSError):
            print(f"tcu {command}: error: {leaf}", file=sys.stderr)
        elif isinstance(leaf, KeyboardInterrupt):
            code = max(code, 130)
        else:
            print(f"tcu {command}: internal error: {type(leaf).__name__}: {leaf} ({_HINT})", file=sys.stderr)
            code = EXIT_INTERNAL
    return code


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if getattr(args, "func", None) is None:
        build_parser().print_help()
        return 2
    configure_logging(args.log_level, args.debug, args.log_format)
    try:
        result: int = args.func(args)
        sys.stdout.flush()
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `tcu ... | head`: the reader has gone, as for can-utils
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return EXIT_BROKEN_PIPE
    except SystemExit:
        raise
    except BaseException as exc:
        if args.debug:
            raise
        return report_error(args.command, exc)
    return result


if __name__ == "__main__":
    sys.exit(main())
