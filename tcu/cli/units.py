"""``tcu units``: the systemd unit files of the agent and the ingest (print, show or install)."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from tcu.errors import ConfigError

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "units",
        help="print or install the systemd unit files (tcu-agent.service, tcu-ingest.service)",
        description="Without options, list the unit files shipped with this installation. "
        "--install DIR writes them to DIR with ExecStart= pointing at this tcu executable.",
        epilog="Example: tcu units --install /etc/systemd/system --sysusers /usr/lib/sysusers.d "
        "&& systemd-sysusers && systemctl daemon-reload",
    )
    p.add_argument("--install", type=Path, metavar="DIR", help="write the unit files into DIR")
    p.add_argument("--sysusers", type=Path, metavar="DIR", help="also write tcu.conf (the tcu user) to DIR")
    p.add_argument("--show", metavar="UNIT", help="print one unit file as it would be installed")
    p.add_argument(
        "--exec",
        type=Path,
        metavar="PATH",
        help="the tcu executable for ExecStart= (default: the one running, else /usr/local/bin/tcu)",
    )
    p.set_defaults(func=run)


def _executable(given: Path | None) -> Path | None:
    """The tcu to run: ``--exec``, else this console script, else ``tcu`` on PATH (else the default)."""
    if given is not None:
        return given.absolute()
    argv0 = Path(sys.argv[0])
    if argv0.name == "tcu" and argv0.is_file():
        return argv0.absolute()
    found = shutil.which("tcu")
    return Path(found).absolute() if found else None


def run(args: argparse.Namespace) -> int:
    from tcu.systemd import SYSUSERS, UNITS, render

    exe = _executable(args.exec)
    if args.show:
        if args.show not in (*UNITS, SYSUSERS):
            raise ConfigError(
                f"unknown unit {args.show!r}; shipped: {', '.join((*UNITS, SYSUSERS))}", key="--show"
            )
        print(render(args.show, exe), end="")
        return 0
    if args.install is None and args.sysusers is None:
        import tcu.systemd

        folder = Path(tcu.systemd.__file__).parent
        for name in (*UNITS, SYSUSERS):
            print(folder / name)
        return 0
    written: list[Path] = []
    try:
        if args.install is not None:
            args.install.mkdir(parents=True, exist_ok=True)
            for name in UNITS:
                (args.install / name).write_text(render(name, exe), encoding="utf-8")
                written.append(args.install / name)
        if args.sysusers is not None:
            args.sysusers.mkdir(parents=True, exist_ok=True)
            (args.sysusers / "tcu.conf").write_text(render(SYSUSERS), encoding="utf-8")
            written.append(args.sysusers / "tcu.conf")
    except OSError as exc:
        raise ConfigError(f"cannot write {exc.filename}: {exc.strerror}", key="--install") from exc
    for path in written:
        print(f"wrote {path}")
    print(f"ExecStart= runs {exe or '/usr/local/bin/tcu'}", file=sys.stderr)
    return 0
