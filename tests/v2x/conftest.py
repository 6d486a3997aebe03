"""Fixtures of the V2N tests: one PKI and one real Mosquitto (mTLS, tile ACL) per module."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from v2x_broker import BACKEND, BACKEND_STATION, MOSQUITTO, VEHICLES, V2xBroker, free_port

from tcu.pki import DevPki
from tcu.pki.mosquitto import StationMap, write_mosquitto_config


@pytest.fixture(scope="module")
def v2x_pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    pki = DevPki(tmp_path_factory.mktemp("v2x-pki") / "pki")
    pki.init()
    for vin in VEHICLES:
        pki.issue_vehicle(vin)
    pki.issue_backend(BACKEND)
    return pki


@pytest.fixture(scope="module")
def v2x_broker(v2x_pki: DevPki) -> Iterator[V2xBroker]:
    if shutil.which(MOSQUITTO) is None:
        pytest.skip("mosquitto is not installed")
    home = Path(tempfile.mkdtemp(prefix="tcu-v2x-broker-"))
    os.chmod(home, 0o755)  # reachable by the user mosquitto drops to
    port = free_port()
    write_mosquitto_config(
        v2x_pki,
        home / "broker",
        port=port,
        log_types=("all",),
        stations=StationMap(vehicles=VEHICLES, backends={BACKEND: BACKEND_STATION}),
    )
    broker = V2xBroker(pki=v2x_pki, home=home, port=port, log_path=home / "mosquitto.log")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
        shutil.rmtree(home, ignore_errors=True)
