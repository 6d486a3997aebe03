"""The V2N client against a real Mosquitto with mTLS and the tile ACL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import asn1tools
from v2x_broker import BACKEND_STATION, V2xBroker

from tcu.pki.mosquitto import mqtt_tls_context
from tcu.v2x import messages
from tcu.v2x.client import Received, V2xClient
from tcu.v2x.geo import destination
from tcu.v2x.messages import ActionId, Cam, Denm, StationPosition, encode_denm, its_time_ms
from tcu.v2x.tiles import quadkey, topic_for

A, B, C = "WDD2050461A000101", "WDD2050461A000102", "WDD2050461A000103"
HERE = StationPosition(49.1500, 6.1700)  # the A31 north of Metz
FAR = StationPosition(*destination(49.15, 6.17, 0.0, 30_000.0))
WAIT_S = 10.0


def _now_ms() -> int:
    return its_time_ms(time.time_ns())


def _denm(
    station: int, seq: int, where: StationPosition = HERE, *, validity_s: int = 20, age_ms: int = 0
) -> Denm:
    now = _now_ms() - age_ms
    return Denm(
        station_id=station,
        action_id=ActionId(station, seq),
        detection_time_ms=now,
        reference_time_ms=now,
        event_position=where,
        relevance_distance_m=500.0,
        relevance_traffic_direction="upstreamTraffic",
        validity_s=validity_s,
        cause_code=99,
        sub_cause_code=1,
        event_heading_deg=355.0,
    )


def _cam(station: int, where: StationPosition = HERE) -> Cam:
    return Cam(
        station_id=station,
        station_type=5,
        generation_delta_time_ms=_now_ms() % 65536,
        position=where,
        heading_deg=355.0,
        speed_mps=25.0,
        vehicle_role="default",
    )


@contextlib.asynccontextmanager
async def running(*clients: V2xClient) -> AsyncIterator[None]:
    async with asyncio.TaskGroup() as tg:
        for i, client in enumerate(clients):
            client.start(tg, name=f"test.v2x[{i}]")
        try:
            for client in clients:
                await client.wait_connected(WAIT_S)
            yield
        finally:
            for client in clients:
                client.stop()


async def _until(predicate: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(WAIT_S):
        while not predicate():  # noqa: ASYNC110 - polls counters the clients update
            await asyncio.sleep(0.01)


def _shared_r1() -> Any:
    shared = Path(os.environ["TCU_SHARED_DATA"]) / "v2x"
    return asn1tools.compile_files([str(shared / f) for f in messages.ASN1_FILES[1]], "uper")


def _raw(broker: V2xBroker, vin: str) -> aiomqtt.Client:
    cert, key = broker.pki.vehicle(vin)
    return aiomqtt.Client(
        "127.0.0.1",
        broker.port,
        tls_context=mqtt_tls_context(broker.pki.ca_cert, cert, key),
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=WAIT_S,
    )


async def test_cam_and_denm_on_the_documented_topics_decode_with_the_etsi_modules(
    v2x_broker: V2xBroker,
) -> None:
    station = v2x_broker.vehicles[A]
    sender = V2xClient(v2x_broker.client_config(A))
    cam, denm = _cam(station), _denm(station, 1)
    got: list[aiomqtt.Message] = []
    async with _raw(v2x_broker, B) as listener:
        await listener.subscribe("v2x/#", qos=1)
        async with running(sender):
            sender.publish_cam(cam)
            sender.publish_denm(denm)
            async with asyncio.timeout(WAIT_S):
                async for message in listener.messages:
                    got.append(message)
                    if len(got) == 2:
                        break
    key = quadkey(HERE.latitude_deg, HERE.longitude_deg, 18)
    assert [str(m.topic) for m in got] == [
        topic_for("v2x", "cam", station, key),
        topic_for("v2x", "denm", station, key),
    ]
    assert str(got[1].topic) == f"v2x/denm/{station}/" + "/".join(key)
    spec = _shared_r1()  # compiled here from the untouched ETSI files
    raw_cam = spec.decode("CAM", got[0].payload)
    assert raw_cam["header"]["stationID"] == station
    assert raw_cam["cam"]["camParameters"]["basicContainer"]["referencePosition"]["latitude"] == 491500000
    raw_denm = spec.decode("DENM", got[1].payload)
    assert raw_denm["denm"]["management"]["actionID"] == {
        "originatingStationID": station,
        "sequenceNumber": 1,
    }
    assert raw_denm["denm"]["situation"]["eventType"] == {"causeCode": 99, "subCauseCode": 1}
    # MQTT v5 message expiry: the DENM's remaining validity (20 s), a CAM's 1 s.
    assert got[0].properties is not None and got[0].properties.MessageExpiryInterval == 1
    assert got[1].properties is not None and 18 <= got[1].properties.MessageExpiryInterval <= 20
    assert sender.counters["denm_published"] == 1 and sender.counters["cam_published"] == 1


async def test_tile_subscriptions_follow_the_vehicle(v2x_broker: V2xBroker) -> None:
    received: list[Received] = []
    listener = V2xClient(v2x_broker.client_config(B, subscribe_level=14), on_message=received.append)
    sender = V2xClient(v2x_broker.client_config(A))
    station = v2x_broker.vehicles[A]
    listener.set_position(HERE.latitude_deg, HERE.longitude_deg)
    async with running(listener, sender):
        await _until(lambda: listener.counters["subscribed"] == 9, "subscriptions")
        sender.publish_denm(_denm(station, 10))
        await _until(lambda: len(received) >= 1, "first DENM")
        assert isinstance(received[0].message, Denm) and received[0].message.action_id == ActionId(
            station, 10
        )
        # The vehicle drives 30 km north: the 3x3 block moves, the old tiles are unsubscribed.
        assert listener.set_position(FAR.latitude_deg, FAR.longitude_deg)
        await _until(
            lambda: listener.counters["subscribed"] == 18 and listener.counters["unsubscribed"] == 9,
            "new subscriptions, then unsubscriptions",
        )
        sender.publish_denm(_denm(station, 11))  # back at HERE: no longer heard
        sender.publish_denm(_denm(station, 12, FAR))  # same publisher, so it arrives after 11
        await _until(lambda: len(received) >= 2, "DENM in the new tile")
    assert [r.message.action_id.sequence_number for r in received if isinstance(r.message, Denm)] == [10, 12]
    assert listener.tiles.moves == 1


async def test_a_vehicle_cannot_publish_under_another_station(v2x_broker: V2xBroker) -> None:
    received: list[Received] = []
    listener = V2xClient(v2x_broker.client_config(C, fixed_filters=("v2x/#",)), on_message=received.append)
    forger = V2xClient(v2x_broker.client_config(A))
    b_station, a_station = v2x_broker.vehicles[B], v2x_broker.vehicles[A]
    async with running(listener, forger):
        await _until(lambda: listener.counters["subscribed"] == 1, "subscription")
        forger.publish_denm(_denm(b_station, 20))  # A's certificate, B's station: the ACL refuses it
        forger.publish_denm(_denm(BACKEND_STATION, 21))  # nor a road-operator warning
        forger.publish_denm(_denm(a_station, 22))  # its own: delivered, after the two above
        await _until(lambda: len(received) >= 1, "own DENM")
    assert [r.message.station_id for r in received] == [a_station]
    log = v2x_broker.log()
    assert f"Denied PUBLISH from {A}" in log and f"v2x/denm/{b_station}/" in log


async def test_bad_input_is_counted_and_the_client_carries_on(v2x_broker: V2xBroker) -> None:
    received: list[Received] = []
    listener = V2xClient(v2x_broker.client_config(C, fixed_filters=("v2x/#",)), on_message=received.append)
    cert, key = v2x_broker.pki.backend("road-operator")
    base = f"v2x/denm/{BACKEND_STATION}"
    good = _denm(BACKEND_STATION, 30)
    async with running(listener):
        await _until(lambda: listener.counters["subscribed"] == 1, "subscription")
        async with aiomqtt.Client(
            "127.0.0.1", v2x_broker.port, tls_context=mqtt_tls_context(v2x_broker.pki.ca_cert, cert, key)
        ) as backend:
            await backend.publish(
                f"{base}/1/2/0", b"\x01\x01\x00\x00\x00\x2a\xff\xff", qos=1
            )  # malformed UPER
            await backend.publish(f"{base}/1/x/0", encode_denm(good), qos=1)  # wrong topic shape
            await backend.publish(f"{base}/1/2/0", b"\x01\x01" + b"\x00" * 5000, qos=1)  # oversize
            await backend.publish(f"{base}/1/2/0", b"\x01\x09" + b"\x00" * 40, qos=1)  # unknown type
            await backend.publish(f"{base}/1/2/0", encode_denm(_denm(101, 31)), qos=1)  # station mismatch
            await backend.publish(f"{base}/1/2/0", encode_denm(good), qos=1)
            await _until(lambda: len(received) >= 1, "the good DENM")
    bad = {k: v for k, v in listener.counters.items() if k.startswith("rx_bad_")}
    assert bad == {
        "rx_bad_malformed": 1,
        "rx_bad_topic": 1,
        "rx_bad_oversize": 1,
        "rx_bad_unknown_type": 1,
        "rx_bad_station_mismatch": 1,
    }


async def test_expired_denm_is_never_sent_late(v2x_broker: V2xBroker) -> None:
    received: list[Received] = []
    listener = V2xClient(
        v2x_broker.client_config(C, fixed_filters=("v2x/denm/#",)), on_message=received.append
    )
    sender = V2xClient(v2x_broker.client_config(A))
    station = v2x_broker.vehicles[A]
    async with running(listener, sender):
        await _until(lambda: listener.counters["subscribed"] == 1, "subscription")
        sender.publish_denm(_denm(station, 40, validity_s=1, age_ms=1500))  # its validity ended already
        sender.publish_denm(_denm(station, 41))
        await _until(lambda: len(received) >= 1, "the valid DENM")
    assert sender.counters["denm_expired_unsent"] == 1
    assert [r.message.action_id.sequence_number for r in received if isinstance(r.message, Denm)] == [41]


async def test_queue_policy_drops_cams_before_denms_and_counts(v2x_broker: V2xBroker) -> None:
    client = V2xClient(v2x_broker.client_config(A, queue_size=3))  # never started: the queue just fills
    station = v2x_broker.vehicles[A]
    client.publish_cam(_cam(station))
    client.publish_cam(_cam(station))  # replaces the waiting CAM
    client.publish_denm(_denm(station, 50))
    client.publish_denm(_denm(station, 51))
    client.publish_denm(_denm(station, 52))  # full: the CAM goes
    client.publish_denm(_denm(station, 53))  # full of DENMs: the oldest DENM goes, counted and logged
    assert client.queued == 3
    assert (
        client.counters["cam_superseded"],
        client.counters["cam_dropped"],
        client.counters["denm_dropped"],
    ) == (
        1,
        1,
        1,
    )


async def test_broker_restart_reconnects_and_the_persistent_session_keeps_qos1(v2x_broker: V2xBroker) -> None:
    received: list[Received] = []
    station = v2x_broker.vehicles[A]
    sender = V2xClient(v2x_broker.client_config(A, client_id="restart-A"))
    # The listener comes back 2-4 s after losing the broker (jittered backoff), the sender within 0.5 s.
    listener = V2xClient(
        v2x_broker.client_config(B, client_id="restart-B", reconnect_min_s=4.0, reconnect_max_s=4.0),
        on_message=received.append,
    )
    listener.set_position(HERE.latitude_deg, HERE.longitude_deg)
    async with running(listener, sender):
        await _until(lambda: listener.counters["subscribed"] == 9, "subscriptions")
        sender.publish_denm(_denm(station, 60))
        await _until(lambda: len(received) >= 1, "DENM before the restart")
        await asyncio.to_thread(v2x_broker.stop)  # graceful: the broker saves sessions
        await _until(lambda: not sender.connected.is_set() and not listener.connected.is_set(), "disconnects")
        sender.publish_denm(_denm(station, 61))  # waits in the client's queue during the outage
        sender.publish_denm(_denm(station, 62, validity_s=1, age_ms=500))  # expires during the outage
        await asyncio.sleep(0.6)
        await asyncio.to_thread(v2x_broker.start)
        await _until(lambda: sender.counters["denm_published"] == 2, "publish after the reconnect")
        listener_was_offline = not listener.connected.is_set()
        await _until(lambda: len(received) >= 2, "the DENM queued in the session")
    assert listener_was_offline  # so 61 reached it only through its persistent session
    assert sender.counters["connects"] == 2 and listener.counters["connects"] == 2
    assert sender.counters["denm_expired_unsent"] == 1
    assert [r.message.action_id.sequence_number for r in received if isinstance(r.message, Denm)] == [60, 61]


async def test_pipelined_publishes_arrive_complete_and_in_order(v2x_broker: V2xBroker) -> None:
    received: list[Received] = []
    listener = V2xClient(
        v2x_broker.client_config(C, fixed_filters=("v2x/denm/#",)), on_message=received.append
    )
    sender = V2xClient(v2x_broker.client_config(A, max_inflight=4))
    station = v2x_broker.vehicles[A]
    async with running(listener, sender):
        await _until(lambda: listener.counters["subscribed"] == 1, "subscription")
        for seq in range(100, 160):
            sender.publish_denm(_denm(station, seq))
        await _until(lambda: len(received) >= 60, "all DENMs")
    assert [r.message.action_id.sequence_number for r in received if isinstance(r.message, Denm)] == list(
        range(100, 160)
    )
    assert sender.counters["denm_published"] == 60 and sender.counters["publish_retried"] == 0


async def test_running_context_drains_the_queue_on_exit(v2x_broker: V2xBroker) -> None:
    received: list[Received] = []
    listener = V2xClient(
        v2x_broker.client_config(C, fixed_filters=("v2x/denm/#",)), on_message=received.append
    )
    sender = V2xClient(v2x_broker.client_config(A))
    station = v2x_broker.vehicles[A]
    async with asyncio.TaskGroup() as tg, listener.running(tg, name="test.listener"):
        await listener.wait_connected(WAIT_S)
        await _until(lambda: listener.counters["subscribed"] == 1, "subscription")
        async with sender.running(tg, name="test.sender"):
            await sender.wait_connected(WAIT_S)
            for seq in range(200, 205):
                sender.publish_denm(_denm(station, seq))
        # leaving the block sent what was queued
        assert sender.counters["denm_published"] == 5 and sender.queued == 0
        await _until(lambda: len(received) >= 5, "the DENMs")
