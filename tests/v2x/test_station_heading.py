"""A stopped vehicle keeps the last heading it had while moving, flagged by its confidence."""

from __future__ import annotations

from tcu.v2x.client import V2xClient, V2xClientConfig
from tcu.v2x.denm import DenmTrigger
from tcu.v2x.messages import HELD_HEADING_CONFIDENCE_DEG, decode_cam, decode_denm, encode_cam, encode_denm
from tcu.v2x.station import StationSettings, V2xStation, VehicleState

LAT, LON = 49.15, 6.17
S = 1_000_000_000
T0 = 1_780_000_000 * S


def _station() -> V2xStation:
    client = V2xClient(V2xClientConfig(host="127.0.0.1", port=1, client_id="t"))
    return V2xStation(
        StationSettings(
            station_id=7,
            triggers=(DenmTrigger("stopped", 94, validity_s=60, update_interval_ns=20 * S),),
            standstill_mps=0.5,
        ),
        client,
    )


def test_a_stopped_vehicle_sends_its_last_moving_heading_flagged() -> None:
    station = _station()
    station.update(VehicleState(T0, LAT, LON, 355.0, 20.0), {})
    # Standing: the GNSS course is noise (123°); the station keeps 355° with the held confidence.
    out = station.update(VehicleState(T0 + S, LAT, LON, 123.0, 0.0), {"stopped": True})
    assert [o.kind for o in out] == ["new"]
    denm = out[0].denm
    assert denm.event_heading_deg == 355.0
    assert denm.event_heading_confidence_deg == HELD_HEADING_CONFIDENCE_DEG
    back = decode_denm(encode_denm(denm))
    assert back.event_heading_deg is not None and abs(back.event_heading_deg - 355.0) < 0.1
    assert back.event_heading_confidence_deg == HELD_HEADING_CONFIDENCE_DEG
    own = station.own_state()
    assert own is not None and own.heading_deg == 355.0
    assert station.state is not None
    # The CAM of the stopped vehicle too.
    assert station.client.queued >= 1


def test_a_vehicle_that_never_moved_has_no_heading_and_a_moving_one_no_confidence() -> None:
    station = _station()
    out = station.update(VehicleState(T0, LAT, LON, 123.0, 0.0), {"stopped": True})
    assert out[0].denm.event_heading_deg is None
    moving = _station()
    out = moving.update(VehicleState(T0, LAT, LON, 10.0, 20.0), {"stopped": True})
    assert out[0].denm.event_heading_deg == 10.0 and out[0].denm.event_heading_confidence_deg is None


def test_cam_heading_confidence_round_trip() -> None:
    from tcu.v2x.messages import Cam, StationPosition

    cam = Cam(
        station_id=7,
        station_type=5,
        generation_delta_time_ms=1,
        position=StationPosition(LAT, LON),
        heading_deg=355.0,
        heading_confidence_deg=HELD_HEADING_CONFIDENCE_DEG,
    )
    assert decode_cam(encode_cam(cam)).heading_confidence_deg == HELD_HEADING_CONFIDENCE_DEG
