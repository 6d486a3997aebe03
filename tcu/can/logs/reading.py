"""What reading a CAN log needs besides the frames: problems, counters, channel names, python-can messages."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import can
import numpy as np

from tcu.errors import LogFormatError
from tcu.frames import FrameBatch

__all__ = ["ChannelTable", "LogProblem", "ReadStats", "frames_from_messages", "to_messages"]

log = logging.getLogger(__name__)

#: Problems logged as warnings per file; further ones are only counted.
MAX_LOGGED_PROBLEMS = 20
#: Problems kept in ``ReadStats.problems`` per file.
MAX_KEPT_PROBLEMS = 1000


@dataclass(frozen=True, slots=True)
class LogProblem:
    """One corrupt line or record: where (line number or byte offset) and what."""

    path: str
    line: int | None
    offset: int | None
    problem: str

    def __str__(self) -> str:
        if self.line is not None:
            return f"{self.path}:{self.line}: {self.problem}"
        if self.offset is not None:
            return f"{self.path}@{self.offset}: {self.problem}"
        return f"{self.path}: {self.problem}"


#: Frames dated before this (2000-01-01T00:00:00Z) are implausible: a log without an absolute time base.
PLAUSIBLE_AFTER_NS = 946_684_800 * 1_000_000_000
#: Frames dated further than this past the reading machine's clock are implausible too.
FUTURE_SLACK_NS = 86_400 * 1_000_000_000


@dataclass(slots=True)
class ReadStats:
    """Counters of one log read; ``stopped_at`` says where a truncated file ended."""

    path: str
    frames: int = 0
    bad_records: int = 0
    skipped_objects: int = 0
    problems: list[LogProblem] = field(default_factory=list)
    stopped_at: str | None = None
    implausible_times: int = 0
    """Frames dated before 2000 or more than a day in the future (see :meth:`check_times`)."""
    first_implausible_t_ns: int | None = None

    def check_times(self, frames: FrameBatch) -> None:
        """Count frames dated before 2000 or in the future; warn once per file."""
        if not len(frames):
            return
        t_ns = frames.t_ns
        bad = (t_ns < PLAUSIBLE_AFTER_NS) | (t_ns > time.time_ns() + FUTURE_SLACK_NS)
        count = int(np.count_nonzero(bad))
        if not count:
            return
        if self.first_implausible_t_ns is None:
            self.first_implausible_t_ns = int(t_ns[int(np.argmax(bad))])
            log.warning(
                "%s: frames dated %s: before 2000 or in the future (a log without an absolute time "
                "base?); they are counted",
                self.path,
                time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.first_implausible_t_ns // 10**9)),
            )
        self.implausible_times += count

    def report(self, *, line: int | None = None, offset: int | None = None, problem: str) -> None:
        """Count a corrupt record; keep and log the first ones."""
        self.bad_records += 1
        item = LogProblem(self.path, line, offset, problem)
        if len(self.problems) < MAX_KEPT_PROBLEMS:
            self.problems.append(item)
        if self.bad_records <= MAX_LOGGED_PROBLEMS:
            log.warning("skipped corrupt record: %s", item)
        elif self.bad_records == MAX_LOGGED_PROBLEMS + 1:
            log.warning("%s: more corrupt records; only counting them from now on", self.path)

    def truncated(self, where: str) -> None:
        """Record that the file ended early (``where`` names the line or byte offset)."""
        self.stopped_at = where
        log.warning("%s: file is truncated; stopped at %s", self.path, where)


class ChannelTable:
    """Stable channel-name → index mapping shared by all chunks of one read.

    ``path`` (the log's) only names the file in the error raised past 32767 names.
    """

    def __init__(self, path: str | None = None) -> None:
        self._index: dict[str, int] = {}
        self.names: list[str] = []
        self.path = path

    def code(self, name: str) -> int:
        found = self._index.get(name)
        if found is None:
            found = len(self.names)
            if found > np.iinfo(np.int16).max:
                raise LogFormatError("more than 32767 distinct channel names", path=self.path)
            self._index[name] = found
            self.names.append(name)
        return found

    def snapshot(self) -> tuple[str, ...]:
        return tuple(self.names)


def frames_from_messages(messages: Sequence[can.Message], channels: ChannelTable) -> FrameBatch:
    """Build a batch from python-can messages (for the readers python-can provides)."""
    n = len(messages)
    width = 8
    for msg in messages:
        if len(msg.data) > width:
            width = 64
            break
    t_ns = np.empty(n, dtype=np.int64)
    ids = np.empty(n, dtype=np.uint32)
    ext = np.empty(n, dtype=np.bool_)
    chan = np.empty(n, dtype=np.int16)
    dlc = np.empty(n, dtype=np.uint8)
    data = np.zeros((n, width), dtype=np.uint8)
    fd = np.empty(n, dtype=np.bool_)
    brs = np.empty(n, dtype=np.bool_)
    err = np.empty(n, dtype=np.bool_)
    rtr = np.empty(n, dtype=np.bool_)
    rx = np.empty(n, dtype=np.bool_)
    for i, msg in enumerate(messages):
        t_ns[i] = round(msg.timestamp * 1e9)
        ids[i] = msg.arbitration_id
        ext[i] = msg.is_extended_id
        chan[i] = channels.code("" if msg.channel is None else str(msg.channel))
        payload = bytes(msg.data)[:width]
        dlc[i] = min(int(msg.dlc), 64)
        if payload:
            data[i, : len(payload)] = np.frombuffer(payload, dtype=np.uint8)
        fd[i] = msg.is_fd
        brs[i] = msg.bitrate_switch
        err[i] = msg.is_error_frame
        rtr[i] = msg.is_remote_frame
        rx[i] = msg.is_rx
    return FrameBatch(t_ns, ids, ext, chan, channels.snapshot(), dlc, data, fd, brs, err, rtr, rx)


def to_messages(frames: FrameBatch) -> list[can.Message]:
    """The frames as python-can messages (timestamps in float seconds), e.g. to write a log."""
    out: list[can.Message] = []
    data = frames.data
    for i in range(len(frames)):
        length = int(frames.dlc[i])
        out.append(
            can.Message(
                timestamp=int(frames.t_ns[i]) / 1e9,
                arbitration_id=int(frames.arbitration_id[i]),
                is_extended_id=bool(frames.is_extended[i]),
                is_remote_frame=bool(frames.is_remote[i]),
                is_error_frame=bool(frames.is_error[i]),
                is_fd=bool(frames.is_fd[i]),
                bitrate_switch=bool(frames.bitrate_switch[i]),
                is_rx=bool(frames.is_rx[i]),
                dlc=length,
                data=None if frames.is_remote[i] else bytes(data[i, : min(length, data.shape[1])]),
                channel=frames.channels[int(frames.channel[i])] if frames.channels else None,
                check=False,
            )
        )
    return out
