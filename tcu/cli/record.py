"""``tcu record`` and ``tcu play``: a bus into a log file, and a log back onto a bus (canplayer-like).

``record`` writes with python-can's writers: ``.log`` candump ``-L``, ``.blf``, ``.asc``. It
stops after ``--count`` frames, ``--duration`` seconds or Ctrl-C, and says how many it wrote.
``play`` sends a log's frames (any format :func:`tcu.can.logs.open_log` reads, ``-`` for candump
text on stdin) at the log's own pace times ``--rate`` (0: as fast as the bus takes them),
``--loop`` times; ``--map LOG=BUS`` sends one log channel onto one bus channel and, once a map
is given, frames of unmapped channels are skipped and counted, as with canplayer.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from tcu.cli.send import _option, bus_arguments
from tcu.errors import InputError, TcuError

__all__ = ["register"]

_WRITERS = {".log": "CanutilsLogWriter", ".blf": "BLFWriter", ".asc": "ASCWriter"}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    r = subparsers.add_parser(
        "record",
        help="record a CAN bus into a candump -L .log, .blf or .asc file",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example: tcu record -i socketcan -c can0 -w drive.blf --duration 60",
    )
    bus_arguments(r)
    r.add_argument("--write", "-w", type=Path, required=True, help="output: .log (candump -L), .blf or .asc")
    r.add_argument("--count", "-n", type=int, help="stop after this many frames")
    r.add_argument("--duration", type=float, help="stop after this many seconds")
    r.set_defaults(func=run_record)
    p = subparsers.add_parser(
        "play",
        help="play a CAN log onto a bus (canplayer-like: -I file, --rate, --loop, --map)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example: tcu play -I drive.log -i socketcan --map can0=vcan0 --map can1=vcan1 --rate 2",
    )
    bus_arguments(p)
    p.add_argument(
        "-I", "--input", dest="log", type=Path, required=True, help="log file (- : candump on stdin)"
    )
    p.add_argument("--log-format", help="log format (default: from the suffix)")
    p.add_argument("--rate", type=float, default=1.0, help="speed factor (default 1: real time; 0: no waits)")
    p.add_argument("--loop", type=int, default=1, help="play the log this many times (default 1)")
    p.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="LOG=BUS",
        help="send log channel LOG on bus channel BUS (repeatable; then unmapped channels are skipped)",
    )
    p.add_argument("--verbose", "-v", action="store_true", help="print a line per loop")
    p.set_defaults(func=run_play)


def _open_bus(args: argparse.Namespace, channel: str, *, fd: bool = False) -> Any:
    import can

    options = dict(_option(o) for o in args.option)
    if args.bitrate is not None:
        options["bitrate"] = args.bitrate
    if fd:
        options.setdefault("fd", True)
    try:
        return can.Bus(interface=args.interface, channel=channel, **options)
    except (can.CanError, OSError, ValueError, ImportError) as exc:
        raise TcuError(f"cannot open the bus {args.interface} {channel}: {exc}") from exc


def run_record(args: argparse.Namespace) -> int:
    import can

    writer_name = _WRITERS.get(args.write.suffix.lower())
    if writer_name is None:
        raise InputError(f"--write {args.write}: want a .log (candump -L), .blf or .asc file")
    if args.count is not None and args.count < 1:
        raise InputError(f"--count {args.count}: must be at least 1")
    bus = _open_bus(args, args.channel)
    written = 0
    try:
        writer = getattr(can, writer_name)(str(args.write))
        try:
            deadline = None if args.duration is None else time.monotonic() + args.duration
            print(f"tcu record: recording {args.interface} {args.channel} to {args.write}", file=sys.stderr)
            try:
                while args.count is None or written < args.count:
                    wait = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
                    if wait <= 0:
                        break
                    message = bus.recv(timeout=wait)
                    if message is None:
                        continue
                    if message.channel is None:
                        message.channel = args.channel
                    writer.on_message_received(message)
                    written += 1
            except KeyboardInterrupt:
                pass
        finally:
            writer.stop()
    finally:
        bus.shutdown()
    print(f"tcu record: {written} frames written to {args.write}", file=sys.stderr)
    return 0


def run_play(args: argparse.Namespace) -> int:
    import can
    import numpy as np

    from tcu.can.logs import open_log
    from tcu.can.logs.reading import to_messages

    if args.rate < 0:
        raise InputError(f"--rate {args.rate}: must be 0 (no waits) or more")
    if args.loop < 1:
        raise InputError(f"--loop {args.loop}: must be at least 1")
    mapping: dict[str, str] = {}
    for value in args.map:
        source, sep, target = value.partition("=")
        if not sep or not source or not target:
            raise InputError(f"--map {value!r}: want LOG=BUS, e.g. --map can0=vcan0")
        mapping[source] = target
    buses: dict[str, Any] = {}
    sent = skipped = 0
    try:
        for loop in range(args.loop):
            if str(args.log) == "-":
                if loop:
                    raise InputError("--loop needs a file: stdin can be read once")
                reader = open_log("<stdin>", fmt=args.log_format, stream=sys.stdin.buffer)
            else:
                reader = open_log(args.log, fmt=args.log_format)
            first_t: float | None = None
            started = time.monotonic()
            for chunk in reader:
                fd = bool(np.any(chunk.is_fd))
                for message in to_messages(chunk):
                    log_channel = "" if message.channel is None else str(message.channel)
                    target = mapping.get(log_channel) if mapping else args.channel
                    if target is None:
                        skipped += 1
                        continue
                    if message.is_error_frame:
                        skipped += 1
                        continue
                    bus = buses.get(target)
                    if bus is None:
                        bus = buses[target] = _open_bus(args, target, fd=fd)
                    if first_t is None:
                        first_t = message.timestamp
                    if args.rate > 0:
                        delay = (message.timestamp - first_t) / args.rate - (time.monotonic() - started)
                        if delay > 0:
                            time.sleep(delay)
                    message.channel = None
                    try:
                        bus.send(message, timeout=5)
                    except (can.CanError, OSError) as exc:
                        raise TcuError(f"cannot send frame {sent + 1} on {target}: {exc}") from exc
                    sent += 1
            if args.verbose:
                print(f"tcu play: loop {loop + 1} of {args.loop} done ({sent} frames sent)", file=sys.stderr)
    finally:
        for bus in buses.values():
            bus.shutdown()
    print(
        f"tcu play: {sent} frames sent, {skipped} skipped (error frames or channels without --map)",
        file=sys.stderr,
    )
    return 0
