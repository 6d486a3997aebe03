"""A real Mosquitto with the generated TLS configuration and ACL, driven by aiomqtt clients."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import shutil
import signal
import socket
import ssl
import subprocess
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
    hazard_topic,
    mqtt_tls_context,
    render_acl,
    render_mosquitto_conf,
    warning_topic,
    write_mosquitto_config,
)

MOSQUITTO = "/usr/sbin/mosquitto"
pytestmark = pytest.mark.skipif(shutil.which(MOSQUITTO) is None, reason="mosquitto is not installed")

Pkis = Any  # the conftest fixture type
TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Broker:
    port: int
    log_path: Path
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


@contextlib.contextmanager
def _mosquitto(pkis: Pkis, out: Path) -> Iterator[Broker]:
    """Start a real mosquitto for ``pkis.main`` on a free loopback port; stop it afterwards."""
    port = free_port()
    conf, _ = write_mosquitto_config(
        pkis.main, out, port=port, run_as_user=getpass.getuser(), log_types=("all",)
    )
    log_path = out / "mosquitto.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log_file, stderr=subprocess.STDOUT)
    try:
        _wait_listening(port, process, log_path)
        yield Broker(port=port, log_path=log_path, pkis=pkis, process=process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@pytest.fixture(scope="module")
def broker(pkis: Pkis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    pkis.main.revoke_vehicle(pkis.revoked_vin)
    with _mosquitto(pkis, tmp_path_factory.mktemp("mosquitto")) as running:
        yield running


def _client(
    broker: Broker, name: str | None, *, kind: str = "vehicle", ca: Path | None = None
) -> aiomqtt.Client:
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


async def test_vehicle_publishes_only_on_its_own_hazard_topic(broker: Broker) -> None:
    me, other = broker.pkis.good_vin, broker.pkis.other_vin
    own = hazard_topic("t120210", me)
    foreign = hazard_topic("t120210", other)
    async with _client(broker, other) as listener, _client(broker, me) as publisher:
        await listener.subscribe("v2x/tiles/t120210/#", qos=1)
        await publisher.publish(own, b"pothole", qos=1)
        await publisher.publish(foreign, b"forged", qos=1)  # Mosquitto drops it silently
        await publisher.publish(own, b"marker", qos=1)  # same publisher, same order: arrives after
        got = await _collect_until(listener, b"marker")
    assert got == [(own, b"pothole"), (own, b"marker")]
    log = broker.log_path.read_text()
    assert "Denied PUBLISH from" in log and foreign in log


async def test_vehicle_cannot_forge_backend_warnings_but_backend_can(broker: Broker) -> None:
    backend = broker.pkis.backend
    topic = warning_topic("t77", backend)
    async with (
        _client(broker, broker.pkis.other_vin) as listener,
        _client(broker, broker.pkis.good_vin) as vehicle,
        _client(broker, backend, kind="backend") as server,
    ):
        await listener.subscribe("v2x/tiles/t77/#", qos=1)
        await vehicle.publish(topic, b"fake warning", qos=1)
        await vehicle.publish(hazard_topic("t77", broker.pkis.good_vin), b"vehicle-done", qos=1)
        await server.publish(topic, b"ice", qos=1)
        got = await _collect_until(listener, b"ice")
    assert (topic, b"fake warning") not in got
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
    acl = (broker.log_path.parent / "acl").read_text()
    assert f"user {broker.pkis.good_vin}\ntopic write v2x/tiles/+/hazard/{broker.pkis.good_vin}\n" in acl
    assert f"user {broker.pkis.revoked_vin}" not in acl
    assert f"user {broker.pkis.backend}\ntopic write v2x/tiles/+/warning/{broker.pkis.backend}\n" in acl


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
    with pytest.raises(PkiError):
        hazard_topic("a/b", "VIN1")


async def _delivered(broker: Broker, vin: str) -> bool:
    """Does a hazard published by ``vin`` on its own topic reach a subscriber?"""
    async with _client(broker, broker.pkis.good_vin) as listener, _client(broker, vin) as publisher:
        await listener.subscribe("v2x/tiles/#", qos=1)
        await publisher.publish(hazard_topic("t1", vin), b"hazard", qos=1)
        await publisher.publish(hazard_topic("t1", vin), b"marker", qos=1)
        await listener.publish(hazard_topic("t1", broker.pkis.good_vin), b"marker", qos=1)
        got = await _collect_until(listener, b"marker")
    return (hazard_topic("t1", vin), b"hazard") in got


def _reload(broker: Broker) -> None:
    """Regenerate the files, SIGHUP the broker and wait until it logged the reload."""
    write_mosquitto_config(
        broker.pkis.main,
        broker.log_path.parent,
        port=broker.port,
        run_as_user=getpass.getuser(),
        log_types=("all",),
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
    with _mosquitto(SimpleNamespace(main=pki, good_vin=first), tmp_path / "broker") as running:
        pki.issue_vehicle(late)
        assert not await _delivered(running, late)  # valid certificate, but no ACL entry yet
        _reload(running)
        assert await _delivered(running, late)
        cert, key = pki.vehicle(late)
        pki.revoke_vehicle(late)
        _reload(running)
        assert _tls_alert(running, cert, key) == "SSLV3_ALERT_CERTIFICATE_REVOKED"
