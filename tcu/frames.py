"""One columnar frame type for every CAN source: bus readers, log readers, replay.

A :class:`FrameBatch` holds ``n`` frames in arrival (file) order, one numpy array per
field. Bus readers (:mod:`tcu.can.bus`) and log readers (:mod:`tcu.can.logs`) fill it
directly; the decoder (:mod:`tcu.signals.decoder`), the campaign engine and replay take
it as it is. CAN FD frames keep their flags (``is_fd``, ``bitrate_switch``) end to end.

The frame key (one convention everywhere): ``arbitration_id | 0x80000000`` for an
extended (29-bit) id, the id itself for a standard one — :func:`frame_key` and
:func:`frame_keys`. Bit 31 is free in both id spaces and keeps keys in ``uint32``; it is
the flag BLF and python-can's ASC/TRC writers use.

This module is a leaf: it imports numpy only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["EXTENDED_FLAG", "FrameBatch", "concat_frames", "empty_frames", "frame_key", "frame_keys"]

EXTENDED_FLAG = 0x80000000
"""Bit 31 of a frame key: the id is extended (29 bits)."""

_EXT = np.uint32(EXTENDED_FLAG)


def frame_key(arbitration_id: int, is_extended: bool) -> int:
    """The frame key of one id (see the module docstring)."""
    return int(arbitration_id) | (EXTENDED_FLAG if is_extended else 0)


def frame_keys(
    arbitration_id: npt.NDArray[np.uint32], is_extended: npt.NDArray[np.bool_]
) -> npt.NDArray[np.uint32]:
    """The frame keys of arrays of ids and extended flags."""
    keys: npt.NDArray[np.uint32] = arbitration_id.astype(np.uint32) | np.where(
        is_extended, _EXT, np.uint32(0)
    ).astype(np.uint32)
    return keys


@dataclass(frozen=True, slots=True)
class FrameBatch:
    """Frames in arrival order, one array per field (all of length n).

    ``t_ns``: CAN source time, UTC epoch nanoseconds (or log-relative, as recorded; µs
    resolution when it came from python-can's float seconds). ``channel``: index into
    ``channels`` (a bus reader's batch has one channel, its bus name; a log's the names as
    the log spells them, e.g. ``"can0"`` or ``"1"``). ``dlc``: payload length in bytes
    (python-can's ``Message.dlc``). ``data``: payloads, zero-padded to the batch's width (8,
    or 64 when a CAN FD frame is present). ``is_fd`` / ``bitrate_switch``: CAN FD frame and
    its BRS flag. ``is_error``, ``is_remote``: error and remote frames (a bus reader counts
    and leaves them out); ``is_rx``: received, not transmitted.
    """

    t_ns: npt.NDArray[np.int64]
    arbitration_id: npt.NDArray[np.uint32]
    is_extended: npt.NDArray[np.bool_]
    channel: npt.NDArray[np.int16]
    channels: tuple[str, ...]
    dlc: npt.NDArray[np.uint8]
    data: npt.NDArray[np.uint8]
    is_fd: npt.NDArray[np.bool_]
    bitrate_switch: npt.NDArray[np.bool_]
    is_error: npt.NDArray[np.bool_]
    is_remote: npt.NDArray[np.bool_]
    is_rx: npt.NDArray[np.bool_]

    def __len__(self) -> int:
        return int(self.t_ns.shape[0])

    @classmethod
    def of_bus(
        cls,
        bus: str,
        t_ns: npt.NDArray[np.int64],
        arbitration_id: npt.NDArray[np.uint32],
        is_extended: npt.NDArray[np.bool_],
        *,
        dlc: npt.NDArray[np.uint8],
        data: npt.NDArray[np.uint8],
        is_fd: npt.NDArray[np.bool_] | None = None,
        bitrate_switch: npt.NDArray[np.bool_] | None = None,
    ) -> FrameBatch:
        """Data frames received on one bus (no error or remote frames)."""
        n = int(t_ns.shape[0])
        no = np.zeros(n, dtype=np.bool_)
        return cls(
            t_ns=t_ns,
            arbitration_id=arbitration_id,
            is_extended=is_extended,
            channel=np.zeros(n, dtype=np.int16),
            channels=(bus,),
            dlc=dlc,
            data=data,
            is_fd=no if is_fd is None else is_fd,
            bitrate_switch=no if bitrate_switch is None else bitrate_switch,
            is_error=no,
            is_remote=no,
            is_rx=np.ones(n, dtype=np.bool_),
        )

    @classmethod
    def of_payloads(
        cls,
        bus: str,
        t_ns: npt.NDArray[np.int64],
        arbitration_id: npt.NDArray[np.uint32],
        payloads: Sequence[bytes],
        *,
        is_extended: npt.NDArray[np.bool_] | None = None,
        is_fd: npt.NDArray[np.bool_] | None = None,
        bitrate_switch: npt.NDArray[np.bool_] | None = None,
    ) -> FrameBatch:
        """Data frames of one bus from payload bytes: an ``(n, 8)`` matrix, ``(n, 64)`` past 8 bytes."""
        n = len(payloads)
        dlc = np.fromiter(map(len, payloads), np.uint8, n)
        if n and bool((dlc == 8).all()):  # the common case: one copy
            data = np.frombuffer(b"".join(payloads), np.uint8).reshape(n, 8).copy()
        else:
            data = np.zeros((n, 64 if n and int(dlc.max()) > 8 else 8), np.uint8)
            for row, payload in enumerate(payloads):
                if payload:
                    data[row, : len(payload)] = np.frombuffer(payload, np.uint8)
        return cls.of_bus(
            bus,
            t_ns,
            arbitration_id,
            np.zeros(n, np.bool_) if is_extended is None else is_extended,
            dlc=dlc,
            data=data,
            is_fd=is_fd,
            bitrate_switch=bitrate_switch,
        )

    @property
    def bus(self) -> str:
        """The one channel name of a single-channel batch (a bus reader's); ``""`` if none."""
        if len(self.channels) > 1:
            raise ValueError(f"a batch of {len(self.channels)} channels has no single bus")
        return self.channels[0] if self.channels else ""

    def keys(self) -> npt.NDArray[np.uint32]:
        """The frame key of every frame (:func:`frame_keys`)."""
        return frame_keys(self.arbitration_id, self.is_extended)

    def payload(self, row: int) -> bytes:
        """Frame ``row``'s payload as bytes (``dlc`` long)."""
        return self.data[row, : min(int(self.dlc[row]), self.data.shape[1])].tobytes()

    def channel_names(self) -> npt.NDArray[np.str_]:
        """Channel name per frame (a convenience for small batches)."""
        names = np.array(self.channels if self.channels else ("",), dtype=np.str_)
        return names[self.channel]

    def select(self, mask: npt.NDArray[np.bool_] | npt.NDArray[np.intp]) -> FrameBatch:
        """The frames picked by a boolean mask or index array, same channel table."""
        return FrameBatch(
            t_ns=self.t_ns[mask],
            arbitration_id=self.arbitration_id[mask],
            is_extended=self.is_extended[mask],
            channel=self.channel[mask],
            channels=self.channels,
            dlc=self.dlc[mask],
            data=self.data[mask],
            is_fd=self.is_fd[mask],
            bitrate_switch=self.bitrate_switch[mask],
            is_error=self.is_error[mask],
            is_remote=self.is_remote[mask],
            is_rx=self.is_rx[mask],
        )

    def renamed(self, channels: tuple[str, ...]) -> FrameBatch:
        """The same frames under another channel table (same length and order)."""
        if len(channels) != len(self.channels):
            raise ValueError(f"{len(channels)} channel names for {len(self.channels)} channels")
        return FrameBatch(
            self.t_ns,
            self.arbitration_id,
            self.is_extended,
            self.channel,
            channels,
            self.dlc,
            self.data,
            self.is_fd,
            self.bitrate_switch,
            self.is_error,
            self.is_remote,
            self.is_rx,
        )


def concat_frames(batches: Iterable[FrameBatch]) -> FrameBatch:
    """One batch from several whose channel tables are prefixes of one another (one read)."""
    parts = list(batches)
    if not parts:
        return empty_frames(())
    channels = max((p.channels for p in parts), key=len)
    for p in parts:
        if channels[: len(p.channels)] != p.channels:
            raise ValueError(f"channel tables {p.channels} and {channels} do not agree")
    width = max(p.data.shape[1] for p in parts)
    data = np.zeros((sum(len(p) for p in parts), width), dtype=np.uint8)
    row = 0
    for p in parts:
        data[row : row + len(p), : p.data.shape[1]] = p.data
        row += len(p)
    return FrameBatch(
        t_ns=np.concatenate([p.t_ns for p in parts]),
        arbitration_id=np.concatenate([p.arbitration_id for p in parts]),
        is_extended=np.concatenate([p.is_extended for p in parts]),
        channel=np.concatenate([p.channel for p in parts]),
        channels=channels,
        dlc=np.concatenate([p.dlc for p in parts]),
        data=data,
        is_fd=np.concatenate([p.is_fd for p in parts]),
        bitrate_switch=np.concatenate([p.bitrate_switch for p in parts]),
        is_error=np.concatenate([p.is_error for p in parts]),
        is_remote=np.concatenate([p.is_remote for p in parts]),
        is_rx=np.concatenate([p.is_rx for p in parts]),
    )


def empty_frames(channels: tuple[str, ...]) -> FrameBatch:
    """A batch of no frames."""
    z = np.zeros(0, dtype=np.bool_)
    return FrameBatch(
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
        z,
    )
