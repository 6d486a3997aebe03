"""A socketcand client that reads whole TCP chunks and parses them into frame columns.

python-can's socketcand client reads 1,024 bytes per ``select()`` + ``recv()`` and builds
one ``can.Message`` per frame; at 4 buses of 3,600 frames/s that was about 84 % of the
agent's reader threads' CPU. :class:`SocketcandBus` speaks the same protocol (``< hi >``,
``< open CHANNEL >`` → ``< ok >``, ``< rawmode >`` → ``< ok >``, then
``< frame ID SECS.USECS HEXDATA >`` messages back to back) but takes up to
``RECV_BYTES`` per system call and parses all complete messages of the buffer at once:
one regular expression pass (C), the ids and times as integers, the payloads with one
``binascii.unhexlify`` of the joined hex when every frame has 8 bytes (the common case).
:meth:`SocketcandBus.recv_frames` hands them out as a :class:`~tcu.frames.FrameBatch`;
:meth:`SocketcandBus.poll_frames` does the same without waiting, which is how
:class:`tcu.can.bus.BusReader` reads it: once per tick, everything the socket holds, without
a ``can.Message`` per frame.

Semantics kept from python-can's client: an id of 3 hex digits is standard, any other
length extended; the payload length is the frame's DLC; ``< error ID SECS.USECS >`` is an
error frame (counted by the reader, not decoded). Differences, all loud: a server that
closes the connection raises :class:`can.CanError` at once (python-can's client spins on
the dead socket); any other message in rawmode is counted in :attr:`SocketcandBus.ignored`
and logged (first one at WARNING, then every 1,000th); a message longer than
``MAX_MESSAGE`` bytes without its closing ``>`` is a protocol error (CanError, the reader
reopens), not a silent discard.
"""

from __future__ import annotations

import binascii
import logging
import re
import select
import socket
import time
from typing import Any

import can
import numpy as np

from tcu.frames import FrameBatch, concat_frames

__all__ = ["POLL_BYTES", "RECV_BYTES", "SocketcandBus"]

log = logging.getLogger(__name__)

RECV_BYTES = 1 << 18
"""Bytes asked for per ``recv`` (the kernel returns what it holds, up to this)."""

POLL_BYTES = 1 << 22
"""At most this many bytes are read per :meth:`SocketcandBus.poll_frames` (about 100,000 frames)."""

MAX_MESSAGE = 512
"""A buffer tail longer than this without a ``>`` is not socketcand."""

_FRAME = re.compile(rb"< frame ([0-9A-Fa-f]{1,8}) (\d+)\.(\d{1,9}) ([0-9A-Fa-f]*) >")
_ERROR = re.compile(rb"< error ([0-9A-Fa-f]{1,8}) (\d+)\.(\d{1,9})[^>]*>")
_ANY = re.compile(rb"<[^>]*>")


def _t_ns(secs: bytes, frac: bytes) -> int:
    """``SECS.FRAC`` seconds → integer nanoseconds at µs resolution (as python-can's float, rounded)."""
    us = int(frac.ljust(6, b"0")[:6]) if len(frac) != 6 else int(frac)
    return (int(secs) * 1_000_000 + us) * 1000


