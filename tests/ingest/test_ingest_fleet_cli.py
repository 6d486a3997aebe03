"""``tcu fleet`` as a process against a real mTLS ingest on loopback, with the backend's PKI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tcu.ingest import IngestConfig, IngestServer, IngestTls
from tcu.pki import DevPki, channel_credentials

VIN = "WTCUFLEET00000001"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    pki = DevPki(tmp_path_factory.mktemp("pki"))
    pki.init()
    pki.issue_vehicle(VIN)
    pki.issue_backend("tcu-demo")
    return pki


@pytest.fixture
async def stored(pki: DevPki, tmp_path: Path, kit: Any) -> AsyncIterator[tuple[int, list[dict[str, Any]]]]:
    """An mTLS ingest holding three batches of VIN (uploaded by the vehicle); the samples uploaded."""
    tls = IngestTls(cert=pki.server_cert, key=pki.server_key, client_ca=pki.ca_cert, crl=pki.crl)
    server = IngestServer(IngestConfig(listen="127.0.0.1:0", db_path=tmp_path / "i.db", tls=tls))
    port = await server.start()
    sent: list[dict[str, Any]] = []
    try:
        cert, key = pki.vehicle(VIN)
        creds = channel_credentials(pki.ca_cert, cert, key)
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds) as channel:
            from tcu.api.v1 import ingest_pb2_grpc as ingest_grpc

            call = ingest_grpc.IngestStub(channel).Upload(timeout=30)
            await call.write(kit.hello(VIN))
            for seq in (1, 2, 3):
                speed = [(seq * 1000 + i * 100, 10.0 * seq + i + 0.25) for i in range(4)]
                soc = [(seq * 1000 + 50, 80.0 - seq)]
                operator = [(seq * 1000 + 70, f"op-{seq}")]
                await call.write(kit.batch(VIN, seq, speed=speed, soc=soc, operator=operator))
                ack = await kit.ack_of(call)
                assert ack.acked_seq == seq and not ack.quarantined
                for name, unit, rows in (
                    ("Vehicle.Speed", "km/h", speed),
                    ("Vehicle.Powertrain.TractionBattery.StateOfCharge.Current", "percent", soc),
                    ("Vehicle.Connectivity.OperatorName", "", operator),
                ):
                    for t, v in rows:
                        sent.append(
                            {
                                "vehicle_id": VIN,
                                "signal": name,
                                "unit": unit,
                                "t_ns": kit.base_ns + t,
                                "value": v,
                            }
                        )
            await call.done_writing()
        yield port, sent
    finally:
        await server.stop(0)


async def _tcu(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tcu.cli.main",
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_fleet_query_json_is_what_the_ingest_stores(stored: Any, pki: DevPki) -> None:
    port, sent = stored
    code, out, err = await _tcu(
        "fleet", "query", VIN, "--target", f"127.0.0.1:{port}", "--pki", str(pki.directory), "--json"
    )
    assert code == 0, err
    got = [json.loads(line) for line in out.splitlines()]
    key = lambda row: (row["signal"], row["t_ns"])  # noqa: E731
    assert sorted(got, key=key) == sorted(sent, key=key)
    assert len(got) == 18
    # A time range and one signal.
    start = str(sent[0]["t_ns"] + 1000)
    code, out, err = await _tcu(
        "fleet", "query", VIN, "--target", f"127.0.0.1:{port}", "--pki", str(pki.directory), "--json",
        "--signal", "Vehicle.Speed", "--start", start,
    )  # fmt: skip
    assert code == 0, err
    got = [json.loads(line) for line in out.splitlines()]
    assert got == [r for r in sent if r["signal"] == "Vehicle.Speed" and r["t_ns"] >= int(start)]


async def test_fleet_vehicles_and_human_query(stored: Any, pki: DevPki) -> None:
    port, _ = stored
    common = ("--target", f"127.0.0.1:{port}", "--pki", str(pki.directory))
    code, out, err = await _tcu("fleet", "vehicles", *common, "--json")
    assert code == 0, err
    (vehicle,) = [json.loads(line) for line in out.splitlines()]
    assert (vehicle["vehicle_id"], vehicle["batches"], vehicle["samples"]) == (VIN, 3, 18)
    code, out, err = await _tcu("fleet", "vehicles", *common)
    assert code == 0, err
    assert out.splitlines()[0].split()[:3] == ["VEHICLE", "CONNECTED", "BATCHES"]
    assert out.splitlines()[1].split()[:3] == [VIN, "no", "3"]
    code, out, err = await _tcu("fleet", "query", VIN, *common, "--signal", "Vehicle.Speed")
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 12 and lines[0].endswith(" Vehicle.Speed 10.25 km/h"), lines[:2]
    assert "12 samples" in err


async def test_unknown_signal_and_vehicle_are_refused_with_did_you_mean(stored: Any, pki: DevPki) -> None:
    port, _ = stored
    common = ("--target", f"127.0.0.1:{port}", "--pki", str(pki.directory))
    code, out, err = await _tcu("fleet", "query", VIN, *common, "--signal", "Vehicle.Sped")
    assert code == 1 and not out
    assert "--signal Vehicle.Sped: vehicle WTCUFLEET00000001 has sent no signal of that name" in err
    assert "did you mean 'Vehicle.Speed'?" in err and "Traceback" not in err
    code, out, err = await _tcu("fleet", "query", "WTCUFLEET00000002", *common)
    assert code == 1 and "did you mean 'WTCUFLEET00000001'?" in err
    # `tcu watch` (the alias of `fleet subscribe`) no longer waits forever for a misspelt name.
    code, out, err = await _tcu("watch", *common, "--signal", "Vehicle.Nope", "--count", "1")
    assert code == 1 and "--signal Vehicle.Nope: no vehicle has sent a signal of that name" in err


async def test_fleet_command_signs_and_reports_the_outcome(stored: Any, pki: DevPki) -> None:
    port, _ = stored
    common = ("--target", f"127.0.0.1:{port}", "--pki", str(pki.directory))
    code, out, err = await _tcu(
        "fleet", "command", VIN, "esim.enable", "--payload", "89490200001234567803", *common,
        "--timeout", "0.5",
        "--json",
    )  # fmt: skip
    assert code == 1, err  # the vehicle is not connected: not executed
    assert json.loads(out) == {
        "vehicle_id": VIN,
        "kind": "esim.enable",
        "status": "NOT_CONNECTED",
        "reason": f"vehicle '{VIN}' had no open Upload stream within 0.5 s",
    }


async def test_fleet_subscribe_json_prints_each_stored_sample(stored: Any, pki: DevPki, kit: Any) -> None:
    port, _ = stored
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tcu.cli.main", "fleet", "subscribe", "--target", f"127.0.0.1:{port}",
        "--pki", str(pki.directory), "--signal", "Vehicle.Speed", "--count", "1", "--json",
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    from tcu.api.v1 import ingest_pb2_grpc as ingest_grpc

    cert, key = pki.vehicle(VIN)
    creds = channel_credentials(pki.ca_cert, cert, key)
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds) as ch:
        call = ingest_grpc.IngestStub(ch).Upload(timeout=60)
        await call.write(kit.hello(VIN, boot_epoch=2))
        seq = 0
        while proc.returncode is None and seq < 100:  # until the subscriber (started meanwhile) got one
            seq += 1
            await call.write(kit.batch(VIN, seq, boot_epoch=2, speed=[(seq, float(seq))], soc=[(seq, 1.0)]))
            await kit.ack_of(call)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 0.5)
        await call.done_writing()
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    (line,) = out.decode().splitlines()  # --count 1: one update, one Speed sample in it
    row = json.loads(line)
    n = row["seq"]
    assert row == {
        "vehicle_id": VIN, "boot_epoch": 2, "seq": n, "signal": "Vehicle.Speed", "unit": "km/h",
        "t_ns": kit.base_ns + n, "value": float(n),
    }  # fmt: skip
