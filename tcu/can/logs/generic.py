"""Logs read through python-can's own readers (ASC, TRC, MF4 and any other it knows).

Messages are gathered into :class:`FrameBatch` s. Warnings that python-can's readers log
about lines they skip (the TRC reader does) are counted as corrupt records; an exception
from a reader ends the read and is recorded as where the file stopped. python-can's ASC
reader skips lines it cannot parse without saying so; those are not counted. A file cut
short is not detected for these formats: python-can (and asammdf for MF4) return what they
can read. ASC files keep their absolute time base (python-can's default would date every
frame from 1970); TRC files from 1.1 on carry ``$STARTTIME`` and keep it too. (A missing
final line end is no sign of truncation: the shared PEAK TRC 2.1
file ends that way.)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import can

from tcu.can.logs.reading import ChannelTable, ReadStats, frames_from_messages
from tcu.errors import LogFormatError
from tcu.frames import FrameBatch

__all__ = ["read_with_python_can"]

_READERS: dict[str, Any] = {
    ".asc": can.ASCReader,
    ".trc": can.TRCReader,
    ".mf4": can.MF4Reader,
    ".csv": can.CSVReader,
    ".db": can.SqliteReader,
    ".log": can.CanutilsLogReader,
    ".blf": can.BLFReader,
}


_MAX_ABS_T_S = (2**63 - 1) // 1_000_000_000  # whole seconds that int64 nanoseconds hold


def _out_of_range(message: can.Message) -> str | None:
    """Why ``message`` cannot be stored in a :class:`FrameBatch`, or None."""
    if not 0 <= message.arbitration_id <= 0x1FFFFFFF:
        return f"arbitration_id {message.arbitration_id:#x} is beyond 29 bits"
    if not abs(message.timestamp) < _MAX_ABS_T_S:  # also NaN
        return f"timestamp {message.timestamp!r} s is beyond int64 nanoseconds"
    if not 0 <= message.dlc <= 64 or len(message.data) > 64:
        return f"DLC {message.dlc} / {len(message.data)} data bytes is not a CAN (FD) frame"
    return None


class _CountingHandler(logging.Handler):
    def __init__(self, stats: ReadStats) -> None:
        super().__init__(level=logging.WARNING)
        self.stats = stats

    def emit(self, record: logging.LogRecord) -> None:
        self.stats.report(problem=f"python-can: {record.getMessage()}")


def read_with_python_can(
    path: str | Path, stats: ReadStats, *, chunk_frames: int = 65536
) -> Iterator[FrameBatch]:
    """Yield chunks of the messages python-can's reader for the file's suffix returns."""
    file = Path(path)
    reader_class = _READERS.get(file.suffix.lower())
    if reader_class is None:
        raise LogFormatError(f"unknown log format {file.suffix!r}", path=str(file))
    try:
        if reader_class is can.ASCReader:
            # relative_timestamp=False: keep the header's absolute start ("Begin Triggerblock
            # <date>", the reading machine's local time, as python-can parses it) instead of 1970
            reader = reader_class(str(file), relative_timestamp=False)
        else:
            reader = reader_class(str(file))
    except (ImportError, NotImplementedError) as exc:  # python-can: NotImplementedError without asammdf
        raise LogFormatError(
            f"reading {file.suffix} needs an optional package ({exc}); install tcu[mf4]", path=str(file)
        ) from exc
    except (ValueError, OSError, EOFError, KeyError, IndexError, OverflowError) as exc:
        raise LogFormatError(f"cannot open log: {exc}", path=str(file)) from exc
    channels = ChannelTable(stats.path)
    handler = _CountingHandler(stats)
    can_log = logging.getLogger("can")
    can_log.addHandler(handler)
    batch: list[can.Message] = []
    try:
        iterator = iter(reader)
        while True:
            try:
                message = next(iterator)
            except StopIteration:
                break
            except (ValueError, OSError, EOFError, KeyError, IndexError, TypeError, OverflowError) as exc:
                # OverflowError: python-can's TRC header parser on an absurd STARTTIME (found by fuzzing)
                stats.report(problem=f"reader failed after {stats.frames + len(batch)} frames: {exc}")
                stats.truncated(f"frame {stats.frames + len(batch)}")
                break
            problem = _out_of_range(message)
            if problem is not None:  # python-can returns these; our int64/uint32 columns cannot hold them
                stats.report(problem=f"frame {stats.frames + len(batch) + 1}: {problem}; skipped")
                continue
            batch.append(message)
            if len(batch) >= chunk_frames:
                stats.frames += len(batch)
                yield frames_from_messages(batch, channels)
                batch = []
        if batch:
            stats.frames += len(batch)
            yield frames_from_messages(batch, channels)
    finally:
        can_log.removeHandler(handler)
        stop = getattr(reader, "stop", None)
        if stop is not None:
            stop()
