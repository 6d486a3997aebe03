"""Free loopback ports for tests that must name a port before anything listens on it.

Prefer binding port 0 in the server itself; this is for the cases where a test needs a
port number first (a link that is down until a server is started later, an external
broker's config file).
"""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
