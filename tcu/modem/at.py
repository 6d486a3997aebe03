"""Async AT command channel over a serial tty or pseudo-terminal.

The port is opened non-blocking in raw mode and read with ``loop.add_reader`` (no
thread, nothing blocks the loop). One command is in flight at a time; its lines are
collected until a final result code::

    OK                    -> the info lines are returned
    ERROR                 -> AtCommandError
    +CME ERROR: <n|text>  -> CmeError (code and 27.007 name)
    +CMS ERROR: <n>       -> CmeError
    (nothing in time)     -> AtTimeoutError (also a TimeoutError)

Unsolicited result codes (``+CEREG:``, ``+CREG:``, ``+CGREG:``, ``+C5GREG:``, ``RING``,
NMEA ``$G...`` sentences, and any ``+XXX:`` line while no command is waiting) go to
subscribers, also while a command is in flight. A line whose prefix equals the prefix of
the command in flight (``AT+CEREG?`` → ``+CEREG``) is taken as that command's answer.
Line parsing tolerates garbage: bytes are decoded leniently, control characters are
dropped, empty lines and the command echo are ignored, and stray lines with no command
waiting are logged at DEBUG and dropped.

After a command timed out its answer may still come, and must not be taken for the next
command's. The channel resynchronises two ways. When the modem echoes commands (``ATE1``,
the default of most modems, noticed the first time an echo comes back), a command's
answer starts only after its own echo: lines before it are the late answer of an earlier
command and are dropped, and so is everything from the late echo of a command that timed
out up to that command's final result code. Without echo, the next command is sent only once the port has
been quiet for ``AtConfig.resync_quiet_s`` (at most ``resync_max_s``), so a late answer
that comes within that window arrives while no command waits and is dropped as stray; a
later one can still be mistaken, which is why echo stays on by default.

Subscriber queues are bounded (``AtConfig.urc_queue_size``); when one is full the
**oldest** queued URC is dropped (a newer registration state supersedes an older one)
and the drop is counted in :attr:`UrcSubscription.dropped`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import termios
import tty
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from tcu.errors import ClosedResourceError, ModemError

__all__ = [
    "CME_ERRORS",
    "AtChannel",
    "AtCommandError",
    "AtConfig",
    "AtTimeoutError",
    "CmeError",
    "UrcSubscription",
]

log = logging.getLogger(__name__)

#: 3GPP TS 27.007 §9.2 +CME ERROR codes (the common subset).
CME_ERRORS: dict[int, str] = {
    0: "phone failure",
    1: "no connection to phone",
    3: "operation not allowed",
    4: "operation not supported",
    5: "PH-SIM PIN required",
    10: "SIM not inserted",
    11: "SIM PIN required",
    12: "SIM PUK required",
    13: "SIM failure",
    14: "SIM busy",
    15: "SIM wrong",
    16: "incorrect password",
    20: "memory full",
    21: "invalid index",
    22: "not found",
    23: "memory failure",
    30: "no network service",
    31: "network timeout",
    32: "network not allowed - emergency calls only",
    50: "incorrect parameters",
    100: "unknown",
}

URC_PREFIXES: tuple[str, ...] = ("+CEREG", "+CREG", "+CGREG", "+C5GREG", "+CGEV", "+CUSATP", "RING", "$")

_FINAL_OK = ("OK",)
_FINAL_ERROR = ("ERROR", "NO CARRIER", "NO DIALTONE", "BUSY", "NO ANSWER")


class AtCommandError(ModemError):
    """The modem answered ``ERROR`` (or another failing final result) to a command."""

    def __init__(self, command: str, result: str) -> None:
        super().__init__(f"{command}: modem answered {result}")
        self.command = command
        self.result = result


class CmeError(ModemError):
    """``+CME ERROR``/``+CMS ERROR``: ``code`` (None when only text was given) and ``name``."""

    def __init__(self, command: str, code: int | None, name: str) -> None:
        label = f"{code} ({name})" if code is not None else name
        super().__init__(f"{command}: +CME ERROR {label}")
        self.command = command
        self.code = code
        self.name = name


class AtTimeoutError(ModemError, TimeoutError):
    """No final result code arrived in time."""


@dataclass(frozen=True, slots=True)
class AtConfig:
    port: str
    command_timeout_s: float = 5.0
    urc_queue_size: int = 64
    baudrate: int = 115200
    resync_quiet_s: float = 0.3
    resync_max_s: float = 3.0


class UrcSubscription:
    """A bounded queue of URC lines; iterate with ``async for`` until closed."""

    def __init__(self, channel: AtChannel, prefixes: tuple[str, ...] | None, maxsize: int) -> None:
        self._channel = channel
        self.prefixes = prefixes
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize)
        self.dropped = 0

    def matches(self, line: str) -> bool:
        return self.prefixes is None or line.startswith(self.prefixes)

    def put(self, line: str | None) -> None:
        while True:
            try:
                self.queue.put_nowait(line)
                return
            except asyncio.QueueFull:
                self.queue.get_nowait()
                self.dropped += 1
                log.warning("URC queue full, dropped the oldest URC (%d so far)", self.dropped)

    async def get(self, timeout_s: float | None = None) -> str:
        """The next URC line; raises :class:`ClosedResourceError` after close."""
        async with asyncio.timeout(timeout_s):
            line = await self.queue.get()
        if line is None:
            raise ClosedResourceError("URC subscription closed")
        return line

    def close(self) -> None:
        self._channel.unsubscribe(self)
        self.put(None)

    def __aiter__(self) -> AsyncIterator[str]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[str]:
        while True:
            line = await self.queue.get()
            if line is None:
                return
            yield line


@dataclass(slots=True)
class _Pending:
    command: str
    prefix: str
    future: asyncio.Future[list[str]]
    lines: list[str] = field(default_factory=list)
    echoed: bool = False


def _command_prefix(command: str) -> str:
    body = command[2:] if command.upper().startswith("AT") else command
    for stop in ("=", "?"):
        body = body.split(stop, 1)[0]
    return body.strip().upper()


def _clean(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace")
    return "".join(ch for ch in text if ch.isprintable()).strip()


_SPEEDS = {9600: termios.B9600, 57600: termios.B57600, 115200: termios.B115200, 230400: termios.B230400}


class AtChannel:
    """An AT command channel. ``async with AtChannel(AtConfig(port=...)) as at: await at.command(...)``."""

    def __init__(self, config: AtConfig) -> None:
        self.config = config
        self._fd: int | None = None
        self._buffer = bytearray()
        self._pending: _Pending | None = None
        self._lock = asyncio.Lock()
        self._subscribers: list[UrcSubscription] = []
        self._closed = False
        self._broken: BaseException | None = None
        self._echoes = False  # the modem echoes commands (seen at least once since the last ATE0)
        self._timed_out = False  # the last command timed out: its answer may still come
        self._late: collections.deque[str] = collections.deque(maxlen=8)  # timed-out commands, upper case
        self._in_late = False  # between the late echo of a timed-out command and its final result
        self._late_prefix = ""  # its answer's prefix (a solicited +CEREG: is no URC)
        self._unechoed = 0  # commands in a row that timed out before their echo came
        self._last_answer_rx = 0.0  # loop time of the last line that was not a URC
        self.resyncs = 0  # quiet waits after a timeout
        self.late_lines = 0  # lines dropped because they came before the command's echo

    async def open(self) -> None:
        if self._closed:
            raise ClosedResourceError("AT channel was closed")
        if self._fd is not None:
            return
        try:
            fd = os.open(self.config.port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as exc:
            raise ModemError(f"{self.config.port}: cannot open AT port: {exc.strerror}") from exc
        try:
            tty.setraw(fd, termios.TCSANOW)
            speed = _SPEEDS.get(self.config.baudrate)
            if speed is not None:
                attrs = termios.tcgetattr(fd)
                attrs[4] = attrs[5] = speed
                termios.tcsetattr(fd, termios.TCSANOW, attrs)
        except termios.error as exc:
            os.close(fd)
            raise ModemError(f"{self.config.port}: not a terminal: {exc}") from exc
        self._fd = fd
        asyncio.get_running_loop().add_reader(fd, self._on_readable)
        log.debug("AT port %s open", self.config.port)

    async def aclose(self) -> None:
        """Close the port; idempotent. Subscribers' iterators end."""
        self._closed = True
        fd, self._fd = self._fd, None
        if fd is not None:
            asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)
        self._fail(ClosedResourceError("AT channel closed"))
        for sub in list(self._subscribers):
            sub.close()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # --- URCs ---------------------------------------------------------------------------

    def subscribe(self, prefixes: tuple[str, ...] | None = None) -> UrcSubscription:
        """Receive URC lines starting with one of ``prefixes`` (None: all URCs)."""
        sub = UrcSubscription(self, prefixes, self.config.urc_queue_size)
        self._subscribers.append(sub)
        return sub

    def unsubscribe(self, sub: UrcSubscription) -> None:
        with contextlib.suppress(ValueError):
            self._subscribers.remove(sub)

    # --- commands -----------------------------------------------------------------------

    async def command(self, command: str, *, timeout_s: float | None = None) -> list[str]:
        """Send ``command`` (``AT...``, no line end) and return its info lines on ``OK``."""
        if self._closed:
            raise ClosedResourceError("AT channel was closed")
        if self._fd is None:
            await self.open()
        timeout = self.config.command_timeout_s if timeout_s is None else timeout_s
        async with self._lock:
            if self._broken is not None:
                raise ModemError(f"{self.config.port}: AT port broke: {self._broken}") from self._broken
            if self._timed_out and not self._echoes:
                await self._wait_quiet()
            future: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
            pending = self._pending = _Pending(command, _command_prefix(command), future)
            try:
                await self._write(command.encode() + b"\r")
                async with asyncio.timeout(timeout):
                    lines = await future
            except TimeoutError as exc:
                raise AtTimeoutError(f"{command}: no answer within {timeout:g} s") from exc
            finally:
                self._pending = None
                # Timed out or cancelled: the answer may still come (see the module docstring).
                self._timed_out = future.cancelled() or not future.done()
                if not self._timed_out or pending.echoed:
                    self._unechoed = 0
                else:  # timed out before its echo came: the echo and the answer may still come
                    self._late.append(command.strip().upper())
                    self._unechoed += 1
                    if self._unechoed >= 2:  # no echo twice in a row: stop relying on echoes
                        self._echoes = False
                        self._late.clear()
            if command.strip().upper() in ("ATE0", "ATE"):
                self._echoes = False
            return lines

    async def _wait_quiet(self) -> None:
        """Before the next command after a timeout (no echo to sync on): let a late answer drain."""
        self.resyncs += 1
        loop = asyncio.get_running_loop()
        start = loop.time()
        give_up = start + self.config.resync_max_s
        while (now := loop.time()) < give_up:
            quiet_until = max(self._last_answer_rx, start) + self.config.resync_quiet_s
            if now >= quiet_until:
                return
            await asyncio.sleep(min(quiet_until, give_up) - now)
        log.warning(
            "AT port %s: not quiet within %g s after a timeout", self.config.port, self.config.resync_max_s
        )

    async def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._fd is None:
                raise ClosedResourceError("AT channel closed")
            try:
                written = os.write(self._fd, view)
            except BlockingIOError:
                await asyncio.sleep(0.005)
                continue
            except OSError as exc:
                raise ModemError(f"{self.config.port}: write failed: {exc.strerror}") from exc
            view = view[written:]

    # --- reading ------------------------------------------------------------------------

    def _fail(self, exc: BaseException) -> None:
        pending = self._pending
        if pending is not None and not pending.future.done():
            pending.future.set_exception(exc)

    def _on_readable(self) -> None:
        assert self._fd is not None
        try:
            chunk = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            chunk = b""
            self._broken = exc
        if not chunk:
            log.warning("AT port %s: end of stream", self.config.port)
            asyncio.get_running_loop().remove_reader(self._fd)
            self._broken = self._broken or EOFError("end of stream")
            self._fail(ModemError(f"{self.config.port}: AT port closed by the other side"))
            return
        self._buffer += chunk
        while True:
            cut = min((i for i in (self._buffer.find(b"\r"), self._buffer.find(b"\n")) if i >= 0), default=-1)
            if cut < 0:
                if len(self._buffer) > 65536:
                    log.debug("AT port: dropping %d bytes without line end", len(self._buffer))
                    self._buffer.clear()
                return
            raw = bytes(self._buffer[:cut])
            del self._buffer[: cut + 1]
            line = _clean(raw)
            if line:
                self._on_line(line)

    def _dispatch_urc(self, line: str) -> None:
        log.debug("URC %s", line)
        for sub in self._subscribers:
            if sub.matches(line):
                sub.put(line)

    def _on_line(self, line: str) -> None:
        is_urc = line.startswith(URC_PREFIXES)
        if not is_urc:
            self._last_answer_rx = asyncio.get_running_loop().time()
        upper = line.upper()
        if upper in self._late:  # the late echo of a command that timed out: its answer follows
            self._late.remove(upper)
            self._in_late = self._echoes = True
            self._late_prefix = _command_prefix(upper)
            self.late_lines += 1
            return
        pending = self._pending
        if pending is not None and not pending.future.done() and upper == pending.command.strip().upper():
            if not pending.echoed:  # what came before the echo was not this command's answer
                if pending.lines:
                    log.debug(
                        "dropped %d lines before the echo of %s: %r",
                        len(pending.lines),
                        pending.command,
                        pending.lines,
                    )
                pending.lines.clear()
            pending.echoed = self._echoes = True
            self._in_late = False  # the modem answers in order: anything late came before this echo
            return
        if self._in_late and (not is_urc or line.split(":", 1)[0].strip().upper() == self._late_prefix):
            self.late_lines += 1
            if line in _FINAL_OK or line in _FINAL_ERROR or line.startswith(("+CME ERROR", "+CMS ERROR")):
                self._in_late = False
            log.debug("late answer line dropped: %r", line)
            return
        if pending is None or pending.future.done():
            if line.startswith(URC_PREFIXES) or (line.startswith("+") and ":" in line):
                self._dispatch_urc(line)
            else:
                log.debug("stray line dropped: %r", line)
            return
        head = line.split(":", 1)[0].strip().upper()
        if line.startswith(URC_PREFIXES) and (
            head != pending.prefix or (self._echoes and not pending.echoed)
        ):
            self._dispatch_urc(line)
            return
        if self._echoes and not pending.echoed:
            self.late_lines += 1
            log.debug("late line before the echo of %s dropped: %r", pending.command, line)
            return
        if line in _FINAL_OK:
            pending.future.set_result(pending.lines)
        elif line in _FINAL_ERROR:
            pending.future.set_exception(AtCommandError(pending.command, line))
        elif head in ("+CME ERROR", "+CMS ERROR"):
            detail = line.partition(":")[2].strip()  # "+CME ERROR" may come without ":"
            if detail.isascii() and detail.isdigit() and len(detail) <= 9:  # int() refuses "²", 5000 digits
                code: int | None = int(detail)
                name = CME_ERRORS.get(int(detail), "unknown code")
            else:
                code = next((k for k, v in CME_ERRORS.items() if v.lower() == detail.lower()), None)
                name = detail
            pending.future.set_exception(CmeError(pending.command, code, name))
        else:
            pending.lines.append(line)
