"""``tcu monitor``: decoded signals live, from a bus or a log, like ``cantools monitor``.

On a terminal the table of the latest value of every signal (with its unit, the choice name
when the DBC has one, and how many times it was decoded) is redrawn in place every
``--refresh-s``; piped, one plain line per signal whose value changed
(``<time s> <bus> <MESSAGE>.<SIGNAL> <value> [<unit>]``), so ``tcu monitor ... | grep`` works.
A log is played at its own pace times ``--rate`` (0: as fast as it can be read).
"""

from __future__ import annotations

import argparse
import fnmatch
import math
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from tcu.cli._logdecode import LOG_FORMATS, parse_dbc_args, signal_info
from tcu.cli.send import bus_arguments
from tcu.errors import InputError

if TYPE_CHECKING:
    from tcu.frames import FrameBatch
    from tcu.signals.decoder import MessageBlock


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "monitor",
        help="show decoded signals live, from a bus or a CAN log",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Examples: tcu monitor --dbc powertrain.dbc (SocketCAN can0); "
        "tcu monitor -i socketcand -c can0 -o host=127.0.0.1 -o port=29536 --dbc sim/data/tcu_sim.dbc; "
        "tcu monitor drive.log --dbc powertrain.dbc --rate 10",
    )
    p.add_argument(
        "log", nargs="?", type=Path, help="CAN log to play instead of a bus (- : candump -L on stdin)"
    )
    p.add_argument(
        "--dbc", action="append", required=True, metavar="[CHANNEL=]FILE", help="DBC file (repeatable)"
    )
    p.add_argument("--j1939", action="store_true", help="match extended ids by J1939 PGN")
    p.add_argument("--log-format", choices=LOG_FORMATS, help="log format (default: from the suffix)")
    bus_arguments(p)
    p.add_argument(
        "--rate", type=float, default=1.0, help="log pace: times real time; 0: no waits (default 1)"
    )
    p.add_argument(
        "--signal",
        action="append",
        default=[],
        metavar="GLOB",
        help="only MESSAGE.SIGNAL matching (repeatable)",
    )
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--count", type=int, help="stop after this many frames")
    p.add_argument(
        "--refresh-s", type=float, default=0.25, help="redraw interval on a terminal (default 0.25)"
    )
    p.set_defaults(func=run)


@dataclass(slots=True)
class Row:
    bus: str
    message: str
    signal: str
    unit: str
    choices: dict[int, str]
    value: float = float("nan")
    t_ns: int = 0
    updates: int = 0
    shown: float | None = None

    def text(self, value: float | None = None) -> str:
        v = self.value if value is None else value
        if math.isnan(v):
            return "-"
        if v.is_integer() and int(v) in self.choices:
            return f"{self.choices[int(v)]} ({int(v)})"
        return f"{v:.10g}"


class Table:
    """The latest value per (bus, message, signal), filled from decoded blocks."""

    def __init__(self, info: dict[tuple[str, str], tuple[str, dict[int, str]]], globs: list[str]) -> None:
        self.info = info
        self.globs = globs
        self.rows: dict[tuple[str, str, str], Row] = {}
        self._wanted: dict[tuple[str, str], bool] = {}

    def wanted(self, message: str, signal: str) -> bool:
        key = (message, signal)
        hit = self._wanted.get(key)
        if hit is None:
            name = f"{message}.{signal}"
            hit = self._wanted[key] = not self.globs or any(fnmatch.fnmatchcase(name, g) for g in self.globs)
        return hit

    def update(self, blocks: list[MessageBlock], *, every: bool = False) -> list[tuple[Row, int, float]]:
        """Take the newest value of each signal of ``blocks``.

        Returns ``(row, t_ns, value)`` for the rows whose value changed: the newest value only,
        or with ``every`` each change within the blocks (for plain lines).
        """
        import numpy as np

        changed: list[tuple[Row, int, float]] = []
        for block in blocks:
            message = block.codec.name
            for name in block.codec.signal_names:
                if not self.wanted(message, name):
                    continue
                present = block.decoded.present[name]
                count = int(present.sum())
                if not count:
                    continue
                key = (block.bus, message, name)
                row = self.rows.get(key)
                if row is None:
                    unit, choices = self.info.get((message, name), ("", {}))
                    row = self.rows[key] = Row(block.bus, message, name, unit, choices)
                values = block.decoded.values[name][present]
                times = block.t_ns[present]
                row.updates += count
                row.value, row.t_ns = float(values[-1]), int(times[-1])
                if every:
                    previous = np.concatenate(([np.nan if row.shown is None else row.shown], values[:-1]))
                    for i in np.flatnonzero(values != previous).tolist():
                        changed.append((row, int(times[i]), float(values[i])))
                    row.shown = row.value
                elif row.shown != row.value:
                    row.shown = row.value
                    changed.append((row, row.t_ns, row.value))
        return changed


def _log_frames(args: argparse.Namespace) -> Iterator[FrameBatch]:
    """The log's frames, paced at ``--rate`` times the log's own time (slices of ~50 ms of it)."""
    import numpy as np

    from tcu.can.logs import open_log

    if str(args.log) == "-":
        reader = open_log("<stdin>", fmt=args.log_format, stream=sys.stdin.buffer)
    else:
        reader = open_log(args.log, fmt=args.log_format, chunk_frames=4096)
    start_wall: float | None = None
    start_log = 0
    for chunk in reader:
        if args.rate <= 0 or not len(chunk):
            yield chunk
            continue
        if start_wall is None:
            start_wall, start_log = time.monotonic(), int(chunk.t_ns[0])
        step = int(0.05e9 * args.rate)
        edges = np.arange(int(chunk.t_ns[0]), int(chunk.t_ns[-1]) + step, step)
        cuts = np.searchsorted(chunk.t_ns, edges[1:], side="left")
        lo = 0
        for hi in [*cuts.tolist(), len(chunk)]:
            if hi <= lo:
                continue
            part = chunk.select(np.arange(lo, hi))
            due = start_wall + (int(part.t_ns[0]) - start_log) / 1e9 / args.rate
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            yield part
            lo = hi


