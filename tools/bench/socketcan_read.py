"""Benchmark the SocketCAN reader: ``recvmmsg`` (tcu) against a ``socket.recvmsg`` loop, same frames.

There is no ``vcan`` on the machine this was written on, so the frames travel over an
``AF_UNIX`` ``SOCK_DGRAM`` socket pair, one datagram per frame, as the bytes a ``CAN_RAW``
socket delivers (``struct can_frame``, 16 bytes; every 10th a ``struct canfd_frame``, 72 bytes,
with BRS), sent by a child process as fast as the socket takes them; the kernel timestamps
them (``SO_TIMESTAMPNS``). Two readers, each draining the socket until it has every frame:

* **recvmmsg**: :class:`tcu.can.socketcan.SocketcanBus` (``poll_frames``: up to 256 frames per
  system call, parsed with numpy);
* **recvmsg**: the alternative the issue names, ``socket.recvmsg`` with ``MSG_DONTWAIT`` in a
  loop until the socket is empty, each frame unpacked with ``struct`` and its timestamp from
  the ancillary data, into the same ``FrameBatch`` columns.

Measured: the reader thread's CPU time (``time.thread_time``) per frame, and frames/s of wall
time. Runs interleave ``recvmmsg, recvmsg, ...`` (``--rounds`` of each); the first run of
each side is checked equal (ids, flags, lengths, payloads) against what was sent.

    .venv/bin/python tools/bench/socketcan_read.py --json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import select
import socket
import statistics
import struct
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tcu.can.socketcan import CANFD_BRS, SCM_TIMESTAMPNS, SocketcanBus  # noqa: E402
from tcu.frames import FrameBatch, concat_frames  # noqa: E402

CAN = struct.Struct("=IBBBB8s")
CANFD = struct.Struct("=IBBBB64s")


def frames(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        payload = i.to_bytes(8, "little")
        if i % 10 == 9:
            out.append(CANFD.pack(0x100 + i % 0x600, 12, CANFD_BRS, 0, 0, payload + b"\xee" * 4))
        else:
            out.append(CAN.pack(0x100 + i % 0x600, 8, 0, 0, 0, payload))
    return out


def _sender(sock: socket.socket, n: int, go: Connection) -> None:
    data = frames(n)
    go.recv()
    for frame in data:
        sock.send(frame)


def read_recvmmsg(sock: socket.socket, n: int) -> tuple[FrameBatch, float]:
    bus = SocketcanBus.from_socket(sock, "bench")
    parts: list[FrameBatch] = []
    got = 0
    started = time.thread_time()
    while got < n:
        batch = bus.poll_frames()
        if batch is None:
            select.select([sock], [], [], 1.0)
            continue
        parts.append(batch)
        got += len(batch)
    cpu = time.thread_time() - started
    bus.shutdown()
    return concat_frames(parts), cpu


def read_recvmsg(sock: socket.socket, n: int) -> tuple[FrameBatch, float]:
    sock.setsockopt(socket.SOL_SOCKET, SCM_TIMESTAMPNS, 1)
    sock.setblocking(False)
    control = socket.CMSG_SPACE(16)
    t_ns: list[int] = []
    ids: list[int] = []
    ext: list[bool] = []
    fd: list[bool] = []
    brs: list[bool] = []
    payloads: list[bytes] = []
    started = time.thread_time()
    while len(ids) < n:
        try:
            data, ancillary, _, _ = sock.recvmsg(72, control, socket.MSG_DONTWAIT)
        except BlockingIOError:
            select.select([sock], [], [], 1.0)
            continue
        stamp = time.time_ns()
        for level, kind, body in ancillary:
            if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS:
                sec, nsec = struct.unpack("@qq", body[:16])
                stamp = sec * 1_000_000_000 + nsec
        can_id, length, flags, _, _ = struct.unpack_from("=IBBBB", data)
        is_fd = len(data) == 72
        t_ns.append(stamp)
        ids.append(can_id & 0x1FFFFFFF if can_id & 0x80000000 else can_id & 0x7FF)
        ext.append(bool(can_id & 0x80000000))
        fd.append(is_fd)
        brs.append(is_fd and bool(flags & CANFD_BRS))
        payloads.append(data[8 : 8 + length])
    batch = FrameBatch.of_payloads(
        "bench",
        np.array(t_ns, np.int64),
        np.array(ids, np.uint32),
        payloads,
        is_extended=np.array(ext, np.bool_),
        is_fd=np.array(fd, np.bool_),
        bitrate_switch=np.array(brs, np.bool_),
    )
    return batch, time.thread_time() - started


def one_run(side: str, n: int) -> tuple[FrameBatch, float, float]:
    sender, receiver = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for s in (sender, receiver):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    parent, child = multiprocessing.Pipe()
    proc = multiprocessing.get_context("fork").Process(target=_sender, args=(sender, n, child))
    proc.start()
    sender.close()
    wall = time.perf_counter()
    parent.send("go")
    batch, cpu = (read_recvmmsg if side == "recvmmsg" else read_recvmsg)(receiver, n)
    wall = time.perf_counter() - wall
    proc.join(30)
    receiver.close()
    return batch, cpu, wall


def check(batch: FrameBatch, n: int) -> None:
    want = frames(n)
    if len(batch) != n:
        raise SystemExit(f"{len(batch)} frames read, {n} sent")
    for i, frame in enumerate(want):
        can_id, length, flags, _, _ = struct.unpack_from("=IBBBB", frame)
        ok = (
            int(batch.arbitration_id[i]) == can_id
            and int(batch.dlc[i]) == length
            and batch.payload(i) == frame[8 : 8 + length]
            and bool(batch.is_fd[i]) == (len(frame) == 72)
            and bool(batch.bitrate_switch[i]) == bool(len(frame) == 72 and flags & CANFD_BRS)
        )
        if not ok:
            raise SystemExit(f"frame {i} differs")
    if not (np.diff(batch.t_ns) >= 0).all():
        raise SystemExit("kernel timestamps out of order")


def _stats(values: list[float], digits: int) -> dict[str, float]:
    return {
        "min": round(min(values), digits),
        "median": round(statistics.median(values), digits),
        "max": round(max(values), digits),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    n = args.frames
    cpu_us: dict[str, list[float]] = {"recvmmsg": [], "recvmsg": []}
    fps: dict[str, list[float]] = {"recvmmsg": [], "recvmsg": []}
    for r in range(args.rounds):
        for side in ("recvmmsg", "recvmsg"):
            batch, cpu, wall = one_run(side, n)
            if r == 0:
                check(batch, n)
            cpu_us[side].append(cpu / n * 1e6)
            fps[side].append(n / wall)
    return {
        "bench": "socketcan_read",
        "transport": "AF_UNIX SOCK_DGRAM pair (no vcan here), one can_frame/canfd_frame per datagram",
        "frames": n,
        "rounds": args.rounds,
        "order": "interleaved: recvmmsg, recvmsg, ...",
        "checked_equal": True,
        "reader_cpu_us_per_frame": {side: _stats(v, 3) for side, v in cpu_us.items()},
        "frames_per_s_wall": {side: _stats(v, 0) for side, v in fps.items()},
        "cpu_ratio_recvmsg_over_recvmmsg": round(
            statistics.median(cpu_us["recvmsg"]) / statistics.median(cpu_us["recvmmsg"]), 2
        ),
        "python": platform.python_version(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the JSON line last (always printed)")
    args = parser.parse_args()
    print(json.dumps(run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