class SocketcandBus(can.BusABC):
    """One socketcand channel in rawmode, read in bulk (see the module docstring)."""

    def __init__(
        self,
        channel: str,
        *,
        host: str,
        port: int,
        connect_timeout_s: float = 5.0,
        **kwargs: Any,
    ) -> None:
        self.channel = channel
        self.channel_info = f"socketcand {host}:{port} {channel} (bulk reader)"
        self.ignored = 0
        """Messages in rawmode that are neither frames nor error frames (counted, logged)."""
        self._buf = b""
        self._pending: list[FrameBatch] = []
        self._pending_n = 0
        self._failed: Exception | None = None
        self._sock = socket.create_connection((str(host), int(port)), timeout=connect_timeout_s)
        try:
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._expect(b"< hi >")
            self._sock.sendall(f"< open {channel} >".encode("ascii"))
            self._expect(b"< ok >")
            self._sock.sendall(b"< rawmode >")
            self._expect(b"< ok >")
            self._sock.settimeout(None)
        except BaseException:
            self._sock.close()
            raise
        super().__init__(channel=channel, **kwargs)

    def _expect(self, reply: bytes) -> None:
        """Read one ``< ... >`` message of the handshake; CanError if it is not ``reply``."""
        while True:
            start = self._buf.find(b"<")
            end = self._buf.find(b">", start + 1) if start >= 0 else -1
            if end >= 0:
                got = self._buf[start : end + 1]
                self._buf = self._buf[end + 1 :]
                if b" ".join(got.split()) != reply:
                    text = got.decode(errors="replace")
                    raise can.CanError(f"socketcand handshake: expected {reply.decode()!r}, got {text!r}")
                return
            chunk = self._sock.recv(4096)
            if not chunk:
                raise can.CanError("socketcand handshake: the server closed the connection")
            self._buf += chunk

    # ------------------------------------------------------------------ reading
    def recv_frames(self, timeout: float | None, max_frames: int = 512) -> FrameBatch | None:
        """Frames that arrive within ``timeout`` s (returned early once ``max_frames`` are in).

        Returns at most ``max_frames`` frames (the rest waits for the next call); None when
        none came. Raises :class:`can.CanError` when the server closed the connection or
        sent something that is not socketcand, OSError when the socket failed.
        """
        if self._failed is not None and not self._pending_n:
            raise self._failed
        deadline = None if timeout is None else time.monotonic() + timeout
        # The chunks of one call are parsed together (the parse has a fixed cost per call);
        # ``>`` counts the messages read so far (frames or not) for the early return.
        chunks: list[bytes] = []
        read = self._pending_n
        try:
            while read < max_frames:
                wait = None if deadline is None else deadline - time.monotonic()
                if wait is not None and wait <= 0:
                    break
                try:
                    ready, _, _ = select.select([self._sock], [], [], wait)
                    if not ready:
                        break
                    chunk = self._sock.recv(RECV_BYTES)
                except OSError as exc:
                    failure: Exception = exc
                else:
                    if chunk:
                        chunks.append(chunk)
                        read += chunk.count(b">")
                        continue
                    failure = can.CanError("the socketcand server closed the connection")
                if not chunks and not self._pending_n:
                    raise failure
                # Frames read before the failure are handed out first; the next call raises.
                self._failed = failure
                break
        finally:
            if chunks:
                self._feed(b"".join(chunks))
        return self._take(max_frames)

    def poll_frames(self) -> FrameBatch | None:
        """Every frame the socket holds now, without waiting (the reader's once-per-tick drain).

        Reads with ``MSG_DONTWAIT`` until the kernel has nothing more (at most ``POLL_BYTES``
        per call, so one fast bus cannot hold the thread), parses all of it in one pass and
        returns it (None when nothing came). End of file or a socket error raises, after the
        frames read before it were handed out (the next call raises).
        """
        if self._failed is not None and not self._pending_n:
            raise self._failed
        chunks: list[bytes] = []
        size = 0
        try:
            while size < POLL_BYTES:
                try:
                    chunk = self._sock.recv(RECV_BYTES, socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    failure: Exception = exc
                else:
                    if chunk:
                        chunks.append(chunk)
                        size += len(chunk)
                        continue
                    failure = can.CanError("the socketcand server closed the connection")
                if not chunks and not self._pending_n:
                    raise failure
                self._failed = failure
                break
        finally:
            if chunks:
                self._feed(b"".join(chunks))
        return self._take(1 << 62)

    def _take(self, max_frames: int) -> FrameBatch | None:
        if not self._pending_n:
            return None
        batch = self._pending[0] if len(self._pending) == 1 else concat_frames(self._pending)
        if len(batch) > max_frames:
            rest = batch.select(np.arange(max_frames, len(batch)))
            batch = batch.select(np.arange(max_frames))
            self._pending, self._pending_n = [rest], len(rest)
        else:
            self._pending, self._pending_n = [], 0
        return batch

    def _feed(self, chunk: bytes) -> None:
        """Parse every complete message of the buffer into a pending batch."""
        buf = self._buf + chunk if self._buf else chunk
        end = buf.rfind(b">")
        if end < 0:
            self._buf = buf
            self._check_tail()
            return
        body, self._buf = buf[: end + 1], buf[end + 1 :]
        self._check_tail()
        frames = _FRAME.findall(body)
        messages = body.count(b"<")
        errors: list[tuple[bytes, bytes, bytes]] = []
        if messages != len(frames):
            errors = _ERROR.findall(body)
            others = messages - len(frames) - len(errors)
            if others > 0:
                self._ignore(body, others)
        batch = _frames(self.channel, frames, errors)
        if batch is not None:
            self._pending.append(batch)
            self._pending_n += len(batch)

    def _check_tail(self) -> None:
        if len(self._buf) > MAX_MESSAGE:
            tail = self._buf[:60].decode("ascii", errors="replace")
            self._buf = b""
            raise can.CanError(f"socketcand: {MAX_MESSAGE}+ bytes without '>' (not socketcand?): {tail!r}...")

    def _ignore(self, body: bytes, count: int) -> None:
        before = self.ignored
        self.ignored += count
        if before == 0 or before // 1000 != self.ignored // 1000:
            sample = next(
                (m for m in _ANY.findall(body) if not m.startswith((b"< frame ", b"< error "))),
                b"",
            )
            log.warning(
                "socketcand %s: %d messages that are not frames ignored so far, e.g. %r",
                self.channel,
                self.ignored,
                sample.decode("ascii", errors="replace")[:80],
            )

    def _recv_internal(self, timeout: float | None) -> tuple[can.Message | None, bool]:
        """python-can's one-message API on top of :meth:`recv_frames` (for callers other than the reader)."""
        got = self.recv_frames(timeout, max_frames=1)
        if got is None:
            return None, False
        length = int(got.dlc[0])
        return (
            can.Message(
                timestamp=int(got.t_ns[0]) / 1e9,
                arbitration_id=int(got.arbitration_id[0]),
                is_extended_id=bool(got.is_extended[0]),
                is_error_frame=bool(got.is_error[0]),
                dlc=length,
                data=bytes(got.data[0, :length]),
                channel=self.channel,
                is_rx=True,
                check=False,
            ),
            False,
        )

    # ------------------------------------------------------------------ sending
    def send(self, msg: can.Message, timeout: float | None = None) -> None:
        ident = f"{msg.arbitration_id:X}" if msg.is_extended_id else f"{msg.arbitration_id:03X}"
        data = " ".join(f"{b:02X}" for b in bytes(msg.data))
        text = f"< send {ident} {msg.dlc} {data} >" if data else f"< send {ident} {msg.dlc} >"
        try:
            self._sock.sendall(text.encode("ascii"))
        except OSError as exc:
            raise can.CanOperationError(f"socketcand send failed: {exc}") from exc

    def shutdown(self) -> None:
        super().shutdown()
        self._sock.close()


def _frames(
    channel: str,
    frames: list[tuple[bytes, bytes, bytes, bytes]],
    errors: list[tuple[bytes, bytes, bytes]],
) -> FrameBatch | None:
    n, m = len(frames), len(errors)
    if n + m == 0:
        return None
    total = n + m
    ids = np.empty(total, np.uint32)
    ext = np.empty(total, np.bool_)
    t_ns = np.empty(total, np.int64)
    if n:
        idl, secs, fracs, hexes = zip(*frames, strict=True)
        ids[:n] = [int(x, 16) for x in idl]
        ext[:n] = [len(x) != 3 for x in idl]
        t_ns[:n] = [_t_ns(s, f) for s, f in zip(secs, fracs, strict=True)]
        lengths = np.fromiter(map(len, hexes), np.int64, n) // 2
        if n and int(lengths.min()) == 8 and int(lengths.max()) == 8:
            payload = np.frombuffer(binascii.unhexlify(b"".join(hexes)), np.uint8).reshape(n, 8)
            width = 8
        else:
            width = 8 if int(lengths.max()) <= 8 else 64
            payload = np.zeros((n, width), np.uint8)
            for i, h in enumerate(hexes):
                raw = binascii.unhexlify(h)
                payload[i, : len(raw)] = np.frombuffer(raw, np.uint8)
    else:
        width = 8
        lengths = np.zeros(0, np.int64)
        payload = np.zeros((0, 8), np.uint8)
    data = np.zeros((total, width), np.uint8)
    data[:n] = payload
    dlc = np.zeros(total, np.uint8)
    dlc[:n] = lengths
    is_error = np.zeros(total, np.bool_)
    for j, (ident, s, f) in enumerate(errors):
        ids[n + j] = int(ident, 16) & 0x1FFFFFFF
        ext[n + j] = True
        t_ns[n + j] = _t_ns(s, f)
        is_error[n + j] = True
    no = np.zeros(total, np.bool_)
    return FrameBatch(
        t_ns=t_ns,
        arbitration_id=ids,
        is_extended=ext,
        channel=np.zeros(total, np.int16),
        channels=(channel,),
        dlc=dlc,
        data=data,
        is_fd=no,
        bitrate_switch=no,
        is_error=is_error,
        is_remote=no,
        is_rx=np.ones(total, np.bool_),
    )
