"""Simulated vehicle for tcu: route, vehicle model, CAN frames from a DBC, socketcand server.

``tcu`` never imports ``sim``; ``sim`` speaks the protocols a real vehicle speaks.
In-process use with any python-can bus::

    import can, sim
    with can.Bus(interface="virtual", channel="t", preserve_timestamps=True) as bus:
        drive = sim.Drive(sim.DriveConfig(duration_s=20, speed=None, seed=1))
        summary = drive.run(bus)
        truth = drive.ground_truth()   # or sim.load_ground_truth(path) after save_ground_truth(path)

Out of process: ``python -m sim --speed max --duration 60`` (see ``sim/__main__.py``).
"""

from sim.canbus import DEFAULT_DBC_PATH, DEFAULT_MAPPING_PATH, Drive, DriveConfig, DriveSummary
from sim.groundtruth import GroundTruth, GroundTruthError, UnknownSeriesError
from sim.groundtruth import load as load_ground_truth
from sim.route import Pose, Route, Waypoint, metz_luxembourg_trier
from sim.socketcand import SocketcandConfig, SocketcandServer
from sim.vehicle import Vehicle, VehicleConfig

__all__ = [
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
