"""The fleet demo's handover: new connections alternate between the replicas, and it cuts the
open ones every ``move_s`` (real TCP on loopback, two echo servers standing in for replicas)."""

from __future__ import annotations

import asyncio

from tcu.demo.fleet import Handover


async def _echo_server(name: bytes) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(100):
            writer.write(name + data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_connections_alternate_and_are_cut() -> None:
    a, port_a = await _echo_server(b"A:")
    b, port_b = await _echo_server(b"B:")
    handover = Handover([port_a, port_b], move_s=0.5)
    port = await handover.start()
    try:
        answers = []
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"hi")
            answers.append(await asyncio.wait_for(reader.read(100), 5))
            writer.close()
        assert answers == [b"A:hi", b"B:hi", b"A:hi"]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(100), 5) == b""  # cut within move_s: end of file
        writer.close()
        assert handover.connections == [2, 2] and handover.moves == 3 and handover.cuts >= 1
    finally:
        await handover.aclose()
        a.close()
        b.close()
