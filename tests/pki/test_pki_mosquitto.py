"""A real Mosquitto with the generated TLS configuration and tile ACL, driven by aiomqtt clients.

The broker is started the way CI runs it: as root and without a ``user`` option, so Mosquitto
drops to its own user before it opens the ACL, the certificates and its persistence file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiomqtt
import pytest
from loopback import free_port

from tcu.pki import DevPki, PkiError
from tcu.pki.mosquitto import (
    MosquittoConfig,
    StationMap,
    load_station_map,
    mqtt_tls_context,
    render_acl,
    render_mosquitto_conf,
    write_mosquitto_config,
)

MOSQUITTO = "/usr/sbin/mosquitto"
pytestmark = pytest.mark.skipif(shutil.which(MOSQUITTO) is None, reason="mosquitto is not installed")

Pkis = Any  # the conftest fixture type
TIMEOUT_S = 10.0
STATIONS = {
    "WDD2050461A000001": 1001,
    "WDD2050461A000002": 1002,
    "WDD2050461A000004": 1004,
    "WDD2050461A000011": 1011,
    "WDD2050461A000012": 1012,
}
BACKEND_STATION = 900001
TILE = "120210"


def denm_topic(tile: str, station: int, msgtype: str = "denm") -> str:
    """A topic in the tile layout: ``v2x/<msgtype>/<station>/<q1>/.../<qn>``."""
    return "/".join(["v2x", msgtype, str(station), *tile])


def tile_filter(tile: str) -> str:
    return "/".join(["v2x", "+", "+", *tile, "#"])


@dataclass(frozen=True)
class Broker:
    port: int
    log_path: Path
    broker_dir: Path
    pkis: Pkis
    process: subprocess.Popen[bytes]


def _wait_listening(port: int, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mosquitto exited with {process.returncode}: {log_path.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"mosquitto did not listen on {port}: {log_path.read_text()}")


def _stations(pki: DevPki, backend: str | None) -> StationMap:
    return StationMap(
        vehicles={v: s for v, s in STATIONS.items() if v in pki.vehicles()},
        backends={} if backend is None else {backend: BACKEND_STATION},
    )


@contextlib.contextmanager
def _mosquitto(pkis: Pkis) -> Iterator[Broker]:
    """Start a real mosquitto for ``pkis.main`` on a free loopback port; stop it afterwards."""
    home = Path(tempfile.mkdtemp(prefix="tcu-mosquitto-"))
    os.chmod(home, 0o755)  # reachable by the user mosquitto drops to (pytest's tmp folders are 0700)
    port = free_port()
    broker_dir = home / "broker"
    conf, _ = write_mosquitto_config(
        pkis.main,
        broker_dir,
        port=port,
        log_types=("all",),
        stations=_stations(pkis.main, getattr(pkis, "backend", None)),
    )
    log_path = home / "mosquitto.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log_file, stderr=subprocess.STDOUT)
    try:
        _wait_listening(port, process, log_path)
        yield Broker(port=port, log_path=log_path, broker_dir=broker_dir, pkis=pkis, process=process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def broker(pkis: Pkis) -> Iterator[Broker]:
    pkis.main.revoke_vehicle(pkis.revoked_vin)
    with _mosquitto(pkis) as running:
        yield running


def _client(broker: Broker, name: str | None, *, kind: str = "vehicle") -> aiomqtt.Client:
    pki = broker.pkis.main
    if name is None:
        context = mqtt_tls_context(pki.ca_cert)
    else:
        cert, key = pki.vehicle(name) if kind == "vehicle" else pki.backend(name)
        context = mqtt_tls_context(pki.ca_cert, cert, key)
    return aiomqtt.Client("127.0.0.1", broker.port, tls_context=context, timeout=TIMEOUT_S)


async def _collect_until(client: aiomqtt.Client, marker: bytes) -> list[tuple[str, bytes]]:
    got: list[tuple[str, bytes]] = []
    async with asyncio.timeout(TIMEOUT_S):
        async for message in client.messages:
            payload = message.payload
            assert isinstance(payload, bytes)
            got.append((str(message.topic), payload))
            if payload == marker:
                return got
    raise AssertionError("unreachable")


def test_broker_runs_as_its_own_user_when_started_as_root(broker: Broker) -> None:
    if os.geteuid() != 0:
        pytest.skip("only as root does mosquitto switch users")
    status = Path(f"/proc/{broker.process.pid}/status").read_text()
    uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
    assert int(uid) != 0
    assert (broker.broker_dir / "tls" / "server.key").stat().st_mode & 0o777 == 0o600


def test_unreachable_output_folder_is_refused_up_front(pkis: Pkis, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only as root does mosquitto switch users")
    with pytest.raises(PkiError, match="could not reach"):  # pytest's tmp folders are 0700 root
        write_mosquitto_config(pkis.main, tmp_path / "broker", port=8884)


async def test_vehicle_publishes_only_under_its_own_station(broker: Broker) -> None:
    me, other = broker.pkis.good_vin, broker.pkis.other_vin
    own = denm_topic(TILE, STATIONS[me])
    own_cam = denm_topic(TILE, STATIONS[me], "cam")
    foreign = denm_topic(TILE, STATIONS[other])
    async with _client(broker, other) as listener, _client(broker, me) as publisher:
        await listener.subscribe(tile_filter(TILE[:4]), qos=1)  # a coarser tile is one filter
        await publisher.publish(own, b"pothole", qos=1)
        await publisher.publish(foreign, b"forged", qos=1)  # Mosquitto drops it silently
        await publisher.publish(own_cam, b"cam", qos=1)
        await publisher.publish(own, b"marker", qos=1)  # same publisher, same order: arrives after
        got = await _collect_until(listener, b"marker")
    assert got == [(own, b"pothole"), (own_cam, b"cam"), (own, b"marker")]
    log = broker.log_path.read_text()
    assert "Denied PUBLISH from" in log and foreign in log


async def test_vehicle_cannot_forge_backend_warnings_but_backend_can(broker: Broker) -> None:
    backend = broker.pkis.backend
    topic = denm_topic("1202", BACKEND_STATION)
    async with (
        _client(broker, broker.pkis.other_vin) as listener,
        _client(broker, broker.pkis.good_vin) as vehicle,
        _client(broker, backend, kind="backend") as server,
    ):
        await listener.subscribe(tile_filter("1202"), qos=1)
        await vehicle.publish(topic, b"fake warning", qos=1)
        await vehicle.publish(denm_topic("1202", STATIONS[broker.pkis.good_vin]), b"vehicle-done", qos=1)
        await server.publish(denm_topic("1202", BACKEND_STATION, "cam"), b"backend cam", qos=1)  # denied
        await server.publish(topic, b"ice", qos=1)
        got = await _collect_until(listener, b"ice")
    assert (topic, b"fake warning") not in got
    assert all(payload != b"backend cam" for _, payload in got)
    assert got[-1] == (topic, b"ice")


def _tls_alert(broker: Broker, cert: Path | None, key: Path | None) -> str:
    """Connect with TLS and return the alert the broker sends right after the handshake."""
    context = mqtt_tls_context(broker.pkis.main.ca_cert, cert, key)
    with socket.create_connection(("127.0.0.1", broker.port), timeout=TIMEOUT_S) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                # TLS 1.3: the client's handshake ends before the broker has checked its
                # certificate; the refusal arrives as an alert on the first read.
                data = tls.recv(4)
        except ssl.SSLError as exc:
            return str(exc.reason)
    raise AssertionError(f"the broker did not refuse the connection (read {data!r})")


def test_client_without_certificate_is_refused(broker: Broker) -> None:
    assert _tls_alert(broker, None, None) == "TLSV13_ALERT_CERTIFICATE_REQUIRED"


def test_revoked_vehicle_is_refused(broker: Broker) -> None:
    cert, key = broker.pkis.main.vehicle(broker.pkis.revoked_vin)
    assert _tls_alert(broker, cert, key) == "SSLV3_ALERT_CERTIFICATE_REVOKED"


def test_certificate_from_another_ca_is_refused(broker: Broker) -> None:
    cert, key = broker.pkis.other.vehicle(broker.pkis.good_vin)
    assert _tls_alert(broker, cert, key) == "TLSV1_ALERT_UNKNOWN_CA"


async def test_aiomqtt_without_certificate_cannot_connect(broker: Broker) -> None:
    # aiomqtt notices the closed connection only at its timeout, so keep it short here;
    # the same timeout suffices for a client with a certificate.
    context = mqtt_tls_context(broker.pkis.main.ca_cert)
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client("127.0.0.1", broker.port, tls_context=context, timeout=3):
            pass
    cert, key = broker.pkis.main.vehicle(broker.pkis.good_vin)
    context = mqtt_tls_context(broker.pkis.main.ca_cert, cert, key)
    async with aiomqtt.Client("127.0.0.1", broker.port, tls_context=context, timeout=3):
        pass


def test_acl_text_and_revoked_vehicle_left_out(broker: Broker) -> None:
    acl = (broker.broker_dir / "acl").read_text()
    good = broker.pkis.good_vin
    assert f"user {good}\ntopic write v2x/cam/1001/#\ntopic write v2x/denm/1001/#\ntopic read v2x/#\n" in acl
    assert f"user {broker.pkis.revoked_vin}" not in acl
    assert f"user {broker.pkis.backend}\ntopic write v2x/denm/{BACKEND_STATION}/#\ntopic read v2x/#\n" in acl
    # A vehicle without a station id may only read.
    assert f"user {broker.pkis.expired_vin}\ntopic read v2x/#\n" in acl


def test_rendering_refuses_unsafe_values(tmp_path: Path) -> None:
    with pytest.raises(PkiError):
        render_acl(["WDD/+"])
    with pytest.raises(PkiError):
        render_acl(["VIN1"], root="v2x/#")
    config = MosquittoConfig(
        port=8884,
        cafile=tmp_path / "ca.pem",
        certfile=tmp_path / "s.pem",
        keyfile=tmp_path / "s.key\nallow_anonymous true",
        acl_file=tmp_path / "acl",
    )
    with pytest.raises(PkiError):
        render_mosquitto_conf(config)
    with pytest.raises(PkiError, match="both"):
        StationMap(vehicles={"VIN1": 5, "VIN2": 5})
    with pytest.raises(PkiError):
        StationMap(vehicles={"VIN1": 2**32})
    assert "topic write acme/v2x/cam/7/#" in render_acl(
        ["VIN1"], stations=StationMap({"VIN1": 7}), root="acme/v2x"
    )


def test_station_map_file(tmp_path: Path) -> None:
    path = tmp_path / "stations.toml"
    path.write_text("[vehicles]\nWDD2050461A000001 = 1001\n\n[backends]\nacme-backend = 900001\n")
    stations = load_station_map(path)
    assert stations.vehicles == {"WDD2050461A000001": 1001} and stations.backends == {"acme-backend": 900001}
    path.write_text("[vehicle]\nX = 1\n")
    with pytest.raises(PkiError, match="unknown tables"):
        load_station_map(path)
    path.write_text('[vehicles]\nX = "one"\n')
    with pytest.raises(PkiError, match="station id"):
        load_station_map(path)


async def _delivered(broker: Broker, vin: str) -> bool:
    """Does a DENM published by ``vin`` under its own station reach a subscriber?"""
    listener_vin = broker.pkis.good_vin
    async with _client(broker, listener_vin) as listener, _client(broker, vin) as publisher:
        await listener.subscribe("v2x/#", qos=1)
        await publisher.publish(denm_topic("1", STATIONS[vin]), b"hazard", qos=1)
        await publisher.publish(denm_topic("1", STATIONS[vin]), b"marker", qos=1)
        await listener.publish(denm_topic("1", STATIONS[listener_vin]), b"marker", qos=1)
        got = await _collect_until(listener, b"marker")
    return (denm_topic("1", STATIONS[vin]), b"hazard") in got


def _reload(broker: Broker) -> None:
    """Regenerate the files, SIGHUP the broker and wait until it logged the reload."""
    write_mosquitto_config(
        broker.pkis.main,
        broker.broker_dir,
        port=broker.port,
        log_types=("all",),
        stations=_stations(broker.pkis.main, None),
    )
    before = broker.log_path.read_text().count("Reloading config")
    broker.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + TIMEOUT_S
    while broker.log_path.read_text().count("Reloading config") == before:
        assert time.monotonic() < deadline, "mosquitto did not reload"
        time.sleep(0.05)


async def test_sighup_applies_new_vehicles_and_revocations(tmp_path: Path) -> None:
    pki = DevPki(tmp_path / "pki")
    pki.init()
    first, late = "WDD2050461A000011", "WDD2050461A000012"
    pki.issue_vehicle(first)
    with _mosquitto(SimpleNamespace(main=pki, good_vin=first)) as running:
        pki.issue_vehicle(late)
        assert not await _delivered(running, late)  # valid certificate, but no ACL entry yet
        _reload(running)
        assert await _delivered(running, late)
        cert, key = pki.vehicle(late)
        pki.revoke_vehicle(late)
        _reload(running)
        assert _tls_alert(running, cert, key) == "SSLV3_ALERT_CERTIFICATE_REVOKED"
