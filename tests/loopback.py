"""Free loopback ports for tests that must name a port before anything listens on it (and a frame helper).

Prefer binding port 0 in the server itself; this is for the cases where a test needs a
port number first (a link that is down until a server is started later, an external
broker's config file).
"""

from __future__ import annotations

import asyncio
import socket
import time

from tcu.can.collector import FrameCollector
from tcu.frames import FrameBatch


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def next_frames(collector: FrameCollector, timeout_s: float) -> FrameBatch:
    """What the bus readers have put in ``collector`` (everything, all buses), waiting for some.

    The test's stand-in for the agent's tick: it takes every 10 ms until frames are there.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        batch = collector.take()
        if batch is not None:
            return batch
        if time.monotonic() > deadline:
            raise TimeoutError(f"no frames within {timeout_s} s")
        await asyncio.sleep(0.01)
