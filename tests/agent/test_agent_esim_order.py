"""eSIM profile orders end to end over mTLS: ``tcu esim order`` signs an ``esim.enable`` command,
the ingest relays it, the agent's connectivity source enables the profile on the simulated
eUICC (in process, on a pty) and the vehicle's CommandResult comes back; bad orders are refused
with reasons, and an agent without ``[connectivity]`` says so."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from agent_helpers import agent_config, wait_until
from cryptography.hazmat.primitives.asymmetric import ed25519

from sim.border import PROFILES, build_card, build_modem
from sim.datalink import DataLinkProxy, has_data_connection
from sim.modem import SimulatedModem
from tcu.agent import Agent
from tcu.agent.connectivity import EsimOrder, parse_esim_order
from tcu.api.v1 import fleet_pb2 as fleet_pb
from tcu.api.v1 import fleet_pb2_grpc as fleet_grpc
from tcu.cli.main import main
from tcu.config import AgentConfig, CommandSettings, TlsConfig, parse_connectivity
from tcu.errors import InputError
from tcu.esim import verify
from tcu.ingest import IngestServer
from tcu.pki import DevPki, channel_credentials, load_signing_key, sign_command

VIN = "WTCUESIM000000001"
ICCID = {p.label: p.iccid for p in PROFILES}
POLICY = f"""
[policy]
min_dwell_s = 10
attach_deadline_s = 30

[profiles]
fr-orange = "{ICCID["fr-orange"]}"
de-telekom = "{ICCID["de-telekom"]}"

