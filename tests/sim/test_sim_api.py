"""The public surface of the sim package."""

from __future__ import annotations

import sim


def test_public_all() -> None:
    assert sorted(sim.__all__) == [
        "DEFAULT_DBC_PATH",
        "DEFAULT_MAPPING_PATH",
        "Drive",
        "DriveConfig",
        "DriveSummary",
        "GroundTruth",
        "GroundTruthError",
        "Pose",
        "Route",
        "SocketcandConfig",
        "SocketcandServer",
        "UnknownSeriesError",
        "Vehicle",
        "VehicleConfig",
        "Waypoint",
        "load_ground_truth",
        "metz_luxembourg_trier",
    ]
    for name in sim.__all__:
        assert getattr(sim, name) is not None
    assert sim.DEFAULT_DBC_PATH.is_file() and sim.DEFAULT_MAPPING_PATH.is_file()
