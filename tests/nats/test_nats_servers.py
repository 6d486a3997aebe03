"""The nats-server fixtures give a working JetStream: one node, and a 3-node cluster that keeps
a replicated stream through the loss of one node."""

from __future__ import annotations

import asyncio

import nats
from nats.errors import Error as NatsClientError
from nats.js import JetStreamContext
from nats.js.api import StreamConfig

from tcu.demo.nats import NatsCluster, NatsNode


async def test_single_node_publishes_with_dedup(nats_server: NatsNode) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="T", subjects=["t.>"], num_replicas=1))
        first = await js.publish("t.a", b"1", headers={"Nats-Msg-Id": "k1"})
        again = await js.publish("t.a", b"1", headers={"Nats-Msg-Id": "k1"})
        assert again.duplicate and not first.duplicate
        info = await js.stream_info("T")
        assert info.state.messages == 1
    finally:
        await nc.close()


async def publish_until_acked(js: JetStreamContext, subject: str, data: bytes, msg_id: str) -> None:
    """Publish, retrying with the same Nats-Msg-Id while the cluster fails over (dedup makes it once)."""
    for _ in range(100):
        try:
            await js.publish(subject, data, headers={"Nats-Msg-Id": msg_id}, timeout=2)
            return
        except (NatsClientError, TimeoutError):
            await asyncio.sleep(0.1)
    raise AssertionError(f"{msg_id} was never acked")


async def test_cluster_keeps_a_replicated_stream_when_one_node_dies(nats_cluster: NatsCluster) -> None:
    nc = await nats.connect(servers=nats_cluster.urls)
    try:
        js = nc.jetstream(timeout=10)
        await js.add_stream(StreamConfig(name="R", subjects=["r.>"], num_replicas=3))
        for i in range(10):
            await js.publish("r.x", str(i).encode(), headers={"Nats-Msg-Id": f"m{i}"})
        nats_cluster.nodes[0].kill()
        for i in range(9, 20):  # m9 again: a resend after failover is stored once
            await publish_until_acked(js, "r.x", str(i).encode(), f"m{i}")
        assert (await js.stream_info("R")).state.messages == 20
        nats_cluster.nodes[0].start()
    finally:
        await nc.close()
