"""The systemd notify protocol (``sd_notify(3)``) without a dependency, and a progress heartbeat.

A service started with ``Type=notify`` gets ``$NOTIFY_SOCKET``: a unix datagram socket
(a path, or ``@name`` in the abstract namespace) to which it sends newline-separated
``KEY=value`` assignments: ``READY=1`` once it serves, ``STATUS=...`` for ``systemctl
status``, ``WATCHDOG=1`` at least every ``$WATCHDOG_USEC`` / 2 while healthy, and
``STOPPING=1`` when it shuts down. :func:`notify_settings` reads those variables from a
mapping the CLI passes (``os.environ``); :class:`Notifier` sends. Without a socket every
call is a no-op. A send that fails is logged (once per distinct error) and counted in
:attr:`Notifier.send_errors`, never raised: a lost notification must not stop the service,
but it is not silent either (systemd will report the missed watchdog or start timeout).

:class:`Heartbeat` is the progress marker of the loop that matters (the agent's
pipeline, the ingest's writer): the watchdog pings only while it is *healthy*
(:meth:`Heartbeat.healthy`), so a stuck loop stops the pings even when the event loop
that sends them is still alive.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = ["Heartbeat", "Notifier", "NotifySettings", "notify_settings"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class NotifySettings:
    """Where to notify and how often the watchdog wants a ping (from the service manager)."""

    socket: str | None = None
    """``$NOTIFY_SOCKET``: a filesystem path, or ``@name`` for the abstract namespace."""
    watchdog_s: float | None = None
    """``$WATCHDOG_USEC`` in seconds, when the watchdog is on for this process."""


def notify_settings(env: Mapping[str, str], *, pid: int | None = None) -> NotifySettings:
    """The settings from ``$NOTIFY_SOCKET``, ``$WATCHDOG_USEC`` and ``$WATCHDOG_PID``.

    The watchdog is ignored when ``$WATCHDOG_PID`` names another process (it was meant
    for a parent) or ``$WATCHDOG_USEC`` is not a positive integer (logged).
    """
    address = env.get("NOTIFY_SOCKET") or None
    watchdog_s: float | None = None
    raw = env.get("WATCHDOG_USEC", "")
    if raw:
        owner = env.get("WATCHDOG_PID", "")
        me = os.getpid() if pid is None else pid
        if owner and owner != str(me):
            log.info("systemd watchdog: WATCHDOG_PID=%s is not this process (%d): not pinging", owner, me)
        elif raw.isdigit() and int(raw) > 0:
            watchdog_s = int(raw) / 1e6
        else:
            log.warning("systemd watchdog: WATCHDOG_USEC=%r is not a positive integer: not pinging", raw)
    return NotifySettings(socket=address, watchdog_s=watchdog_s)


class Notifier:
    """Sends ``sd_notify`` datagrams to ``settings.socket``; a no-op without one."""

    def __init__(self, settings: NotifySettings) -> None:
        self.settings = settings
        self.sent = 0
        self.send_errors = 0
        self._last_error = ""
        self._lock = threading.Lock()
        self._address: str | bytes | None = None
        self._sock: socket.socket | None = None
        address = settings.socket
        if address:
            if address.startswith("@"):
                self._address = b"\0" + address[1:].encode()
            elif address.startswith("/"):
                self._address = address
            else:
                log.warning("NOTIFY_SOCKET=%r is neither a path nor @abstract: not notifying", address)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def watchdog_s(self) -> float | None:
        return self.settings.watchdog_s if self.enabled else None

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=value`` lines in one datagram; True when it was sent."""
        if self._address is None or not assignments:
            return False
        data = "\n".join(a.replace("\n", " ") for a in assignments).encode("utf-8", "replace")
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(data, self._address)
            except OSError as exc:
                self.send_errors += 1
                text = f"{type(exc).__name__}: {exc}"
                if text != self._last_error:
                    log.error("cannot notify systemd at %s: %s", self.settings.socket, text)
                    self._last_error = text
                return False
        if self._last_error:
            log.info("notifying systemd at %s works again", self.settings.socket)
            self._last_error = ""
        self.sent += 1
        return True

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self, status: str = "") -> bool:
        return self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


class Heartbeat:
    """Progress of one loop: it beats when it does work, and says when it waits for input.

    ``healthy(max_age_s)`` is True while the loop waits for input (idle is fine) or has
    beaten within ``max_age_s``. A loop stuck anywhere else (an await that never returns, a
    commit that hangs) stops being healthy ``max_age_s`` after its last beat. Thread-safe
    enough for one writer (plain attribute stores).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.last_s = clock()
        self.waiting_for: str | None = "start"
        self.beats = 0

    def beat(self) -> None:
        """The loop did some work (and is now busy until it calls :meth:`waiting` again)."""
        self.last_s = self._clock()
        self.waiting_for = None
        self.beats += 1

    def waiting(self, what: str = "input") -> None:
        """The loop now waits for ``what`` (its input, or room downstream): that is not a stall."""
        self.last_s = self._clock()
        self.waiting_for = what

    def healthy(self, max_age_s: float) -> bool:
        return self.waiting_for is not None or self._clock() - self.last_s <= max_age_s

    def age_s(self) -> float:
        return self._clock() - self.last_s
