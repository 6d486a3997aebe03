"""``tcu esim order-download`` end to end: a signed ``esim.download`` command, relayed by the ingest,
makes the agent's connectivity source download a TS.48 profile from osmo-smdpp into the simulated
card (on a pty), enable it and answer once it attached; a download the SM-DP+ refuses is answered
``failed`` and leaves the card as it was; an agent without ``smdp_ca`` says it cannot."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from agent_helpers import agent_config, wait_until
from smdpp_server import SERVER_NAME, SmdpPlus

from sim.border import build_card, build_modem
from sim.cellular import DOWNLOAD_MATCHING_ID, DOWNLOADED
from sim.modem import SimulatedModem
from tcu.agent import Agent
from tcu.agent.commands import DownloadOrder, parse_download_order
from tcu.api.v1 import fleet_pb2 as fleet_pb
from tcu.api.v1 import fleet_pb2_grpc as fleet_grpc
from tcu.cli.main import main
from tcu.config import AgentConfig, CommandSettings, TlsConfig, parse_connectivity
from tcu.errors import InputError
from tcu.esim import verify
from tcu.ingest import IngestServer
from tcu.pki import DevPki, channel_credentials, load_signing_key, sign_command

VIN = "WTCUESIM000000002"
POLICY = """
[policy]
min_dwell_s = 10
attach_deadline_s = 30
"""


@pytest.fixture
def modem(smdpp: SmdpPlus) -> Iterator[SimulatedModem]:
    card = build_card(smdpp.tree.generated, SERVER_NAME)
    with build_modem(card, country="FR", attach_delay_s=0.03) as sim:
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


def test_download_order_payload_is_checked() -> None:
    code = f"LPA:1${SERVER_NAME}${DOWNLOAD_MATCHING_ID}"
    assert parse_download_order(code.encode()) == DownloadOrder(code)
    assert parse_download_order(f"{code}\nnew market".encode()) == DownloadOrder(code, "new market")
    for bad in (b"", b"LPA:1$only-address", b"LPA:1$a b$X", code.encode() + b"\n", "LPA:1$é$X".encode()):
        with pytest.raises(InputError):
            parse_download_order(bad)


async def test_backend_orders_a_download_and_a_refused_one_changes_nothing(
    pki: DevPki,
    server: IngestServer,
    modem: SimulatedModem,
    smdpp: SmdpPlus,
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
                "command_timeout_s": 2.0,
                "apdu_timeout_s": 2.0,
                "clock": "wall",
                "reopen_backoff_s": 0.1,
                "smdp_ca": str(smdpp.tree.ci_certificate),
                "smdp_connect": f"{smdpp.host}:{smdpp.port}",
            },
            base=tmp_path,
        ),
    )
    agent = Agent(config)
    assert agent.connectivity is not None
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    port = server.bound_port
    before = [p.iccid for p in modem.card.profiles]
    try:
        await wait_until(lambda: agent.uplink.stats.connected)
        code = smdpp.activation_code(DOWNLOAD_MATCHING_ID)
        args = [
            "esim",
            "order-download",
            VIN,
            code,
            "--reason",
            "new market",
            "--target",
            f"127.0.0.1:{port}",
        ]
        args += ["--pki", str(pki.directory), "--backend", "oem", "--timeout", "60"]
        exit_code = await asyncio.to_thread(main, args)
        out = capsys.readouterr().out
        assert exit_code == 0, out
        assert (
            out.strip()
            == f"{VIN}: EXECUTED: enabled {DOWNLOADED.iccid} ({DOWNLOADED.iccid}), registered on 208-10"
        )
        assert modem.card.enabled_iccids == [DOWNLOADED.iccid]
        assert [p.iccid for p in modem.card.profiles] == [*before, DOWNLOADED.iccid]
        assert [r.iccid for r in agent.connectivity.downloads] == [DOWNLOADED.iccid]
        entries = [json.loads(line) for line in audit.read_text().splitlines()]
        assert any(e["kind"] == "download" and e["step"] == "done" for e in entries)
        order = [e for e in entries if e["kind"] == "decision"]
        assert order[-1]["decision"] == "order" and order[-1]["target"] == DOWNLOADED.iccid
        # the install notification reached osmo-smdpp and left the card; those of the enable follow
        await wait_until(lambda: not modem.card.notifications, timeout_s=20)

        # a matching id the SM-DP+ does not know: refused, the card as it was
        profiles = [(p.iccid, p.state) for p in modem.card.profiles]
        blob = sign_command(
            load_signing_key(pki.command_signing_key),
            command_id="d-bad",
            kind="esim.download",
            target=VIN,
            payload=smdpp.activation_code("NO-SUCH-PROFILE").encode(),
        )
        async with grpc.aio.secure_channel(
            f"127.0.0.1:{port}", channel_credentials(pki.ca_cert, *pki.backend("oem"))
        ) as ch:
            request = fleet_pb.SendCommandRequest(
                vehicle_id=VIN,
                command_id="d-bad",
                kind="esim.download",
                signed_command=blob,
                timeout_ms=30_000,
            )
            reply = await fleet_grpc.FleetStub(ch).SendCommand(request, timeout=40)
        assert fleet_pb.CommandStatus.Name(reply.status) == "COMMAND_STATUS_REJECTED"
        assert reply.reason.startswith("failed: download failed at authenticateClient"), reply.reason
        assert "8.2.6" in reply.reason
        assert [(p.iccid, p.state) for p in modem.card.profiles] == profiles
        assert agent.connectivity.download_failures == 1
        assert verify(audit) > 0
    finally:
        stop.set()
        final = await asyncio.wait_for(task, 30)
    assert (final.commands_executed, final.commands_rejected) == (1, 1)


async def test_without_smdp_ca_a_download_order_is_unavailable(
    pki: DevPki,
    server: IngestServer,
    tmp_path: Path,
    small_dbc: Path,
    small_mapping: Path,
) -> None:
    agent = Agent(_config(pki, server, tmp_path, small_dbc, small_mapping))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await wait_until(lambda: agent.uplink.stats.connected)
        blob = sign_command(
            load_signing_key(pki.command_signing_key),
            command_id="d-1",
            kind="esim.download",
            target=VIN,
            payload=f"LPA:1${SERVER_NAME}$X".encode(),
        )
        async with grpc.aio.secure_channel(
            f"127.0.0.1:{server.bound_port}", channel_credentials(pki.ca_cert, *pki.backend("oem"))
        ) as ch:
            request = fleet_pb.SendCommandRequest(
                vehicle_id=VIN, command_id="d-1", kind="esim.download", signed_command=blob, timeout_ms=10_000
            )
            reply = await fleet_grpc.FleetStub(ch).SendCommand(request, timeout=20)
        assert reply.reason == "unavailable: esim.download: no connectivity configured"
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
