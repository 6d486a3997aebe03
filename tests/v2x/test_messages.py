"""CAM and DENM codec: round trips, checked by an independent asn1tools compile of the shared ETSI files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import asn1tools
import pytest

from tcu.v2x import messages
from tcu.v2x.errors import V2xDecodeError, V2xEncodeError
from tcu.v2x.messages import (
    ActionId,
    Cam,
    Denm,
    StationPosition,
    decode_any,
    decode_cam,
    decode_denm,
    decode_raw,
    encode_cam,
    encode_denm,
    its_time_ms,
    unix_ns_from_its,
)

SHARED = Path(os.environ["TCU_SHARED_DATA"]) / "v2x"
NOW_MS = its_time_ms(1_780_000_000_000_000_000)


def _shared_spec(release: int) -> Any:
    return asn1tools.compile_files([str(SHARED / f) for f in messages.ASN1_FILES[release]], "uper")


@pytest.fixture(scope="module")
def shared_r1() -> Any:
    return _shared_spec(1)


def _cam(**kw: Any) -> Cam:
    base: dict[str, Any] = {
        "station_id": 4242,
        "station_type": 5,
        "generation_delta_time_ms": NOW_MS % 65536,
        "position": StationPosition(48.7758, 9.1829, 245.5),
        "heading_deg": 87.3,
        "speed_mps": 13.89,
        "length_m": 4.7,
        "width_m": 1.8,
        "longitudinal_acceleration_mps2": -6.5,
        "yaw_rate_dps": 1.25,
        "vehicle_role": "default",
        "exterior_lights": frozenset({"lowBeamHeadlightsOn", "leftTurnSignalOn", "rightTurnSignalOn"}),
    }
    base.update(kw)
    return Cam(**base)


def _denm(**kw: Any) -> Denm:
    base: dict[str, Any] = {
        "station_id": 4242,
        "action_id": ActionId(4242, 7),
        "detection_time_ms": NOW_MS,
        "reference_time_ms": NOW_MS + 20,
        "event_position": StationPosition(48.7758, 9.1829),
        "relevance_distance_m": 500.0,
        "relevance_traffic_direction": "upstreamTraffic",
        "validity_s": 20,
        "transmission_interval_ms": 1000,
        "cause_code": 99,
        "sub_cause_code": 1,
        "information_quality": 3,
        "event_speed_mps": 12.5,
        "event_heading_deg": 87.3,
    }
    base.update(kw)
    return Denm(**base)


def test_shipped_asn1_files_are_byte_identical_to_the_shared_etsi_files() -> None:
    shipped = messages.asn1_directory()
    names = sorted(p.name for p in SHARED.iterdir() if p.suffix == ".asn")
    assert names == sorted(f for files in messages.ASN1_FILES.values() for f in files)
    for name in [*names, "LICENSE-ETSI.txt"]:
        assert (
            hashlib.sha256((shipped / name).read_bytes()).hexdigest()
            == hashlib.sha256((SHARED / name).read_bytes()).hexdigest()
        ), name


def test_cam_round_trip_and_independent_decode(shared_r1: Any) -> None:
    cam = _cam()
    payload = encode_cam(cam)
    assert payload[:2] == b"\x01\x02"  # protocolVersion 1, messageID cam
    back = decode_cam(payload)
    assert back.station_id == 4242 and back.protocol_version == 1
    assert back.position.latitude_deg == pytest.approx(48.7758, abs=1e-7)
    assert back.position.altitude_m == pytest.approx(245.5)
    assert back.heading_deg == pytest.approx(87.3)
    assert back.speed_mps == pytest.approx(13.89)
    assert back.longitudinal_acceleration_mps2 == pytest.approx(-6.5)
    assert back.yaw_rate_dps == pytest.approx(1.25)
    assert (back.length_m, back.width_m) == (pytest.approx(4.7), pytest.approx(1.8))
    assert back.exterior_lights == cam.exterior_lights and back.vehicle_role == "default"
    raw = shared_r1.decode("CAM", payload)  # the untouched ETSI modules, compiled here
    assert raw["header"] == {"protocolVersion": 1, "messageID": 2, "stationID": 4242}
    high = raw["cam"]["camParameters"]["highFrequencyContainer"][1]
    assert high["speed"]["speedValue"] == 1389 and high["heading"]["headingValue"] == 873
    assert raw["cam"]["camParameters"]["basicContainer"]["referencePosition"]["latitude"] == 487758000


def test_cam_without_low_frequency_and_unavailable_values() -> None:
    back = decode_cam(
        encode_cam(_cam(vehicle_role=None, heading_deg=None, speed_mps=None, yaw_rate_dps=None))
    )
    assert back.vehicle_role is None and back.exterior_lights == frozenset()
    assert back.heading_deg is None and back.speed_mps is None and back.yaw_rate_dps is None


def test_denm_round_trip_and_independent_decode(shared_r1: Any) -> None:
    denm = _denm()
    payload = encode_denm(denm)
    back = decode_denm(payload)
    assert back == denm
    raw = shared_r1.decode("DENM", payload)
    management = raw["denm"]["management"]
    assert management["actionID"] == {"originatingStationID": 4242, "sequenceNumber": 7}
    assert management["relevanceDistance"] == "lessThan500m" and management["validityDuration"] == 20
    assert raw["denm"]["situation"]["eventType"] == {"causeCode": 99, "subCauseCode": 1}
    assert decode_any(payload) == denm


def test_denm_cancellation_carries_only_management(shared_r1: Any) -> None:
    cancel = _denm(
        termination="isCancellation", cause_code=None, event_speed_mps=None, event_heading_deg=None
    )
    payload = encode_denm(cancel)
    raw = shared_r1.decode("DENM", payload)
    assert raw["denm"]["management"]["termination"] == "isCancellation"
    assert "situation" not in raw["denm"] and "location" not in raw["denm"]
    back = decode_denm(payload)
    assert back.termination == "isCancellation" and back.cause_code is None


def test_release_2_messages_are_accepted() -> None:
    r2 = _shared_spec(2)
    pos = {
        "latitude": 487758000,
        "longitude": 91829000,
        "positionConfidenceEllipse": {
            "semiMajorAxisLength": 4095,
            "semiMinorAxisLength": 4095,
            "semiMajorAxisOrientation": 3601,
        },
        "altitude": {"altitudeValue": 800001, "altitudeConfidence": "unavailable"},
    }
    ref_pos = {
        **pos,
        "positionConfidenceEllipse": {
            "semiMajorConfidence": 4095,
            "semiMinorConfidence": 4095,
            "semiMajorOrientation": 3601,
        },
    }
    denm = {
        "header": {"protocolVersion": 2, "messageId": 1, "stationId": 77},
        "denm": {
            "management": {
                "actionId": {"originatingStationId": 77, "sequenceNumber": 3},
                "detectionTime": NOW_MS,
                "referenceTime": NOW_MS,
                "eventPosition": ref_pos,
                "awarenessDistance": "lessThan1000m",
                "trafficDirection": "sameAsReferenceDirection-upstreamOfReferencePosition",
                "validityDuration": 300,
                "stationType": 15,
            },
            "situation": {"informationQuality": 4, "eventType": {"ccAndScc": ("roadworks3", 0)}},
            "location": {
                "eventPositionHeading": {"value": 900, "confidence": 127},
                "detectionZonesToEventPosition": [[]],
            },
        },
    }
    payload = r2.encode("DENM", denm)
    back = decode_any(payload)
    assert isinstance(back, Denm) and back.protocol_version == 2
    assert (back.cause_code, back.action_id, back.validity_s) == (3, ActionId(77, 3), 300)
    assert back.relevance_distance_m == 1000.0 and back.relevance_traffic_direction == "upstreamTraffic"
    assert back.event_heading_deg == 90.0
    cam = r2.encode(
        "CAM",
        {
            "header": {"protocolVersion": 2, "messageId": 2, "stationId": 78},
            "cam": {
                "generationDeltaTime": 5,
                "camParameters": {
                    "basicContainer": {"stationType": 5, "referencePosition": pos},
                    "highFrequencyContainer": (
                        "basicVehicleContainerHighFrequency",
                        {
                            "heading": {"headingValue": 1800, "headingConfidence": 127},
                            "speed": {"speedValue": 500, "speedConfidence": 127},
                            "driveDirection": "forward",
                            "vehicleLength": {
                                "vehicleLengthValue": 45,
                                "vehicleLengthConfidenceIndication": "unavailable",
                            },
                            "vehicleWidth": 18,
                            "longitudinalAcceleration": {"value": -20, "confidence": 102},
                            "curvature": {"curvatureValue": 1023, "curvatureConfidence": "unavailable"},
                            "curvatureCalculationMode": "unavailable",
                            "yawRate": {"yawRateValue": 32767, "yawRateConfidence": "unavailable"},
                        },
                    ),
                },
            },
        },
    )
    back_cam = decode_any(cam)
    assert isinstance(back_cam, Cam) and back_cam.protocol_version == 2
    assert back_cam.heading_deg == 180.0 and back_cam.longitudinal_acceleration_mps2 == -2.0


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "empty"),
        (b"\x01\x02\x00", "empty"),
        (b"\x01\x02" + b"\x00" * 5000, "oversize"),
        (b"\x03\x02" + b"\x00" * 40, "version"),
        (b"\x01\x07" + b"\x00" * 40, "unknown_type"),
        (b"\x01\x02\x00\x00\x00\x2a\xff", "malformed"),
        (b"\x01\x01\x00\x00\x00\x2a", "malformed"),
    ],
)
def test_bad_payloads_are_refused_with_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(V2xDecodeError) as info:
        decode_any(payload)
    assert info.value.reason == reason


def test_impossible_positions_and_times_are_refused(shared_r1: Any) -> None:
    raw = shared_r1.decode("DENM", encode_denm(_denm()))
    raw["denm"]["management"]["eventPosition"]["latitude"] = 900000001
    with pytest.raises(V2xDecodeError) as info:
        decode_denm(shared_r1.encode("DENM", raw))
    assert info.value.reason == "position"
    raw = shared_r1.decode("DENM", encode_denm(_denm()))
    raw["denm"]["management"]["referenceTime"] = NOW_MS - 1000  # before its detection
    with pytest.raises(V2xDecodeError) as info:
        decode_denm(shared_r1.encode("DENM", raw))
    assert info.value.reason == "time"
    with pytest.raises(V2xDecodeError) as info:
        decode_denm(encode_denm(_denm(detection_time_ms=1000, reference_time_ms=1000)))
    assert info.value.reason == "time"
    with pytest.raises(V2xDecodeError) as info:
        decode_cam(encode_denm(_denm()))
    assert info.value.reason == "unknown_type"


def test_encoder_refuses_values_it_cannot_carry() -> None:
    with pytest.raises(V2xEncodeError):
        encode_cam(_cam(position=StationPosition(91.0, 0.0)))
    with pytest.raises(V2xEncodeError):
        encode_denm(_denm(cause_code=None))
    with pytest.raises(V2xEncodeError):
        encode_denm(_denm(action_id=ActionId(1, 70000)))


def test_its_time_counts_leap_seconds() -> None:
    # TS 102 894-2 v2.4.1 example: 2007-01-01T00:00:00Z is 94 694 401 000 (one leap second then);
    # since 2017 the offset is 5 s.
    unix_2020 = 1_577_836_800_000_000_000
    assert its_time_ms(unix_2020) == (1_577_836_800_000 - 1_072_915_200_000) + 5000
    assert unix_ns_from_its(its_time_ms(unix_2020)) == unix_2020


def test_decode_raw_gives_the_full_tree() -> None:
    version, kind, tree = decode_raw(encode_cam(_cam()))
    assert (version, kind) == (1, "CAM") and tree["header"]["stationID"] == 4242