def _bus_frames(args: argparse.Namespace) -> Iterator[FrameBatch]:
    """Frames from a python-can bus, in batches of what arrived within ~50 ms."""
    import can

    from tcu.can.logs.reading import ChannelTable, frames_from_messages
    from tcu.cli.send import _option

    kwargs: dict[str, Any] = dict(_option(o) for o in args.option)
    if args.bitrate:
        kwargs["bitrate"] = args.bitrate
    try:
        bus = can.Bus(interface=args.interface, channel=args.channel, **kwargs)
    except (can.CanError, OSError, ValueError, ImportError) as exc:
        raise InputError(f"cannot open {args.interface} {args.channel}: {exc}") from exc
    channels = ChannelTable()
    try:
        while True:
            batch: list[can.Message] = []
            deadline = time.monotonic() + 0.05
            while (left := deadline - time.monotonic()) > 0 and len(batch) < 4096:
                try:
                    msg = bus.recv(timeout=left)
                except can.CanError as exc:
                    raise InputError(f"{args.interface} {args.channel}: {exc}") from exc
                if msg is None:
                    break
                msg.channel = args.channel
                batch.append(msg)
            yield frames_from_messages(batch, channels) if batch else _empty(channels)
    finally:
        bus.shutdown()


def _empty(channels: Any) -> FrameBatch:
    from tcu.frames import empty_frames

    return empty_frames(tuple(channels.names))


class _Screen:
    """Redraws the table in place on a terminal (ANSI: cursor home, clear to the end)."""

    def __init__(self, out: IO[str], source: str) -> None:
        self.out = out
        self.source = source

    def draw(self, table: Table, frames: int, unknown: int, started: float, *, final: bool = False) -> None:
        size = shutil.get_terminal_size((100, 30))
        elapsed = max(time.monotonic() - started, 1e-9)
        head = (
            f"frames {frames} ({frames / elapsed:,.0f}/s)  unknown {unknown}  signals {len(table.rows)}"
            f"  {'(ended)' if final else '(Ctrl-C ends)'}  tcu monitor {self.source}"
        )
        lines = [head[: size.columns], ""]
        width = max((len(f"{r.message}.{r.signal}") for r in table.rows.values()), default=20)
        for row in sorted(table.rows.values(), key=lambda r: (r.bus, r.message, r.signal)):
            name = f"{row.message}.{row.signal}"
            line = f"{row.bus:<6} {name:<{width}}  {row.text():>16} {row.unit:<8} {row.updates:>9}"
            lines.append(line[: size.columns])
        room = size.lines - 1
        if len(lines) > room:
            hidden = len(lines) - room + 1
            lines = [*lines[: room - 1], f"... {hidden} more (a taller terminal, or --signal GLOB)"]
        self.out.write("\x1b[H\x1b[J" + "\n".join(lines) + ("\n" if final else ""))
        self.out.flush()


def run(args: argparse.Namespace) -> int:
    from tcu.signals.decoder import FrameDecoder

    if args.refresh_s <= 0:
        raise InputError("--refresh-s must be positive")
    databases: dict[Path, Any] = {}
    codecs = parse_dbc_args(args.dbc, databases)
    table = Table(signal_info(databases), args.signal)
    decoder = FrameDecoder(codecs, j1939=args.j1939)
    source = str(args.log) if args.log is not None else f"{args.interface} {args.channel}"
    frames: Iterator[FrameBatch] = _log_frames(args) if args.log is not None else _bus_frames(args)
    out = sys.stdout
    screen = _Screen(out, source) if out.isatty() else None
    write: Callable[[Row, int, float], None] = lambda row, t_ns, value: print(  # noqa: E731 - the line format
        f"{t_ns / 1e9:.6f} {row.bus} {row.message}.{row.signal} {row.text(value)}"
        + (f" {row.unit}" if row.unit else ""),
        file=out,
    )
    started = last = time.monotonic()
    seen = 0
    try:
        for read in frames:
            batch = read
            if args.count is not None and seen + len(read) > args.count:
                import numpy as np

                batch = read.select(np.arange(args.count - seen))
            seen += len(batch)
            changed = table.update(decoder.decode(batch), every=screen is None) if len(batch) else []
            now = time.monotonic()
            if screen is None:
                for row, t_ns, value in changed:
                    write(row, t_ns, value)
            elif now - last >= args.refresh_s:
                last = now
                screen.draw(table, seen, decoder.counts.unknown, started)
            if (args.count is not None and seen >= args.count) or (
                args.duration is not None and now - started >= args.duration
            ):
                break
    except KeyboardInterrupt:
        pass
    finally:
        close = getattr(frames, "close", None)
        if close is not None:
            close()
    if screen is not None:
        screen.draw(table, seen, decoder.counts.unknown, started, final=True)
    c = decoder.counts
    print(
        f"tcu monitor: {seen} frames, decoded {c.decoded}, unknown {c.unknown}, {len(table.rows)} signals",
        file=sys.stderr,
    )
    return 0
