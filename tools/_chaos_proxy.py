"""A loopback TCP proxy whose link the chaos run can cut and take down.

``LinkProxy`` listens on 127.0.0.1 and forwards every accepted connection to
one upstream address (the ingest). :meth:`LinkProxy.cut` closes every proxied
connection at once (a stream cut-off: both sides see the TCP connection end);
:meth:`LinkProxy.set_down` closes them too and, while the link is down, closes
every new connection as soon as it is accepted, before a byte is forwarded (the
client sees its connection attempt fail). ``set_down(True, blackhole=True)`` is a
cellular link that goes silent instead: nothing is closed, every byte in either
direction is dropped, new connections are accepted and get nothing, and the
connections of that time stay dead after the link is back (a NAT that forgot
them); only connections made after it came back are forwarded. Only loopback
addresses are accepted.

:class:`ClockTap` is the same proxy between the simulator and the agent's
socketcand bus, reading the source time of the newest CAN frame it forwards:
the simulator's clock as the agent sees it on the wire, exact to the frame
whatever the simulator's lag behind its nominal speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

from tcu.errors import ConfigError

__all__ = ["ClockTap", "LinkProxy", "ProxyConfig"]

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    upstream_host: str
    upstream_port: int
    listen_host: str = "127.0.0.1"
    listen_port: int = 0

    def __post_init__(self) -> None:
        for key, host in (("upstream_host", self.upstream_host), ("listen_host", self.listen_host)):
            try:
                loopback = ipaddress.ip_address(host).is_loopback
            except ValueError:
                loopback = False
            if not loopback:
                raise ConfigError(f"must be a loopback IP address, got {host!r}", key=key)


class LinkProxy:
    """``async with LinkProxy(config) as proxy``: forwards until closed; ``port`` is the bound port."""

    def __init__(self, config: ProxyConfig, observe: Callable[[bytes], None] | None = None) -> None:
        self.config = config
        self._observe = observe  # sees every chunk forwarded from upstream to the client
        self.port = 0
        self.down = False
        self.blackhole = False
        self._dead: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter] | asyncio.StreamWriter] = set()
        self.accepted = 0
        self.refused = 0
        self.cut_connections = 0
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> LinkProxy:
        self._server = await asyncio.start_server(
            self._on_client, self.config.listen_host, self.config.listen_port
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            self._close_all()
            for dead in list(self._dead):
                for w in dead if isinstance(dead, tuple) else (dead,):
                    with contextlib.suppress(OSError, RuntimeError):
                        w.transport.abort()
            self._dead.clear()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    def cut(self) -> int:
        """Close every proxied connection; returns how many were open."""
        n = self._close_all()
        self.cut_connections += n
        log.info("proxy: cut %d connections", n)
        return n

    def set_down(self, down: bool, *, blackhole: bool = False) -> None:
        """Take the link down (close everything, refuse new connections) or bring it back up.

        ``blackhole``: drop every byte instead of closing (see the module docstring).
        """
        self.down = down
        self.blackhole = down and blackhole
        if down and blackhole:
            self._dead.update(self._pairs)
        elif down:
            self.cut_connections += self._close_all()
        log.info("proxy: link %s", ("down (blackhole)" if blackhole else "down") if down else "up")

    @property
    def open_connections(self) -> int:
        return len(self._pairs)

    def _close_all(self) -> int:
        pairs = list(self._pairs)
        for client, upstream in pairs:
            for w in (client, upstream):
                with contextlib.suppress(OSError, RuntimeError):
                    w.transport.abort()
        self._pairs.clear()
        return len(pairs)

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down and self.blackhole:  # accepted, then silence: read and drop, forever
            self._dead.add(writer)
            try:
                while await reader.read(_CHUNK):
                    pass
            except (OSError, RuntimeError):
                pass
            finally:
                self._dead.discard(writer)
            return
        if self.down:
            self.refused += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(
                self.config.upstream_host, self.config.upstream_port
            )
        except OSError as exc:
            log.debug("proxy: upstream %s:%d: %s", self.config.upstream_host, self.config.upstream_port, exc)
            writer.transport.abort()
            return
        if self.down:  # the link went down while we connected upstream
            self.refused += 1
            for w in (writer, up_writer):
                w.transport.abort()
            return
        self.accepted += 1
        pair = (writer, up_writer)
        self._pairs.add(pair)
        for src, dst, observe in ((reader, up_writer, None), (up_reader, writer, self._observe)):
            task = asyncio.create_task(self._pump(src, dst, pair, observe), name="chaos.proxy.pump")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(
        self,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
        observe: Callable[[bytes], None] | None = None,
    ) -> None:
        try:
            while data := await src.read(_CHUNK):
                if self.blackhole or pair in self._dead:
                    continue  # the link is silent, or this connection died with it
                dst.write(data)
                if observe is not None:
                    observe(data)
                await dst.drain()
        except (OSError, RuntimeError):
            pass
        finally:
            # one side ended: end both, like a TCP connection through a NAT that forgets it
            self._dead.discard(pair)
            if pair in self._pairs:
                self._pairs.discard(pair)
                for w in pair:
                    with contextlib.suppress(OSError, RuntimeError):
                        w.transport.abort()


_FRAME_TIME = re.compile(rb"< frame [0-9A-Fa-f]+ (\d+)\.(\d{1,6}) ")


class ClockTap(LinkProxy):
    """A proxy in front of a socketcand server; ``sim_us``: the newest frame time forwarded (0: none)."""

    def __init__(self, config: ProxyConfig) -> None:
        super().__init__(config, observe=self._see)
        self.sim_us = 0

    def _see(self, data: bytes) -> None:
        tail = max(0, len(data) - 512)  # the newest frame is near the end of the chunk
        matches = list(_FRAME_TIME.finditer(data, tail)) or list(_FRAME_TIME.finditer(data, 0, tail + 64))
        if matches:
            last = matches[-1]
            us = int(last.group(1)) * 1_000_000 + int(last.group(2).ljust(6, b"0"))
            self.sim_us = max(self.sim_us, us)
