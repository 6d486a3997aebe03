"""Shared by ``tcu decode`` and ``tcu plot``: DBC arguments, the decode loop, the summary.

python-can, cantools and numpy are imported when a command runs, not when ``tcu`` builds
its parser, so ``tcu --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tcu.errors import InputError

if TYPE_CHECKING:
    from tcu.can.logs import ReadStats
    from tcu.signals.codec import DatabaseCodec
    from tcu.signals.decoder import DecodeCounts, FrameDecoder, MessageBlock

#: The same names as :data:`tcu.can.logs.FORMATS` (kept here to import lazily; a test checks).
LOG_FORMATS = ("candump", "blf", "asc", "trc", "mf4")


def add_log_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "log",
        type=Path,
        help="CAN log: .log (candump -L), .blf, .asc, .trc, .mf4; - reads candump -L from stdin",
    )
    p.add_argument(
        "--dbc",
        action="append",
        required=True,
        metavar="[CHANNEL=]FILE",
        help="DBC file; CHANNEL=FILE applies it to one channel only (repeatable)",
    )
    p.add_argument(
        "--j1939", action="store_true", help="match extended ids by J1939 PGN (ignore source address)"
    )
    p.add_argument("--log-format", choices=LOG_FORMATS, help="log format (default: from the suffix)")
    p.add_argument(
        "--channel",
        action="append",
        default=[],
        metavar="LOG=NAME",
        help="rename a channel of the log before the --dbc CHANNEL= match, e.g. 0=can0 (ASC and BLF "
        "number channels 0, 1, ...; candump names them can0, can1, ...) (repeatable)",
    )
    p.add_argument(
        "--strict-time",
        action="store_true",
        help="fail (exit 1, no output file) when frames are dated before 2000 or in the future",
    )


def parse_dbc_args(
    values: list[str], databases: dict[Path, Any] | None = None
) -> dict[str | None, DatabaseCodec]:
    """``FILE`` → default for every channel; ``CHANNEL=FILE`` → that channel.

    ``databases``, when given, receives each file's cantools database (units, choices).
    """
    from tcu.signals.codec import compile_database
    from tcu.signals.dbc import load_dbc

    by_file: dict[Path, DatabaseCodec] = {}
    codecs: dict[str | None, DatabaseCodec] = {}
    for value in values:
        channel: str | None = None
        file_text = value
        if "=" in value and not Path(value).exists():
            channel, file_text = value.split("=", 1)
            if not channel or not file_text:
                raise InputError(f"--dbc {value!r}: want FILE or CHANNEL=FILE")
        file = Path(file_text)
        if channel in codecs:
            raise InputError(f"--dbc {value!r}: a DBC for {channel or 'all channels'} was already given")
        if file not in by_file:
            database = load_dbc(file)
            by_file[file] = compile_database(database)
            if databases is not None:
                databases[file] = database
        codecs[channel] = by_file[file]
    return codecs


def parse_channel_aliases(values: list[str]) -> dict[str, str]:
    """``LOG=NAME`` pairs: a log channel and the name it is decoded as."""
    aliases: dict[str, str] = {}
    for value in values:
        log_name, sep, name = value.partition("=")
        if not sep or not log_name or not name:
            raise InputError(f"--channel {value!r}: want LOG=NAME, e.g. --channel 0=can0")
        if log_name in aliases:
            raise InputError(f"--channel {value!r}: channel {log_name} was already renamed")
        aliases[log_name] = name
    return aliases


def channel_hints(codecs: dict[str | None, object], seen: set[str]) -> list[str]:
    """One line per ``--dbc CHANNEL=`` that matched no frame, naming the log's channels."""
    if not seen:
        return []
    have = ", ".join(sorted(seen)) or "(unnamed)"
    missing = sorted(name for name in codecs if name is not None and name not in seen)
    unused = sorted(seen - set(codecs))
    out = []
    for index, name in enumerate(missing):
        rename = f"; rename with --channel {unused[index]}={name}" if index < len(unused) else ""
        out.append(
            f"warning: --dbc {name}=...: no frame on channel {name}; the log's channels: {have}{rename}"
        )
    return out


