"""A link that goes silent (a cellular blackhole: nothing closed, every byte dropped) does not
hold the agent on a dead stream: the stream is given up after ``[uplink] ack_timeout_s`` and the
batches are delivered on a new one once the link is back."""

from __future__ import annotations

import asyncio
import sys
import uuid
from dataclasses import replace
from pathlib import Path

import can
from agent_helpers import agent_config, wait_until

from tcu.agent import Agent
from tcu.ingest import IngestServer

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

from _chaos_proxy import LinkProxy, ProxyConfig


def _send(channel: str, n: int) -> None:
    sender = can.Bus(interface="virtual", channel=channel)
    try:
        for i in range(n):
            sender.send(
                can.Message(arbitration_id=256, is_extended_id=False, data=bytes([i % 256]) + bytes(7))
            )
    finally:
        sender.shutdown()


async def test_a_silent_stream_is_given_up_and_the_batches_delivered_when_the_link_is_back(
    ingest: IngestServer, small_dbc: Path, small_mapping: Path
) -> None:
    channel = f"wakeup-{uuid.uuid4().hex}"
    async with LinkProxy(ProxyConfig("127.0.0.1", ingest.bound_port)) as proxy:
        config = agent_config(channel, proxy.port, small_dbc, small_mapping)
        config = replace(
            config,
            uplink=replace(config.uplink, ack_timeout_s=1.0, connect_timeout_s=1.0, backoff_max_s=0.5),
            batch=replace(config.batch, max_age_ms=100),
        )
        agent = Agent(config)
        stop = asyncio.Event()
        run = asyncio.create_task(agent.run(stop))
        try:
            await wait_until(lambda: all(r.opened for r in agent.readers))
            _send(channel, 20)
            await wait_until(lambda: agent.uplink.stats.batches_acked >= 1)
            proxy.set_down(True, blackhole=True)  # the stream stays open; nothing gets through
            for _ in range(5):
                _send(channel, 20)
                await asyncio.sleep(0.25)
            await wait_until(lambda: "the link is silent" in agent.uplink.stats.last_error, timeout_s=10)
            assert agent.uplink.stats.silent_streams >= 1 and agent.outbox.unacked() > 0
            proxy.set_down(False)
            await wait_until(
                lambda: agent.outbox.unacked() == 0 and agent.stats().frames >= 120, timeout_s=20
            )
            assert agent.uplink.stats.connects >= 2
        finally:
            stop.set()
            await asyncio.wait_for(run, 30)
