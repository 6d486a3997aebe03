"""Fixtures of the pki tests: one development PKI per module, built with the real code."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import pytest

from tcu.pki import DevPki

GOOD_VIN = "WDD2050461A000001"
REVOKED_VIN = "WDD2050461A000002"
EXPIRED_VIN = "WDD2050461A000003"
OTHER_VIN = "WDD2050461A000004"
BACKEND = "acme-backend"


@dataclass(frozen=True)
class Pkis:
    """Two PKIs; test modules read the names from here (they cannot import conftest)."""

    main: DevPki
    other: DevPki  # an unrelated CA with a vehicle of the same VIN
    good_vin: str = GOOD_VIN
    revoked_vin: str = REVOKED_VIN
    expired_vin: str = EXPIRED_VIN
    other_vin: str = OTHER_VIN
    backend: str = BACKEND


@pytest.fixture(scope="module")
def pkis(tmp_path_factory: pytest.TempPathFactory) -> Pkis:
    base: Path = tmp_path_factory.mktemp("pki")
    main = DevPki(base / "main")
    main.init()
    main.issue_vehicle(GOOD_VIN)
    main.issue_vehicle(REVOKED_VIN)
    main.issue_vehicle(OTHER_VIN)
    main.issue_vehicle(EXPIRED_VIN, not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=10), valid_days=1)
    main.issue_backend(BACKEND)
    other = DevPki(base / "other")
    other.init()
    other.issue_vehicle(GOOD_VIN)
    return Pkis(main=main, other=other)
