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

Subscriber queues are bounded (``AtConfig.urc_queue_size``); when one is full the
**oldest** queued URC is dropped (a newer registration state supersedes an older one)
and the drop is counted in :attr:`UrcSubscription.dropped`.
"""

from __future__ import annotations

import asyncio
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
            future: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
            self._pending = _Pending(command, _command_prefix(command), future)
            try:
                await self._write(command.encode() + b"\r")
                async with asyncio.timeout(timeout):
                    return await future
            except TimeoutError as exc:
                raise AtTimeoutError(f"{command}: no answer within {timeout:g} s") from exc
            finally:
                self._pending = None

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
        pending = self._pending
        if pending is None or pending.future.done():
            if line.startswith(URC_PREFIXES) or (line.startswith("+") and ":" in line):
                self._dispatch_urc(line)
            else:
                log.debug("stray line dropped: %r", line)
            return
        if line == pending.command:
            return  # echo
        head = line.split(":", 1)[0].strip().upper()
        if line.startswith(URC_PREFIXES) and head != pending.prefix:
            self._dispatch_urc(line)
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
