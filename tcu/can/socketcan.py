"""A SocketCAN reader that takes many frames per system call, with kernel timestamps.

python-can's ``socketcan`` bus does one ``recvmsg`` (and builds one ``can.Message``) per
frame. :class:`SocketcanBus` opens a raw CAN socket (``CAN_RAW``, CAN FD frames on with
``CAN_RAW_FD_FRAMES``, error frames on with ``CAN_RAW_ERR_FILTER``, ``SO_TIMESTAMPNS`` and
``SO_RXQ_OVFL``) and reads it with ``recvmmsg(2)`` through ctypes: up to ``BATCH`` frames per
call into one preallocated buffer of ``CANFD_MTU``-byte slots, repeated with
``MSG_DONTWAIT`` until the socket is empty. The slots are parsed with numpy as a whole
(``struct can_frame`` of 16 bytes, ``struct canfd_frame`` of 72: id and its EFF/RTR/ERR
flags, length, the FD ``flags`` byte with BRS, payload), so no Python object is made per
frame. Times are the kernel's receive timestamps (``SCM_TIMESTAMPNS``, ns); a frame without
one (a kernel that sends none) gets the wall clock at receive, counted in
:attr:`SocketcanBus.untimestamped`. ``SO_RXQ_OVFL`` reports the frames the kernel dropped
because the socket's buffer was full: :attr:`SocketcanBus.kernel_dropped` (cumulative for
the socket), logged at ERROR when it grows. Error frames (``CAN_ERR_FLAG``) come out as
``is_error`` rows (the bus reader counts them), remote frames as ``is_remote``. A datagram of
any other size is counted in :attr:`SocketcanBus.malformed` and logged.

:meth:`SocketcanBus.poll_frames` is what :class:`tcu.can.bus.BusReader` calls once per tick;
:meth:`SocketcanBus.recv_frames` waits for frames first (``select``) and then drains.

Tested here with ``AF_UNIX`` datagram socket pairs carrying real ``can_frame`` and
``canfd_frame`` bytes (``SocketcanBus.from_socket``), kernel timestamps included; this
machine has no ``vcan``, so the path through a real ``AF_CAN`` socket (opening, binding,
the CAN socket options) is not exercised by the tests.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import select
import socket
import struct
import time
from typing import Any

import can
import numpy as np
import numpy.typing as npt

from tcu.errors import BusError
from tcu.frames import FrameBatch, concat_frames

__all__ = ["BATCH", "CANFD_MTU", "CAN_MTU", "SocketcanBus", "parse_control"]

log = logging.getLogger(__name__)

CAN_MTU = 16
CANFD_MTU = 72
BATCH = 256
"""Frames asked for per ``recvmmsg`` call."""
MAX_CALLS = 64
"""``recvmmsg`` calls per :meth:`SocketcanBus.poll_frames` at most (16,384 frames)."""

AF_CAN = 29
CAN_RAW = 1
SOL_CAN_RAW = 101
CAN_RAW_ERR_FILTER = 2
CAN_RAW_FD_FRAMES = 5
CAN_ERR_MASK = 0x1FFFFFFF
CAN_EFF_FLAG = 0x80000000
CAN_RTR_FLAG = 0x40000000
CAN_ERR_FLAG = 0x20000000
CAN_EFF_MASK = 0x1FFFFFFF
CAN_SFF_MASK = 0x7FF
CANFD_BRS = 0x01
SOL_SOCKET = socket.SOL_SOCKET
SO_TIMESTAMPNS = 35
SCM_TIMESTAMPNS = SO_TIMESTAMPNS
SO_RXQ_OVFL = 40
MSG_CTRUNC = 0x08

_CMSG_HDR = struct.Struct("@NiI")  # cmsg_len (size_t), cmsg_level, cmsg_type
_ALIGN = ctypes.sizeof(ctypes.c_size_t)
_TS_SPACE = _CMSG_HDR.size + 16  # CMSG_SPACE(sizeof(struct timespec)) on 64-bit
CONTROL_BYTES = 64
"""Ancillary bytes per frame: the timestamp (32) and the drop counter (24)."""


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(_Iovec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


_LIBC: dict[str, Any] = {}


def _recvmmsg() -> Any:
    """libc's ``recvmmsg`` (loaded once)."""
    fn = _LIBC.get("recvmmsg")
    if fn is None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.recvmmsg
        fn.argtypes = [ctypes.c_int, ctypes.POINTER(_Mmsghdr), ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
        fn.restype = ctypes.c_int
        _LIBC["recvmmsg"] = fn
    return fn


def _cmsg_align(n: int) -> int:
    return (n + _ALIGN - 1) & ~(_ALIGN - 1)


def parse_control(control: bytes) -> tuple[int | None, int | None]:
    """(timestamp ns, kernel drop counter) from one message's ancillary data; None where absent.

    Walks the ``cmsghdr`` records (``SCM_TIMESTAMPNS``: ``struct timespec``;
    ``SO_RXQ_OVFL``: a ``uint32``); other records are skipped.
    """
    t_ns: int | None = None
    dropped: int | None = None
    offset = 0
    while offset + _CMSG_HDR.size <= len(control):
        length, level, kind = _CMSG_HDR.unpack_from(control, offset)
        if length < _CMSG_HDR.size or offset + length > len(control):
            break
        body = offset + _CMSG_HDR.size
        if level == SOL_SOCKET and kind == SCM_TIMESTAMPNS and length >= _CMSG_HDR.size + 16:
            sec, nsec = struct.unpack_from("@qq", control, body)
            t_ns = sec * 1_000_000_000 + nsec
        elif level == SOL_SOCKET and kind == SO_RXQ_OVFL and length >= _CMSG_HDR.size + 4:
            (dropped,) = struct.unpack_from("@I", control, body)
        offset += _cmsg_align(length)
    return t_ns, dropped


class SocketcanBus(can.BusABC):
    """One SocketCAN interface read with ``recvmmsg`` (see the module docstring)."""

    def __init__(
        self, channel: str, *, fd: bool = True, receive_own_messages: bool = False, **kwargs: Any
    ) -> None:
        if kwargs.get("can_filters"):
            # python-can applies filters in recv(), which this reader does not use: refuse, not ignore.
            raise BusError(f'socketcan {channel}: can_filters need reader = "python-can" (bulk: no filters)')
        sock = socket.socket(AF_CAN, socket.SOCK_RAW, CAN_RAW)
        try:
            if fd:
                sock.setsockopt(SOL_CAN_RAW, CAN_RAW_FD_FRAMES, 1)
            sock.setsockopt(SOL_CAN_RAW, CAN_RAW_ERR_FILTER, CAN_ERR_MASK)
            if receive_own_messages:
                sock.setsockopt(SOL_CAN_RAW, 4, 1)  # CAN_RAW_RECV_OWN_MSGS
            sock.bind((channel,))
        except OSError:
            sock.close()
            raise
        self._setup(sock, channel)
        super().__init__(channel=channel, **kwargs)

    @classmethod
    def from_socket(cls, sock: socket.socket, channel: str = "test") -> SocketcanBus:
        """A reader on an already open datagram socket (tests: an ``AF_UNIX`` socket pair)."""
        bus = cls.__new__(cls)
        bus._setup(sock, channel)
        can.BusABC.__init__(bus, channel=channel)
        return bus

    def _setup(self, sock: socket.socket, channel: str) -> None:
        self.channel = channel
        self.channel_info = f"socketcan {channel} (recvmmsg reader)"
        self._sock = sock
        for option in (SO_TIMESTAMPNS, SO_RXQ_OVFL):
            try:
                sock.setsockopt(SOL_SOCKET, option, 1)
            except OSError as exc:  # an old kernel: frames get the receive time, drops are not seen
                log.warning("socketcan %s: socket option %d not available: %s", channel, option, exc)
        sock.setblocking(False)
        self._fd = sock.fileno()
        self.kernel_dropped = 0
        """Frames the kernel dropped on this socket (``SO_RXQ_OVFL``), cumulative."""
        self.untimestamped = 0
        """Frames without a kernel timestamp (given the wall clock at receive)."""
        self.malformed = 0
        """Datagrams that were neither a ``can_frame`` nor a ``canfd_frame`` (skipped, logged)."""
        self.calls = 0
        """``recvmmsg`` system calls made."""
        self._data = (ctypes.c_uint8 * (BATCH * CANFD_MTU))()
        self._control = (ctypes.c_uint8 * (BATCH * CONTROL_BYTES))()
        self._iov = (_Iovec * BATCH)()
        self._msgs = (_Mmsghdr * BATCH)()
        data_base = ctypes.addressof(self._data)
        control_base = ctypes.addressof(self._control)
        for i in range(BATCH):
            self._iov[i].iov_base = data_base + i * CANFD_MTU
            self._iov[i].iov_len = CANFD_MTU
            hdr = self._msgs[i].msg_hdr
            hdr.msg_iov = ctypes.pointer(self._iov[i])
            hdr.msg_iovlen = 1
            hdr.msg_control = control_base + i * CONTROL_BYTES
            hdr.msg_controllen = CONTROL_BYTES
        self._slots = np.frombuffer(memoryview(self._data).cast("B"), np.uint8).reshape(BATCH, CANFD_MTU)
        self._ctrl = np.frombuffer(memoryview(self._control).cast("B"), np.uint8).reshape(
            BATCH, CONTROL_BYTES
        )
        size = ctypes.sizeof(_Mmsghdr)
        if size % 8:
            raise RuntimeError(f"unexpected struct mmsghdr size {size}")
        words = np.frombuffer(memoryview(self._msgs).cast("B"), np.uint64).reshape(BATCH, size // 8)
        self._controllen = words[:, (_Mmsghdr.msg_hdr.offset + _Msghdr.msg_controllen.offset) // 8]
        as_u32 = np.frombuffer(memoryview(self._msgs).cast("B"), np.uint32).reshape(BATCH, size // 4)
        self._msg_len = as_u32[:, _Mmsghdr.msg_len.offset // 4]
        self._msg_flags = as_u32[:, (_Mmsghdr.msg_hdr.offset + _Msghdr.msg_flags.offset) // 4]
        self._failed: Exception | None = None

    # ------------------------------------------------------------------ reading
    def _call(self) -> int:
        """One ``recvmmsg``: how many frames it took (0 when the socket is empty)."""
        self._controllen[:] = CONTROL_BYTES  # the kernel wrote back what it used
        got = _recvmmsg()(self._fd, self._msgs, BATCH, socket.MSG_DONTWAIT, None)
        self.calls += 1
        if got < 0:
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                return 0
            raise OSError(err, f"recvmmsg on {self.channel}: {os.strerror(err)}")
        return int(got)

    def poll_frames(self) -> FrameBatch | None:
        """Every frame the socket holds now (at most ``MAX_CALLS`` × ``BATCH``), without waiting."""
        if self._failed is not None:
            failure, self._failed = self._failed, None
            raise failure
        parts: list[FrameBatch] = []
        for _ in range(MAX_CALLS):
            try:
                got = self._call()
            except OSError as exc:
                if not parts:
                    raise
                self._failed = exc  # frames read before the failure go first
                break
            if got:
                parts.append(self._parse(got))
            if got < BATCH:
                break
        parts = [p for p in parts if len(p)]
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else concat_frames(parts)

    def recv_frames(self, timeout: float | None, max_frames: int = 4096) -> FrameBatch | None:
        """Wait up to ``timeout`` s for the socket to become readable, then drain it."""
        ready, _, _ = select.select([self._sock], [], [], timeout)
        if not ready:
            return None
        return self.poll_frames()

    def _parse(self, n: int) -> FrameBatch:
        now_ns = time.time_ns()
        slots = self._slots[:n]
        msg_len = self._msg_len[:n].copy()
        good = (msg_len == CAN_MTU) | (msg_len == CANFD_MTU)
        if not good.all():
            bad = int((~good).sum())
            self.malformed += bad
            log.warning(
                "socketcan %s: %d datagrams of sizes %s are not CAN frames (skipped; %d so far)",
                self.channel,
                bad,
                sorted(set(msg_len[~good].tolist())),
                self.malformed,
            )
        rows = np.flatnonzero(good) if not good.all() else None
        if rows is not None:
            slots, msg_len = slots[rows], msg_len[rows]
        m = len(msg_len)
        can_id = slots[:, :4].copy().view(np.dtype("=u4")).reshape(m)
        is_fd = msg_len == CANFD_MTU
        ext = (can_id & np.uint32(CAN_EFF_FLAG)) != 0
        ids = np.where(ext, can_id & np.uint32(CAN_EFF_MASK), can_id & np.uint32(CAN_SFF_MASK)).astype(
            np.uint32
        )
        is_error = (can_id & np.uint32(CAN_ERR_FLAG)) != 0
        is_remote = ((can_id & np.uint32(CAN_RTR_FLAG)) != 0) & ~is_error
        ids[is_error] = can_id[is_error] & np.uint32(CAN_ERR_MASK)
        any_fd = bool(is_fd.any())
        width = 64 if any_fd else 8
        dlc = np.minimum(slots[:, 4], np.where(is_fd, 64, 8)).astype(np.uint8)
        data = slots[:, 8 : 8 + width].copy()
        data[np.arange(width)[None, :] >= dlc[:, None]] = 0  # zero past the length (and classic slots' tails)
        brs = is_fd & ((slots[:, 5] & CANFD_BRS) != 0)
        t_ns = self._times(n, rows, now_ns)
        return FrameBatch(
            t_ns=t_ns,
            arbitration_id=ids,
            is_extended=ext | is_error,
            channel=np.zeros(m, np.int16),
            channels=(self.channel,),
            dlc=dlc,
            data=data,
            is_fd=is_fd,
            bitrate_switch=brs,
            is_error=is_error,
            is_remote=is_remote,
            is_rx=np.ones(m, np.bool_),
        )

    def _times(self, n: int, rows: npt.NDArray[np.intp] | None, now_ns: int) -> npt.NDArray[np.int64]:
        """Kernel timestamps of the first ``n`` slots (the fast path reads them in place)."""
        ctrl = self._ctrl[:n]
        used = self._controllen[:n]
        hdr = ctrl[:, :16].copy().view(np.uint64).reshape(n, 2)
        level_type = hdr[:, 1]
        want = np.uint64(SOL_SOCKET) | (np.uint64(SCM_TIMESTAMPNS) << np.uint64(32))
        fast = (hdr[:, 0] == _CMSG_HDR.size + 16) & (level_type == want) & (used >= _TS_SPACE)
        t_ns = np.empty(n, np.int64)
        if fast.all():
            ts = ctrl[:, 16:32].copy().view(np.int64).reshape(n, 2)
            t_ns[:] = ts[:, 0] * 1_000_000_000 + ts[:, 1]
            drops = self._drops_fast(ctrl, used)
        else:
            drops = None
            for i in range(n):
                stamp, dropped = parse_control(bytes(ctrl[i, : int(used[i])]))
                if stamp is None:
                    self.untimestamped += 1
                    stamp = now_ns
                t_ns[i] = stamp
                if dropped is not None:
                    drops = dropped if drops is None else max(drops, dropped)
        if drops is not None and drops > self.kernel_dropped:
            log.error(
                "socketcan %s: the kernel dropped %d frames (socket buffer full; %d in all)",
                self.channel,
                drops - self.kernel_dropped,
                drops,
            )
            self.kernel_dropped = drops
        return t_ns if rows is None else t_ns[rows]

    @staticmethod
    def _drops_fast(ctrl: npt.NDArray[np.uint8], used: npt.NDArray[np.uint64]) -> int | None:
        """The drop counter when it follows the timestamp (the kernel's order), else None."""
        if not bool((used >= _TS_SPACE + _CMSG_HDR.size + 4).any()):
            return None
        last = int(np.flatnonzero(used >= _TS_SPACE + _CMSG_HDR.size + 4)[-1])
        _, dropped = parse_control(bytes(ctrl[last, : int(used[last])]))
        return dropped

    def _recv_internal(self, timeout: float | None) -> tuple[can.Message | None, bool]:
        raise NotImplementedError("the SocketCAN bulk reader hands out frame batches (poll_frames)")

    def send(self, msg: can.Message, timeout: float | None = None) -> None:
        flags = (CAN_EFF_FLAG if msg.is_extended_id else 0) | (CAN_RTR_FLAG if msg.is_remote_frame else 0)
        data = bytes(msg.data)
        if msg.is_fd:
            frame = struct.pack(
                "=IBBBB64s",
                msg.arbitration_id | flags,
                len(data),
                CANFD_BRS if msg.bitrate_switch else 0,
                0,
                0,
                data,
            )
        else:
            frame = struct.pack("=IBBBB8s", msg.arbitration_id | flags, len(data), 0, 0, 0, data)
        try:
            self._sock.send(frame)
        except OSError as exc:
            raise can.CanOperationError(f"socketcan send failed: {exc}") from exc

    def shutdown(self) -> None:
        super().shutdown()
        self._sock.close()
