"""Columnar chunks of frames read from a CAN log, and the problems met while reading."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import can
import numpy as np
import numpy.typing as npt

from tcu.errors import LogFormatError

__all__ = ["FrameChunk", "LogProblem", "ReadStats", "chunk_from_messages", "concat_chunks"]

log = logging.getLogger(__name__)

#: Problems logged as warnings per file; further ones are only counted.
MAX_LOGGED_PROBLEMS = 20
#: Problems kept in ``ReadStats.problems`` per file.
MAX_KEPT_PROBLEMS = 1000


@dataclass(frozen=True, slots=True)
class FrameChunk:
    """Frames in file order, one array per field (all of length n).

    ``t_ns``: UTC epoch (or log-relative, as recorded) nanoseconds; ``channel``: index
    into ``channels`` (the names as the log spells them, e.g. ``"can0"`` or ``"1"``);
    ``dlc``: payload length in bytes (python-can's ``Message.dlc``); ``data``: payload
    bytes, zero-padded to the chunk's width (8, or 64 when a CAN FD frame is present).
    """

    t_ns: npt.NDArray[np.int64]
    arbitration_id: npt.NDArray[np.uint32]
    is_extended: npt.NDArray[np.bool_]
    channel: npt.NDArray[np.int16]
    channels: tuple[str, ...]
    dlc: npt.NDArray[np.uint8]
    data: npt.NDArray[np.uint8]
    is_fd: npt.NDArray[np.bool_]
    is_error: npt.NDArray[np.bool_]
    is_remote: npt.NDArray[np.bool_]
    is_rx: npt.NDArray[np.bool_]

    def __len__(self) -> int:
        return int(self.t_ns.shape[0])

    def channel_names(self) -> npt.NDArray[np.str_]:
        """Channel name per frame (a convenience for small chunks)."""
        names = np.array(self.channels if self.channels else ("",), dtype=np.str_)
        return names[self.channel]

    def select(self, mask: npt.NDArray[np.bool_] | npt.NDArray[np.intp]) -> FrameChunk:
        """The frames picked by a boolean mask or index array, same channel table."""
        return FrameChunk(
            t_ns=self.t_ns[mask],
            arbitration_id=self.arbitration_id[mask],
            is_extended=self.is_extended[mask],
            channel=self.channel[mask],
            channels=self.channels,
            dlc=self.dlc[mask],
            data=self.data[mask],
            is_fd=self.is_fd[mask],
            is_error=self.is_error[mask],
            is_remote=self.is_remote[mask],
            is_rx=self.is_rx[mask],
        )

    def messages(self) -> list[can.Message]:
        """The frames as python-can messages (timestamps in float seconds)."""
        out: list[can.Message] = []
        data = self.data
        for i in range(len(self)):
            length = int(self.dlc[i])
            out.append(
                can.Message(
                    timestamp=int(self.t_ns[i]) / 1e9,
                    arbitration_id=int(self.arbitration_id[i]),
                    is_extended_id=bool(self.is_extended[i]),
                    is_remote_frame=bool(self.is_remote[i]),
                    is_error_frame=bool(self.is_error[i]),
                    is_fd=bool(self.is_fd[i]),
                    is_rx=bool(self.is_rx[i]),
                    dlc=length,
                    data=None if self.is_remote[i] else bytes(data[i, : min(length, data.shape[1])]),
                    channel=self.channels[int(self.channel[i])] if self.channels else None,
                    check=False,
                )
            )
        return out


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


@dataclass(slots=True)
class ReadStats:
    """Counters of one log read; ``stopped_at`` says where a truncated file ended."""

    path: str
    frames: int = 0
    bad_records: int = 0
    skipped_objects: int = 0
    problems: list[LogProblem] = field(default_factory=list)
    stopped_at: str | None = None

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


def chunk_from_messages(messages: Sequence[can.Message], channels: ChannelTable) -> FrameChunk:
    """Build a chunk from python-can messages (for the readers python-can provides)."""
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
        err[i] = msg.is_error_frame
        rtr[i] = msg.is_remote_frame
        rx[i] = msg.is_rx
    return FrameChunk(t_ns, ids, ext, chan, channels.snapshot(), dlc, data, fd, err, rtr, rx)


def concat_chunks(chunks: Iterable[FrameChunk]) -> FrameChunk:
    """One chunk from several of the same read (channel tables only grow)."""
    parts = list(chunks)
    if not parts:
        return empty_chunk(())
    channels = max((p.channels for p in parts), key=len)
    width = max(p.data.shape[1] for p in parts)
    data = np.zeros((sum(len(p) for p in parts), width), dtype=np.uint8)
    row = 0
    for p in parts:
        data[row : row + len(p), : p.data.shape[1]] = p.data
        row += len(p)
    return FrameChunk(
        t_ns=np.concatenate([p.t_ns for p in parts]),
        arbitration_id=np.concatenate([p.arbitration_id for p in parts]),
        is_extended=np.concatenate([p.is_extended for p in parts]),
        channel=np.concatenate([p.channel for p in parts]),
        channels=channels,
        dlc=np.concatenate([p.dlc for p in parts]),
        data=data,
        is_fd=np.concatenate([p.is_fd for p in parts]),
        is_error=np.concatenate([p.is_error for p in parts]),
        is_remote=np.concatenate([p.is_remote for p in parts]),
        is_rx=np.concatenate([p.is_rx for p in parts]),
    )


def empty_chunk(channels: tuple[str, ...]) -> FrameChunk:
    z = np.zeros(0, dtype=np.bool_)
    return FrameChunk(
        np.zeros(0, dtype=np.int64),
        np.zeros(0, dtype=np.uint32),
        z,
        np.zeros(0, dtype=np.int16),
        channels,
        np.zeros(0, dtype=np.uint8),
        np.zeros((0, 8), dtype=np.uint8),
        z,
        z,
        z,
        z,
    )
