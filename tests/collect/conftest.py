"""Fixtures for the collect tests: a catalog of VSS signals built without a DBC."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tcu.signals.mapping import Catalog, SignalSpec

NAMES = (
    "Vehicle.Speed",
    "Vehicle.Acceleration.Longitudinal",
    "Vehicle.Acceleration.Lateral",
    "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current",
    "Vehicle.Powertrain.Transmission.SelectedGear",
)


def make_catalog(names: tuple[str, ...] = NAMES) -> Catalog:
    specs = tuple(
        SignalSpec(
            signal_id=i + 1,
            name=name,
            unit="",
            bus="can0",
            message=f"M{i}",
            signal=f"S{i}",
            period_ms=100,
            resolution=0.01,
        )
        for i, name in enumerate(names)
    )
    return Catalog(specs, "test")


@pytest.fixture
def catalog() -> Catalog:
    return make_catalog()


@pytest.fixture
def catalog_factory() -> Callable[[tuple[str, ...]], Catalog]:
    return make_catalog
