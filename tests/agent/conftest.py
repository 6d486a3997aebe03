"""Fixtures for the agent tests: a small DBC and mapping written to tmp_path."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tcu.ingest import IngestConfig, IngestServer, IngestTls
from tcu.pki import DevPki

DBC = """VERSION ""

NS_ :

BS_:

BU_: ECU TCU

BO_ 256 Dyn: 8 ECU
 SG_ Speed : 0|16@1+ (0.01,0) [0|655.35] "km/h" TCU
 SG_ Accel : 16|16@1- (0.001,0) [-32|32] "m/s^2" TCU
 SG_ Gear : 32|4@1+ (1,0) [0|15] "" TCU

BO_ 2566844926 Ext: 8 ECU
 SG_ Odometer : 7|32@0+ (0.1,0) [0|429496729.5] "km" TCU

BO_ 512 Mux: 8 ECU
 SG_ Sel M : 0|8@1+ (1,0) [0|255] "" TCU
 SG_ PressFL m0 : 8|8@1+ (2,0) [0|510] "kPa" TCU
 SG_ PressFR m1 : 8|8@1+ (2,0) [0|510] "kPa" TCU

BA_DEF_ BO_ "GenMsgCycleTime" INT 0 10000;
BA_ "GenMsgCycleTime" BO_ 256 10;
"""

MAPPING = """version = 1

[[signal]]
name = "Vehicle.Speed"
message = "Dyn"
signal = "Speed"
period_ms = 100

[[signal]]
name = "Vehicle.Acceleration.Longitudinal"
message = "Dyn"
signal = "Accel"
period_ms = 50

[[signal]]
name = "Vehicle.TraveledDistance"
message = "Ext"
signal = "Odometer"
period_ms = 1000

[[signal]]
name = "Vehicle.Chassis.Axle.Row1.Wheel.Left.Tire.Pressure"
message = "Mux"
signal = "PressFL"
period_ms = 100

[[signal]]
name = "Vehicle.Chassis.Axle.Row1.Wheel.Right.Tire.Pressure"
message = "Mux"
signal = "PressFR"
period_ms = 100
"""


@pytest.fixture
def small_dbc(tmp_path: Path) -> Path:
    path = tmp_path / "small.dbc"
    path.write_text(DBC)
    return path


@pytest.fixture
def small_mapping(tmp_path: Path) -> Path:
    path = tmp_path / "small_vss.toml"
    path.write_text(MAPPING)
    return path


@pytest.fixture
async def ingest(tmp_path: Path) -> AsyncIterator[IngestServer]:
    server = IngestServer(
        IngestConfig(insecure=True, listen="127.0.0.1:0", db_path=tmp_path / "ingest.sqlite")
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop(1.0)


@pytest.fixture
def pki(tmp_path: Path, request: pytest.FixtureRequest) -> DevPki:
    """A development PKI with a certificate for the test module's ``VIN`` and a backend "oem"."""
    pki = DevPki(tmp_path / "pki")
    pki.init()
    pki.issue_vehicle(request.module.VIN)
    pki.issue_backend("oem")
    return pki


@pytest.fixture
async def server(pki: DevPki, tmp_path: Path) -> AsyncIterator[IngestServer]:
    """A real ingest on a free loopback port with mTLS from ``pki``."""
    tls = IngestTls(cert=pki.server_cert, key=pki.server_key, client_ca=pki.ca_cert, crl=pki.crl)
    server = IngestServer(IngestConfig(listen="127.0.0.1:0", db_path=tmp_path / "i.db", tls=tls))
    await server.start()
    try:
        yield server
    finally:
        await server.stop(0.5)