def decode_log(
    args: argparse.Namespace, *, progress: bool = True, databases: dict[Path, Any] | None = None
) -> tuple[Iterator[list[MessageBlock]], FrameDecoder, ReadStats]:
    """An iterator of decoded blocks per chunk, the decoder (counts) and the read stats.

    ``progress``: a progress line on stderr while it runs, only when stderr is a terminal
    (:class:`~tcu.cli._progress.Progress`). ``databases`` receives the cantools databases.
    """
    import dataclasses

    import numpy as np

    from tcu.can.logs import open_log
    from tcu.signals.decoder import FrameDecoder

    codecs = parse_dbc_args(args.dbc, databases)
    aliases = parse_channel_aliases(getattr(args, "channel", None) or [])
    if str(args.log) == "-":
        reader = open_log("<stdin>", fmt=args.log_format, stream=sys.stdin.buffer)
    else:
        reader = open_log(args.log, fmt=args.log_format)
    decoder = FrameDecoder(codecs, j1939=args.j1939)

    def run() -> Iterator[list[MessageBlock]]:
        from tcu.cli._progress import FilePosition, Progress

        source = None if str(args.log) == "-" else FilePosition(Path(args.log))
        bar = Progress(f"decode {args.log}", file=source, enabled=None if progress else False)
        seen: set[str] = set()
        try:
            for read in reader:
                chunk = read
                if aliases:
                    names = tuple(aliases.get(c, c) for c in read.channels)
                    chunk = dataclasses.replace(read, channels=names)
                if chunk.channels:
                    seen.update(chunk.channels[int(i)] for i in np.unique(chunk.channel))
                yield decoder.decode(chunk)
                bar.update(decoder.counts.frames)
        finally:
            bar.done()
        refuse_unreadable(reader.stats, reader.fmt)
        for hint in channel_hints(dict(codecs), seen):
            print(f"tcu: {hint}", file=sys.stderr)
        if getattr(args, "strict_time", False) and reader.stats.implausible_times:
            from tcu.errors import LogFormatError

            raise LogFormatError(f"--strict-time: {implausible_text(reader.stats)}", path=reader.stats.path)

    return run(), decoder, reader.stats


def refuse_unreadable(stats: ReadStats, fmt: str) -> None:
    """Raise :class:`~tcu.errors.LogFormatError` when the read found problems and not one frame.

    Such a file is not a log of that format (a binary file named ``.asc``, say); decoding it
    to an empty output and exiting 0 would hide that. An empty log (no frames, no problems)
    is not refused.
    """
    from tcu.errors import LogFormatError

    if stats.frames or not (stats.bad_records or stats.stopped_at is not None):
        return
    why = stats.problems[0].problem if stats.problems else f"stopped at {stats.stopped_at}"
    raise LogFormatError(
        f"no CAN frame could be read as format {fmt!r} ({stats.bad_records} corrupt record(s); "
        f"first: {why}); is it a log of that format? (--log-format picks another one)",
        path=stats.path,
    )


def print_summary(counts: DecodeCounts, stats: ReadStats, write: Callable[[str], None]) -> None:
    write(
        f"frames {counts.frames}, decoded {counts.decoded}, unknown ids {len(counts.unknown_ids)} "
        f"({counts.unknown} frames), errors {counts.errors}, skipped {counts.skipped} "
        f"(error/remote frames or channels without a DBC), corrupt records {stats.bad_records}"
    )
    if stats.stopped_at is not None:
        write(f"file truncated: stopped at {stats.stopped_at}")
    if stats.implausible_times:
        write(f"warning: {implausible_text(stats)}")


def implausible_text(stats: ReadStats) -> str:
    first = stats.first_implausible_t_ns or 0
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(first // 10**9))
    return (
        f"{stats.implausible_times} frames dated before 2000 or in the future (first: {when}); "
        "the log has no absolute time base?"
    )


def signal_info(databases: dict[Path, Any]) -> dict[tuple[str, str], tuple[str, dict[int, str]]]:
    """(message, signal) → (unit, choices) from cantools databases (the codecs carry no units)."""
    out: dict[tuple[str, str], tuple[str, dict[int, str]]] = {}
    for database in databases.values():
        for message in database.messages:
            for sig in message.signals:
                choices = {int(k): str(v) for k, v in (sig.choices or {}).items()}
                out.setdefault((message.name, sig.name), (sig.unit or "", choices))
    return out