[countries.FR]
preferred = "fr-orange"
"""


@pytest.fixture
def modem() -> Iterator[SimulatedModem]:
    with build_modem(build_card(), country="FR", attach_delay_s=0.03) as sim:
        yield sim


def _config(
    pki: DevPki, server: IngestServer, tmp_path: Path, small_dbc: Path, small_mapping: Path
) -> AgentConfig:
    cert, key = pki.vehicle(VIN)
    base = agent_config(f"tcu-test-{uuid.uuid4().hex}", server.bound_port, small_dbc, small_mapping)
    return dataclasses.replace(
        base,
        vehicle_id=VIN,
        uplink=dataclasses.replace(
            base.uplink, insecure=False, tls=TlsConfig(ca_cert=pki.ca_cert, cert=cert, key=key)
        ),
        commands=CommandSettings(verify_key=pki.command_verify_key, nonce_store=tmp_path / "nonces"),
    )


async def _send(pki: DevPki, port: int, blob: bytes, command_id: str) -> tuple[str, str]:
    async with grpc.aio.secure_channel(
        f"127.0.0.1:{port}", channel_credentials(pki.ca_cert, *pki.backend("oem"))
    ) as ch:
        request = fleet_pb.SendCommandRequest(
            vehicle_id=VIN, command_id=command_id, kind="esim.enable", signed_command=blob, timeout_ms=10_000
        )
        reply = await fleet_grpc.FleetStub(ch).SendCommand(request, timeout=20)
    return fleet_pb.CommandStatus.Name(reply.status).removeprefix("COMMAND_STATUS_"), reply.reason


def test_order_payload_is_checked_strictly() -> None:
    digits = ICCID["de-telekom"]
    assert parse_esim_order(digits.encode()) == EsimOrder(digits)
    assert parse_esim_order(b"8933010000123456789F\nswap for maintenance") == EsimOrder(
        "8933010000123456789", "swap for maintenance"
    )
    assert parse_esim_order(b"893301000012345678") == EsimOrder("893301000012345678")
    bad = [
        b"",
        b"89330100001234567",  # 17 digits
        b"893301000012345678901",  # 21 digits
        b"89330100001234567890F",  # 21 characters
        b"8933010000123456789f",
        b"89330100001234567X01",
        b" 89330100001234567801",
        b"89330100001234567801\n",  # empty reason
        b"89330100001234567801\nbad\x07bell",
        b"89330100001234567801\n" + b"x" * 201,
        b"89330100001234567801\n\xff",
        "8933010000123456780١".encode(),  # a non-ASCII digit
    ]
    for payload in bad:
        with pytest.raises(InputError):
            parse_esim_order(payload)


async def test_backend_orders_a_profile_and_bad_orders_are_refused(
    pki: DevPki,
    server: IngestServer,
    modem: SimulatedModem,
    *,
    tmp_path: Path,
    small_dbc: Path,
    small_mapping: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "roaming.toml").write_text(POLICY)
    audit = tmp_path / "esim-audit.jsonl"
    config = dataclasses.replace(
        _config(pki, server, tmp_path, small_dbc, small_mapping),
        connectivity=parse_connectivity(
            {
                "port": modem.port,
                "policy": str(tmp_path / "roaming.toml"),
                "audit_log": str(audit),
                "poll_interval_s": 0.05,
                "command_timeout_s": 1.0,
                "apdu_timeout_s": 0.5,
                "clock": "wall",
                "reopen_backoff_s": 0.1,
            },
            base=tmp_path,
        ),
    )
    agent = Agent(config)
    assert agent.connectivity is not None
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    port = server.bound_port
    key = load_signing_key(pki.command_signing_key)
    try:
        await wait_until(lambda: agent.uplink.stats.connected)
        # the backend CLI, in a thread (it runs its own event loop)
        code = await asyncio.to_thread(
            main,
            [
                "esim",
                "order",
                VIN,
                ICCID["de-telekom"],
                "--reason",
                "field test",
                "--target",
                f"127.0.0.1:{port}",
                "--pki",
                str(pki.directory),
                "--backend",
                "oem",
                "--timeout",
                "30",
            ],
        )
        out = capsys.readouterr().out
        assert code == 0, out
        assert (
            out.strip()
            == f"{VIN}: EXECUTED: enabled {ICCID['de-telekom']} (de-telekom), registered on 208-10"
        )
        assert modem.card.enabled_iccids == [ICCID["de-telekom"]]
        order = [d for d, _ in agent.connectivity.decisions]
        assert [(d.kind.value, d.target_iccid) for d in order] == [("order", ICCID["de-telekom"])]
        assert order[0].command_id is not None and order[0].command_id.startswith("esim-order-")
        assert order[0].reason.endswith(": field test")
        assert '"decision":"order"' in audit.read_text()
        assert verify(audit) > 0

        # malformed ICCID: refused before anything reaches the card
        blob = sign_command(key, command_id="o-bad", kind="esim.enable", target=VIN, payload=b"8933X")
        status, reason = await _send(pki, port, blob, "o-bad")
        assert (status, reason.split(":")[0]) == ("REJECTED", "invalid_payload"), reason
        assert "must be 18-20 digits" in reason

        # forged, expired, replayed: the shared verifier
        valid = sign_command(
            key, command_id="o-back", kind="esim.enable", target=VIN, payload=ICCID["fr-orange"].encode()
        )
        assert await _send(pki, port, valid, "o-back") == (
            "EXECUTED",
            f"enabled {ICCID['fr-orange']} (fr-orange), registered on 208-01",
        )
        forged = sign_command(
            ed25519.Ed25519PrivateKey.generate(),
            command_id="o-forged",
            kind="esim.enable",
            target=VIN,
            payload=ICCID["de-telekom"].encode(),
        )
        expired = sign_command(
            key,
            command_id="o-old",
            kind="esim.enable",
            target=VIN,
            payload=ICCID["de-telekom"].encode(),
            ttl_s=60,
            issued_ns=time.time_ns() - 3_600 * 10**9,
        )
        for blob, command_id, expected in (
            (forged, "o-forged", "bad_signature"),
            (expired, "o-old", "expired"),
            (valid, "o-back", "replayed"),
        ):
            status, reason = await _send(pki, port, blob, command_id)
            assert status == "REJECTED" and reason.startswith(expected), (command_id, reason)
        assert modem.card.enabled_iccids == [ICCID["fr-orange"]]
        assert len(agent.connectivity.decisions) == 2
    finally:
        stop.set()
        final = await asyncio.wait_for(task, 30)
    assert (final.commands_executed, final.commands_rejected) == (2, 4)


async def test_without_connectivity_an_order_is_refused_and_campaign_push_still_works(
    pki: DevPki,
    server: IngestServer,
    tmp_path: Path,
    small_dbc: Path,
    small_mapping: Path,
    *,
    capsys: pytest.CaptureFixture[str],
) -> None:
    agent = Agent(_config(pki, server, tmp_path, small_dbc, small_mapping))
    assert agent.connectivity is None
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await wait_until(lambda: agent.uplink.stats.connected)
        blob = sign_command(
            load_signing_key(pki.command_signing_key),
            command_id="o-1",
            kind="esim.enable",
            target=VIN,
            payload=ICCID["de-telekom"].encode(),
        )
        assert await _send(pki, server.bound_port, blob, "o-1") == (
            "REJECTED",
            "unavailable: esim.enable: no connectivity configured",
        )
        # tcu campaign push sends through the same helper as tcu esim order
        campaigns = tmp_path / "campaigns.toml"
        campaigns.write_text(
            '[[campaign]]\nname = "speed"\nversion = 3\nsignals = ["Vehicle.Speed"]\n'
            "[campaign.periodic]\nperiod_ms = 1000\n"
        )
        args = ["campaign", "push", VIN, str(campaigns), "--target", f"127.0.0.1:{server.bound_port}"]
        args += ["--pki", str(pki.directory), "--backend", "oem", "--timeout", "10"]
        code = await asyncio.to_thread(main, args)
        assert (code, capsys.readouterr().out.strip()) == (0, f"{VIN}: EXECUTED")
        assert agent.campaigns is not None and ("speed", 3) in agent.campaigns.engine.active()
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_order_result_arrives_after_the_switch_cut_the_data_link(
    pki: DevPki, server: IngestServer, tmp_path: Path, small_dbc: Path, small_mapping: Path
) -> None:
    """The switch detaches the modem, which cuts the uplink (the simulated data path); the result
    comes on the next stream, and the backend waiting in Fleet.SendCommand gets it."""
    (tmp_path / "roaming.toml").write_text(POLICY)
    with build_modem(build_card(), country="FR", attach_delay_s=0.5) as modem:
        await wait_until(lambda: has_data_connection(modem), timeout_s=10)
        with DataLinkProxy(lambda: has_data_connection(modem), ("127.0.0.1", server.bound_port)) as link:
            base = _config(pki, server, tmp_path, small_dbc, small_mapping)
            config = dataclasses.replace(
                base,
                uplink=dataclasses.replace(base.uplink, target=f"127.0.0.1:{link.port}"),
                connectivity=parse_connectivity(
                    {
                        "port": modem.port,
                        "policy": str(tmp_path / "roaming.toml"),
                        "audit_log": str(tmp_path / "esim-audit.jsonl"),
                        "poll_interval_s": 0.05,
                        "command_timeout_s": 1.0,
                        "apdu_timeout_s": 0.5,
                        "clock": "wall",
                        "reopen_backoff_s": 0.1,
                    },
                    base=tmp_path,
                ),
            )
            agent = Agent(config)
            stop = asyncio.Event()
            task = asyncio.create_task(agent.run(stop))
            try:
                await wait_until(lambda: agent.uplink.stats.connected)
                blob = sign_command(
                    load_signing_key(pki.command_signing_key),
                    command_id="o-cut",
                    kind="esim.enable",
                    target=VIN,
                    payload=ICCID["de-telekom"].encode(),
                )
                assert await _send(pki, server.bound_port, blob, "o-cut") == (
                    "EXECUTED",
                    f"enabled {ICCID['de-telekom']} (de-telekom), registered on 208-10",
                )
                assert link.stats.connections_cut >= 1  # the order's own switch cut the stream
                assert agent.uplink.stats.connects >= 2  # and the result came on a later one
            finally:
                stop.set()
                await asyncio.wait_for(task, 30)
