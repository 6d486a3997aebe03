"""A CAN bus that is missing at start, comes late, or dies while read does not stop the agent.

The agent retries opening each bus with a capped backoff, reopens one that fails while
it is read, logs each change of state, and keeps delivering the other buses meanwhile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import uuid
from pathlib import Path

import can
import pytest
from agent_helpers import START_NS, agent_config, wait_until

from sim.socketcand import SocketcandConfig, SocketcandServer
from tcu.agent import Agent
from tcu.config import BusConfig
from tcu.ingest import IngestServer
from tcu.signals.dbc import load_dbc

OTHER_DBC = """VERSION ""

NS_ :

BS_:

BU_: ECU TCU

BO_ 768 Other: 8 ECU
 SG_ Level : 0|8@1+ (1,0) [0|255] "" TCU
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _other_frames(start: int, n: int) -> list[can.Message]:
    return [
        can.Message(
            timestamp=(START_NS + i * 10_000_000) / 1e9,
            arbitration_id=768,
            is_extended_id=False,
            data=bytes(8),
        )
        for i in range(start, start + n)
    ]


def _dyn_frames(db: object, start: int, n: int) -> list[can.Message]:
    msg = db.get_message_by_name("Dyn")  # type: ignore[attr-defined]
    data = msg.encode({"Speed": 50.0, "Accel": 0.5, "Gear": 3})
    return [
        can.Message(
            timestamp=(START_NS + i * 10_000_000) / 1e9,
            arbitration_id=msg.frame_id,
            is_extended_id=False,
            data=data,
        )
        for i in range(start, start + n)
    ]


def _server(port: int) -> SocketcandServer:
    server = SocketcandServer(SocketcandConfig(port=port, channel="can1", settle_s=0.05, reconnect=True))
    server.start()
    return server


async def test_late_dying_and_missing_buses_are_retried_while_the_other_bus_delivers(
    ingest: IngestServer,
    tmp_path: Path,
    small_dbc: Path,
    small_mapping: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    other_dbc = tmp_path / "other.dbc"
    other_dbc.write_text(OTHER_DBC)
    channel = f"tcu-test-{uuid.uuid4().hex}"
    port = _free_port()  # no socketcand server listens here yet
    base = agent_config(channel, ingest.bound_port, small_dbc, small_mapping)
    retry = {"retry_initial_s": 0.05, "retry_max_s": 0.2}
    config = dataclasses.replace(
        base,
        buses=(
            dataclasses.replace(base.buses[0], **retry),  # type: ignore[arg-type]
            BusConfig(
                name="can1",
                interface="socketcand",
                channel="can1",
                dbc=(other_dbc,),
                options={"host": "127.0.0.1", "port": port},
                **retry,  # type: ignore[arg-type]
            ),
            BusConfig(
                name="can2",
                interface="socketcan",
                channel="tcunope0",
                dbc=(other_dbc,),
                **retry,  # type: ignore[arg-type]
            ),
        ),
    )
    agent = Agent(config)
    live, late, missing = agent.readers
    stop = asyncio.Event()
    caplog.set_level(logging.INFO, logger="tcu.can.bus")
    task = asyncio.create_task(agent.run(stop))
    db = load_dbc(small_dbc)
    sender = can.Bus(interface="virtual", channel=channel, preserve_timestamps=True)
    servers: list[SocketcandServer] = []
    try:
        await wait_until(
            lambda: live.opened and late.stats.open_failures >= 2 and missing.stats.open_failures >= 2
        )
        assert not task.done()
        for m in _dyn_frames(db, 0, 100):
            sender.send(m)
        await wait_until(lambda: live.stats.frames >= 100 and agent.uplink.stats.batches_acked >= 1)

        # The socketcand server comes up late: the bus opens and its frames arrive.
        servers.append(_server(port))
        await wait_until(lambda: late.opened)
        assert await asyncio.to_thread(servers[0].wait_for_client, 10.0)
        await asyncio.to_thread(servers[0].send_frames, _other_frames(0, 50))
        await wait_until(lambda: late.stats.frames >= 50)

        # It dies: the reader notices, retries, and reopens when a server is back on the port.
        failures = late.stats.open_failures
        await asyncio.to_thread(servers[0].close)
        await wait_until(lambda: late.stats.open_failures > failures)
        for m in _dyn_frames(db, 100, 100):  # meanwhile the other bus goes on
            sender.send(m)
        await wait_until(lambda: live.stats.frames >= 200)
        servers.append(_server(port))
        await wait_until(lambda: late.stats.reopened >= 1)
        assert await asyncio.to_thread(servers[1].wait_for_client, 10.0)
        await asyncio.to_thread(servers[1].send_frames, _other_frames(50, 50))
        await wait_until(lambda: late.stats.frames >= 100)
        assert not missing.opened and not task.done()
        stats = agent.stats()
        assert stats.buses_down == 1 and stats.bus_open_failures >= missing.stats.open_failures
    finally:
        sender.shutdown()
        stop.set()
        final = await asyncio.wait_for(task, 30)
        for server in servers:
            server.close()
    assert final.frames >= 300
    assert final.batches_unacked == 0
    messages = [r.getMessage() for r in caplog.records if r.name == "tcu.can.bus"]
    # One line per change of state, not one per attempt.
    assert sum("bus can2: down:" in m for m in messages) == 1, messages
    assert any("bus can1: opened" in m and "after" in m for m in messages), messages
    assert any("bus can1: receive failed" in m for m in messages), messages
