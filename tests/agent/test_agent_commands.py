"""Signed commands end to end over mTLS: a backend pushes campaigns through Fleet.SendCommand; the
agent executes a valid one without restart and rejects forged, expired, replayed and mistargeted ones."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from pathlib import Path

import can
import grpc
from agent_helpers import START_NS, agent_config, wait_until
from cryptography.hazmat.primitives.asymmetric import ed25519

from tcu.agent import Agent
from tcu.api.v1 import fleet_pb2 as fleet_pb
from tcu.api.v1 import fleet_pb2_grpc as fleet_grpc
from tcu.config import CampaignSettings, CommandSettings, TlsConfig
from tcu.ingest import IngestServer
from tcu.pki import DevPki, channel_credentials, load_signing_key, sign_command
from tcu.signals.dbc import load_dbc

VIN = "WTCUCMD0000000001"
CAMPAIGNS = b"""
[[campaign]]
name = "hard_braking"
version = 7
priority = 30
signals = ["Vehicle.Speed", "Vehicle.Acceleration.Longitudinal"]
[campaign.condition]
expression = "Vehicle.Acceleration.Longitudinal < -6"
pre_trigger_ms = 200
post_trigger_ms = 100
"""


def _frames(db: object, start_i: int, n: int, brake_at: int | None) -> list[can.Message]:
    msg = db.get_message_by_name("Dyn")  # type: ignore[attr-defined]
    out = []
    for i in range(start_i, start_i + n):
        accel = -7.0 if brake_at is not None and brake_at <= i < brake_at + 20 else 0.5
        data = msg.encode({"Speed": 50.0, "Accel": accel, "Gear": 3})
        out.append(
            can.Message(
                timestamp=(START_NS + i * 10_000_000) / 1e9,
                arbitration_id=msg.frame_id,
                is_extended_id=False,
                data=data,
            )
        )
    return out


async def _send(
    pki: DevPki, port: int, blob: bytes, command_id: str, *, kind: str = "campaigns.replace"
) -> fleet_pb.SendCommandResponse:
    cert, key = pki.backend("oem")
    async with grpc.aio.secure_channel(
        f"127.0.0.1:{port}", channel_credentials(pki.ca_cert, cert, key)
    ) as ch:
        request = fleet_pb.SendCommandRequest(
            vehicle_id=VIN, command_id=command_id, kind=kind, signed_command=blob, timeout_ms=10_000
        )
        return await fleet_grpc.FleetStub(ch).SendCommand(request, timeout=20)


async def test_pushed_campaign_takes_effect_and_bad_commands_are_rejected_with_a_reason(
    pki: DevPki, server: IngestServer, tmp_path: Path, small_dbc: Path, small_mapping: Path
) -> None:
    channel = f"tcu-test-{uuid.uuid4().hex}"
    cert, key = pki.vehicle(VIN)
    base = agent_config(channel, server.bound_port, small_dbc, small_mapping)
    config = dataclasses.replace(
        base,
        vehicle_id=VIN,
        uplink=dataclasses.replace(
            base.uplink, insecure=False, tls=TlsConfig(ca_cert=pki.ca_cert, cert=cert, key=key)
        ),
        campaigns=CampaignSettings(),
        commands=CommandSettings(verify_key=pki.command_verify_key, nonce_store=tmp_path / "nonces"),
    )
    agent = Agent(config)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    db = load_dbc(small_dbc)
    await wait_until(lambda: all(r.opened for r in agent.readers) and agent.uplink.stats.connected)
    sender = can.Bus(interface="virtual", channel=channel, preserve_timestamps=True)
    key_ = load_signing_key(pki.command_signing_key)
    try:
        # A braking before the push is not captured: no condition campaign runs yet.
        for m in _frames(db, 0, 100, brake_at=50):
            sender.send(m)
        await wait_until(lambda: agent.stats().frames >= 100)
        assert agent.stats().events_captured == 0

        blob = sign_command(
            key_, command_id="push-1", kind="campaigns.replace", target=VIN, payload=CAMPAIGNS
        )
        reply = await _send(pki, server.bound_port, blob, "push-1")
        assert fleet_pb.CommandStatus.Name(reply.status) == "COMMAND_STATUS_EXECUTED", reply.reason

        # Without a restart, the next braking is captured.
        for m in _frames(db, 100, 100, brake_at=150):
            sender.send(m)
        await wait_until(lambda: agent.stats().frames >= 200 and agent.stats().events_captured == 1)

        # The check-in reached the ingest.
        async with grpc.aio.secure_channel(
            f"127.0.0.1:{server.bound_port}", channel_credentials(pki.ca_cert, *pki.backend("oem"))
        ) as ch:
            info = (await fleet_grpc.FleetStub(ch).ListVehicles(fleet_pb.ListVehiclesRequest())).vehicles
        assert [(c.name, c.version) for c in info[0].campaigns] == [("hard_braking", 7)]

        forger = ed25519.Ed25519PrivateKey.generate()
        cases = {
            "bad_signature": sign_command(forger, command_id="forged", kind="campaigns.replace", target=VIN),
            "expired": sign_command(
                key_,
                command_id="old",
                kind="campaigns.replace",
                target=VIN,
                ttl_s=60,
                issued_ns=time.time_ns() - 3_600 * 10**9,
            ),
            "wrong_target": sign_command(
                key_, command_id="other", kind="campaigns.replace", target="WOTHER00000000001"
            ),
            "replayed": blob,
        }
        ids = {"bad_signature": "forged", "expired": "old", "wrong_target": "other", "replayed": "push-1"}
        for reason, signed in cases.items():
            reply = await _send(pki, server.bound_port, signed, ids[reason])
            assert fleet_pb.CommandStatus.Name(reply.status) == "COMMAND_STATUS_REJECTED", reason
            assert reply.reason.startswith(reason), (reason, reply.reason)

        # A valid command with a bad campaign file is refused and the running set stays.
        bad = sign_command(
            key_,
            command_id="push-2",
            kind="campaigns.replace",
            target=VIN,
            payload=b'[[campaign]]\nname = "x"\nsignals = ["Vehicle.Nope"]\n',
        )
        reply = await _send(pki, server.bound_port, bad, "push-2")
        assert fleet_pb.CommandStatus.Name(reply.status) == "COMMAND_STATUS_REJECTED"
        assert reply.reason.startswith("invalid_payload")
        assert agent.campaigns is not None and agent.campaigns.engine.active() == [("hard_braking", 7)]
    finally:
        sender.shutdown()
        stop.set()
        final = await asyncio.wait_for(task, 30)
    assert (final.commands_executed, final.commands_rejected) == (1, 5)
