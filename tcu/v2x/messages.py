"""ETSI CAM and DENM: domain types in SI units and their UPER encoding.

The codec is asn1tools compiled (once, lazily, then cached) from the ETSI ASN.1 modules
shipped byte-identical in ``tcu/v2x/asn1/`` (BSD-3-Clause, see ``LICENSE-ETSI.txt`` and
``PROVENANCE.md`` there; a test compares them with the shared copies by hash).

Sending uses **release 1** (EN 302 637-2 v1.4.1 CAM, EN 302 637-3 v1.3.1 DENM, TS 102 894-2
v1.3.1 CDD, ``protocolVersion`` 1): it is what deployed C-ITS stations send and every
release 2 receiver must still accept it. Receiving accepts both releases: the first two
bytes of a UPER ``ItsPduHeader`` are ``protocolVersion`` and ``messageID`` (two
``INTEGER (0..255)``, 8 bits each, no preamble), so the release and the message type are
read before decoding; release 2 (TS 103 900 v2.3.1, TS 103 831 v2.3.1, TS 102 894-2 v2.4.1)
is compiled when first needed; the agent compiles both releases in a thread at start
(:meth:`tcu.agent.v2x.V2xTap.run`), so its event loop never compiles.

Units in the domain types: degrees (WGS84; heading clockwise from north), metres, m/s,
m/s², degrees per second (yaw rate positive to the left, as ETSI), ITS timestamps in
milliseconds (:func:`its_time_ms`). ``None`` means "unavailable" on the wire.

Every decoding problem raises :class:`~tcu.v2x.errors.V2xDecodeError` with a ``reason``:
``oversize``, ``empty``, ``version`` (protocolVersion not 1 or 2), ``unknown_type``
(messageID neither CAM nor DENM), ``malformed`` (UPER that does not decode), ``position``
(latitude/longitude unavailable or outside the globe), ``time`` (impossible timestamps),
``constraint`` (a value outside its ASN.1 range, e.g. a validity over 86400 s).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Final

import asn1tools

from tcu.v2x.errors import V2xDecodeError, V2xEncodeError

__all__ = [
    "ASN1_FILES",
    "CAUSE_ACCIDENT",
    "CAUSE_ADVERSE_WEATHER_ADHESION",
    "CAUSE_DANGEROUS_SITUATION",
    "CAUSE_HAZARDOUS_LOCATION_SURFACE",
    "CAUSE_ROADWORKS",
    "CAUSE_STATIONARY_VEHICLE",
    "EXTERIOR_LIGHTS",
    "HELD_HEADING_CONFIDENCE_DEG",
    "ITS_EPOCH_UNIX_MS",
    "ITS_LEAP_SECONDS",
    "MAX_PAYLOAD_BYTES",
    "MESSAGE_ID_CAM",
    "MESSAGE_ID_DENM",
    "RELEVANCE_DISTANCES_M",
    "RELEVANCE_TRAFFIC_DIRECTIONS",
    "SEND_PROTOCOL_VERSION",
    "SUB_CAUSE_EEBL",
    "ActionId",
    "Cam",
    "Denm",
    "StationPosition",
    "asn1_directory",
    "compile_release",
    "decode_any",
    "decode_cam",
    "decode_denm",
    "decode_raw",
    "encode_cam",
    "encode_denm",
    "is_compiled",
    "its_time_ms",
    "message_header",
    "relevance_distance_bucket",
    "unix_ns_from_its",
]

MAX_PAYLOAD_BYTES: Final = 4096
"""Larger payloads are refused before decoding (a CAM is about 50-300 bytes, a DENM under 1 KiB)."""

SEND_PROTOCOL_VERSION: Final = 1
MESSAGE_ID_DENM: Final = 1
MESSAGE_ID_CAM: Final = 2

# Cause codes (TS 102 894-2 CauseCodeType) used by the triggers and the CLI.
CAUSE_ACCIDENT: Final = 2
CAUSE_ROADWORKS: Final = 3
CAUSE_ADVERSE_WEATHER_ADHESION: Final = 6
CAUSE_HAZARDOUS_LOCATION_SURFACE: Final = 9
CAUSE_STATIONARY_VEHICLE: Final = 94
CAUSE_DANGEROUS_SITUATION: Final = 99
SUB_CAUSE_EEBL: Final = 1  # DangerousSituationSubCauseCode emergencyElectronicBrakeEngaged

ITS_EPOCH_UNIX_MS: Final = 1_072_915_200_000  # 2004-01-01T00:00:00Z
ITS_LEAP_SECONDS: Final = 5
"""TimestampIts counts TAI-like milliseconds since the ITS epoch: 5 leap seconds ahead of UTC
since 2017-01-01 (TS 102 894-2 v2.4.1, TimestampIts). No leap second has been announced since."""

# lessThan50m(0) ... lessThan10km(6), over10km(7): the upper bound of each bucket.
RELEVANCE_DISTANCES_M: Final = (50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0, 10000.0, math.inf)
_RELEVANCE_NAMES: Final = (
    "lessThan50m",
    "lessThan100m",
    "lessThan200m",
    "lessThan500m",
    "lessThan1000m",
    "lessThan5km",
    "lessThan10km",
    "over10km",
)
RELEVANCE_TRAFFIC_DIRECTIONS: Final = (
    "allTrafficDirections",
    "upstreamTraffic",
    "downstreamTraffic",
    "oppositeTraffic",
)
_R2_TRAFFIC_DIRECTIONS: Final = (
    "allTrafficDirections",
    "sameAsReferenceDirection-upstreamOfReferencePosition",
    "sameAsReferenceDirection-downstreamOfReferencePosition",
    "oppositeToReferenceDirection",
)
EXTERIOR_LIGHTS: Final = (
    "lowBeamHeadlightsOn",
    "highBeamHeadlightsOn",
    "leftTurnSignalOn",
    "rightTurnSignalOn",
    "daytimeRunningLightsOn",
    "reverseLightOn",
    "fogLightOn",
    "parkingLightsOn",
)
_VEHICLE_ROLES: Final = (
    "default",
    "publicTransport",
    "specialTransport",
    "dangerousGoods",
    "roadWork",
    "rescue",
    "emergency",
    "safetyCar",
    "agriculture",
    "commercial",
    "military",
    "roadOperator",
    "taxi",
    "reserved1",
    "reserved2",
    "reserved3",
)

ASN1_FILES: Final[Mapping[int, tuple[str, str, str]]] = {
    1: ("TS102894-2v131-CDD.asn", "EN302637-2v141-CAM.asn", "EN302637-3v131-DENM.asn"),
    2: ("TS102894-2v241-CDD.asn", "TS103900v231-CAM.asn", "TS103831v231-DENM.asn"),
}

# Unavailable markers on the wire.
_LAT_UNAVAILABLE: Final = 900_000_001
_LON_UNAVAILABLE: Final = 1_800_000_001
_ALT_UNAVAILABLE: Final = 800_001
_HEADING_UNAVAILABLE: Final = 3601
_SPEED_UNAVAILABLE: Final = 16383
_ACC_UNAVAILABLE: Final = 161
_YAW_UNAVAILABLE: Final = 32767
_LENGTH_UNAVAILABLE: Final = 1023
_WIDTH_UNAVAILABLE: Final = 62
_ITS_TIME_MAX: Final = 4_398_046_511_103
_ITS_TIME_FLOOR: Final = 189_302_400_000  # 2010-01-01 in ITS ms: earlier reference times are refused


def its_time_ms(unix_ns: int) -> int:
    """The TimestampIts (ms since 2004-01-01, leap seconds included) of a Unix time in ns."""
    return unix_ns // 1_000_000 - ITS_EPOCH_UNIX_MS + ITS_LEAP_SECONDS * 1000


def unix_ns_from_its(its_ms: int) -> int:
    """Inverse of :func:`its_time_ms` (ms resolution)."""
    return (its_ms + ITS_EPOCH_UNIX_MS - ITS_LEAP_SECONDS * 1000) * 1_000_000


def relevance_distance_bucket(distance_m: float) -> float:
    """The upper bound of the RelevanceDistance bucket that covers ``distance_m``."""
    for bound in RELEVANCE_DISTANCES_M:
        if distance_m <= bound:
            return bound
    return math.inf


@dataclass(frozen=True, slots=True)
class StationPosition:
    """A WGS84 position; ``altitude_m`` None when unavailable."""

    latitude_deg: float
    longitude_deg: float
    altitude_m: float | None = None


@dataclass(frozen=True, slots=True)
class ActionId:
    """A DENM's identity: the originating station and its sequence number (0..65535)."""

    station_id: int
    sequence_number: int


@dataclass(frozen=True, slots=True)
class Cam:
    """A cooperative awareness message (vehicle high-frequency container; optional low-frequency).

    ``generation_delta_time_ms`` is the generation TimestampIts modulo 65536 (what CAM carries).
    The low-frequency container is sent when ``vehicle_role`` is not None.
    """

    station_id: int
    station_type: int
    generation_delta_time_ms: int
    position: StationPosition
    heading_deg: float | None = None
    speed_mps: float | None = None
    drive_direction: str = "forward"
    length_m: float | None = None
    width_m: float | None = None
    longitudinal_acceleration_mps2: float | None = None
    yaw_rate_dps: float | None = None
    vehicle_role: str | None = None
    exterior_lights: frozenset[str] = field(default_factory=frozenset)
    heading_confidence_deg: float | None = None  # None: unavailable
    protocol_version: int = SEND_PROTOCOL_VERSION


@dataclass(frozen=True, slots=True)
class Denm:
    """A decentralized environmental notification.

    A DENM with ``termination`` ("isCancellation" by its originator, "isNegation" by another
    station) ends the event named by ``action_id``; it carries no situation or location.
    ``relevance_distance_m`` is the upper bound of the ETSI bucket (50, 100, 200, 500, 1000,
    5000, 10000 m or infinity); ``validity_s`` counts from ``detection_time_ms``.
    """

    station_id: int
    action_id: ActionId
    detection_time_ms: int
    reference_time_ms: int
    event_position: StationPosition
    station_type: int = 5
    termination: str | None = None
    relevance_distance_m: float | None = None
    relevance_traffic_direction: str | None = None
    validity_s: int = 600
    transmission_interval_ms: int | None = None
    cause_code: int | None = None
    sub_cause_code: int = 0
    information_quality: int = 0
    event_speed_mps: float | None = None
    event_heading_deg: float | None = None
    event_heading_confidence_deg: float | None = None  # None: unavailable
    protocol_version: int = SEND_PROTOCOL_VERSION

    @property
    def expires_at_ms(self) -> int:
        """ITS time at which the event stops being valid."""
        return self.detection_time_ms + self.validity_s * 1000


def asn1_directory() -> Path:
    """Where the shipped ETSI modules are (package data)."""
    return Path(str(resources.files("tcu.v2x") / "asn1"))


_specs: dict[int, Any] = {}
_compile_locks: dict[int, threading.Lock] = {release: threading.Lock() for release in ASN1_FILES}


def _compiled(release: int) -> Any:
    directory = asn1_directory()
    files = [str(directory / name) for name in ASN1_FILES[release]]
    return asn1tools.compile_files(files, "uper")


def compile_release(release: int) -> Any:
    """The asn1tools UPER specification of release 1 or 2 (compiled once per process).

    A compiled release is returned without taking a lock, and each release has its own lock:
    encoding release 1 never waits for a thread that compiles release 2.
    """
    spec = _specs.get(release)
    if spec is not None:
        return spec
    if release not in ASN1_FILES:
        raise V2xDecodeError(f"unsupported protocolVersion {release}", reason="version")
    with _compile_locks[release]:
        spec = _specs.get(release)
        if spec is None:
            spec = _specs[release] = _compiled(release)
    return spec


def is_compiled(release: int) -> bool:
    """Whether :func:`compile_release` of ``release`` returns at once."""
    return release in _specs


# ---------------------------------------------------------------- encoding


def _clamp(value: float, low: int, high: int) -> int:
    return max(low, min(high, round(value)))


def _check_range(value: int, low: int, high: int, what: str) -> int:
    if not low <= value <= high:
        raise V2xEncodeError(f"{what} {value} outside {low}..{high}", reason="range")
    return value


def _position_dict(position: StationPosition) -> dict[str, Any]:
    lat, lon = position.latitude_deg, position.longitude_deg
    if not (math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180):
        raise V2xEncodeError(f"impossible position {lat}, {lon}", reason="position")
    altitude = (
        _ALT_UNAVAILABLE
        if position.altitude_m is None or not math.isfinite(position.altitude_m)
        else _clamp(position.altitude_m * 100, -100_000, 800_000)
    )
    return {
        "latitude": _clamp(lat * 1e7, -900_000_000, 900_000_000),
        "longitude": _clamp(lon * 1e7, -1_800_000_000, 1_800_000_000),
        "positionConfidenceEllipse": {
            "semiMajorConfidence": 4095,
            "semiMinorConfidence": 4095,
            "semiMajorOrientation": _HEADING_UNAVAILABLE,
        },
        "altitude": {"altitudeValue": altitude, "altitudeConfidence": "unavailable"},
    }


def _heading(deg: float | None) -> int:
    if deg is None or not math.isfinite(deg):
        return _HEADING_UNAVAILABLE
    return round(deg * 10) % 3600


HELD_HEADING_CONFIDENCE_DEG: Final = 12.6
"""The heading confidence of a stopped vehicle's heading, kept from while it moved: ETSI's
``outOfRange`` (126, worse than 12.5°): the heading is the last reliable one, not a measurement."""
_HEADING_CONFIDENCE_UNAVAILABLE: Final = 127


def _heading_confidence(deg: float | None) -> int:
    """HeadingConfidence in 0.1° (1..125), 126 over 12.5°, 127 unavailable (None)."""
    if deg is None or not math.isfinite(deg) or deg < 0:
        return _HEADING_CONFIDENCE_UNAVAILABLE
    return _clamp(deg * 10, 1, 126)


def _heading_confidence_deg(value: int) -> float | None:
    return None if not 1 <= value <= 126 else value / 10


def _speed(mps: float | None) -> int:
    if mps is None or not math.isfinite(mps):
        return _SPEED_UNAVAILABLE
    return _clamp(abs(mps) * 100, 0, 16382)


def encode_cam(cam: Cam) -> bytes:
    """UPER bytes of ``cam`` (release 1)."""
    _check_range(cam.station_id, 0, 4_294_967_295, "station id")
    _check_range(cam.station_type, 0, 255, "station type")
    _check_range(cam.generation_delta_time_ms, 0, 65535, "generationDeltaTime")
    acc = cam.longitudinal_acceleration_mps2
    yaw = cam.yaw_rate_dps
    if cam.drive_direction not in ("forward", "backward", "unavailable"):
        raise V2xEncodeError(f"drive direction {cam.drive_direction!r}", reason="range")
    high = {
        "heading": {
            "headingValue": _heading(cam.heading_deg),
            "headingConfidence": _heading_confidence(cam.heading_confidence_deg),
        },
        "speed": {"speedValue": _speed(cam.speed_mps), "speedConfidence": 127},
        "driveDirection": cam.drive_direction,
        "vehicleLength": {
            "vehicleLengthValue": _LENGTH_UNAVAILABLE
            if cam.length_m is None
            else _clamp(cam.length_m * 10, 1, 1022),
            "vehicleLengthConfidenceIndication": "unavailable",
        },
        "vehicleWidth": _WIDTH_UNAVAILABLE if cam.width_m is None else _clamp(cam.width_m * 10, 1, 61),
        "longitudinalAcceleration": {
            "longitudinalAccelerationValue": _ACC_UNAVAILABLE
            if acc is None or not math.isfinite(acc)
            else _clamp(acc * 10, -160, 160),
            "longitudinalAccelerationConfidence": 102,
        },
        "curvature": {"curvatureValue": 1023, "curvatureConfidence": "unavailable"},
        "curvatureCalculationMode": "yawRateUsed" if yaw is not None else "unavailable",
        "yawRate": {
            "yawRateValue": _YAW_UNAVAILABLE
            if yaw is None or not math.isfinite(yaw)
            else _clamp(yaw * 100, -32766, 32766),
            "yawRateConfidence": "unavailable",
        },
    }
    parameters: dict[str, Any] = {
        "basicContainer": {
            "stationType": cam.station_type,
            "referencePosition": _position_dict(cam.position),
        },
        "highFrequencyContainer": ("basicVehicleContainerHighFrequency", high),
    }
    if cam.vehicle_role is not None:
        if cam.vehicle_role not in _VEHICLE_ROLES:
            raise V2xEncodeError(f"vehicle role {cam.vehicle_role!r}", reason="range")
        unknown = cam.exterior_lights - set(EXTERIOR_LIGHTS)
        if unknown:
            raise V2xEncodeError(f"exterior lights {sorted(unknown)}", reason="range")
        bits = 0
        for i, name in enumerate(EXTERIOR_LIGHTS):
            if name in cam.exterior_lights:
                bits |= 0x80 >> i
        parameters["lowFrequencyContainer"] = (
            "basicVehicleContainerLowFrequency",
            {"vehicleRole": cam.vehicle_role, "exteriorLights": (bytes([bits]), 8), "pathHistory": []},
        )
    message = {
        "header": {
            "protocolVersion": SEND_PROTOCOL_VERSION,
            "messageID": MESSAGE_ID_CAM,
            "stationID": cam.station_id,
        },
        "cam": {"generationDeltaTime": cam.generation_delta_time_ms, "camParameters": parameters},
    }
    return _encode("CAM", message)


def encode_denm(denm: Denm) -> bytes:
    """UPER bytes of ``denm`` (release 1). A termination carries only the management container."""
    _check_range(denm.station_id, 0, 4_294_967_295, "station id")
    _check_range(denm.action_id.station_id, 0, 4_294_967_295, "originating station id")
    _check_range(denm.action_id.sequence_number, 0, 65535, "sequence number")
    _check_range(denm.detection_time_ms, 0, _ITS_TIME_MAX, "detectionTime")
    _check_range(denm.reference_time_ms, 0, _ITS_TIME_MAX, "referenceTime")
    _check_range(denm.validity_s, 0, 86400, "validityDuration")
    _check_range(denm.station_type, 0, 255, "station type")
    management: dict[str, Any] = {
        "actionID": {
            "originatingStationID": denm.action_id.station_id,
            "sequenceNumber": denm.action_id.sequence_number,
        },
        "detectionTime": denm.detection_time_ms,
        "referenceTime": denm.reference_time_ms,
        "eventPosition": _position_dict(denm.event_position),
        "validityDuration": denm.validity_s,
        "stationType": denm.station_type,
    }
    if denm.termination is not None:
        if denm.termination not in ("isCancellation", "isNegation"):
            raise V2xEncodeError(f"termination {denm.termination!r}", reason="range")
        management["termination"] = denm.termination
    if denm.relevance_distance_m is not None:
        bound = relevance_distance_bucket(denm.relevance_distance_m)
        management["relevanceDistance"] = _RELEVANCE_NAMES[RELEVANCE_DISTANCES_M.index(bound)]
    if denm.relevance_traffic_direction is not None:
        if denm.relevance_traffic_direction not in RELEVANCE_TRAFFIC_DIRECTIONS:
            raise V2xEncodeError(f"traffic direction {denm.relevance_traffic_direction!r}", reason="range")
        management["relevanceTrafficDirection"] = denm.relevance_traffic_direction
    if denm.transmission_interval_ms is not None:
        management["transmissionInterval"] = _check_range(
            denm.transmission_interval_ms, 1, 10000, "transmissionInterval"
        )
    body: dict[str, Any] = {"management": management}
    if denm.termination is None:
        if denm.cause_code is None:
            raise V2xEncodeError("a DENM that is not a termination needs a cause code", reason="range")
        body["situation"] = {
            "informationQuality": _check_range(denm.information_quality, 0, 7, "informationQuality"),
            "eventType": {
                "causeCode": _check_range(denm.cause_code, 0, 255, "causeCode"),
                "subCauseCode": _check_range(denm.sub_cause_code, 0, 255, "subCauseCode"),
            },
        }
        location: dict[str, Any] = {"traces": [[]]}
        if denm.event_speed_mps is not None:
            location["eventSpeed"] = {"speedValue": _speed(denm.event_speed_mps), "speedConfidence": 127}
        if denm.event_heading_deg is not None:
            location["eventPositionHeading"] = {
                "headingValue": _heading(denm.event_heading_deg),
                "headingConfidence": _heading_confidence(denm.event_heading_confidence_deg),
            }
        body["location"] = location
    message = {
        "header": {
            "protocolVersion": SEND_PROTOCOL_VERSION,
            "messageID": MESSAGE_ID_DENM,
            "stationID": denm.station_id,
        },
        "denm": body,
    }
    return _encode("DENM", message)


def _encode(type_name: str, message: dict[str, Any]) -> bytes:
    try:
        data: bytes = compile_release(SEND_PROTOCOL_VERSION).encode(type_name, message)
    except asn1tools.Error as exc:
        raise V2xEncodeError(f"cannot encode {type_name}: {exc}", reason="range") from exc
    return data


# ---------------------------------------------------------------- decoding


def message_header(payload: bytes) -> tuple[int, int]:
    """``(protocolVersion, messageID)`` from the first two bytes; refuses oversize and short payloads."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise V2xDecodeError(
            f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}", reason="oversize"
        )
    if len(payload) < 6:  # the header alone is 6 bytes
        raise V2xDecodeError(f"payload of {len(payload)} bytes is too short for an ITS PDU", reason="empty")
    return payload[0], payload[1]


# asn1tools raises more than its own errors on hostile bytes (NotImplementedError for an
# extension bitmap "normally small length" over 64, found by tools/fuzz/fuzz_v2x.py).
_DECODE_ERRORS = (
    asn1tools.Error,
    ValueError,
    IndexError,
    KeyError,
    TypeError,
    OverflowError,
    AttributeError,
    NotImplementedError,
    RecursionError,
)


def _decode(payload: bytes, expected: int | None) -> tuple[int, int, dict[str, Any]]:
    version, message_id = message_header(payload)
    if version not in ASN1_FILES:
        raise V2xDecodeError(f"unsupported protocolVersion {version}", reason="version")
    if message_id not in (MESSAGE_ID_CAM, MESSAGE_ID_DENM):
        raise V2xDecodeError(f"unknown messageID {message_id}", reason="unknown_type")
    if expected is not None and message_id != expected:
        want = "CAM" if expected == MESSAGE_ID_CAM else "DENM"
        raise V2xDecodeError(f"messageID {message_id} is not a {want}", reason="unknown_type")
    type_name = "CAM" if message_id == MESSAGE_ID_CAM else "DENM"
    spec = compile_release(version)
    try:
        # asn1tools' UPER decoder does not check value ranges by itself (a validityDuration of
        # 114752 decoded; found by tools/fuzz/fuzz_v2x.py): check the ASN.1 constraints.
        decoded = spec.decode(type_name, payload, check_constraints=True)
    except asn1tools.ConstraintsError as exc:
        raise V2xDecodeError(
            f"{type_name} (release {version}) has a value outside its ASN.1 range: {exc}", reason="constraint"
        ) from exc
    except _DECODE_ERRORS as exc:  # untrusted bytes: asn1tools raises more than its own errors
        raise V2xDecodeError(f"malformed {type_name} (release {version}): {exc}", reason="malformed") from exc
    if not isinstance(decoded, dict):
        raise V2xDecodeError(f"malformed {type_name}", reason="malformed")
    return version, message_id, decoded


def _pick(mapping: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        if name in mapping:
            return mapping[name]
    raise KeyError(names[0])


def _decoded_position(ref: Mapping[str, Any], what: str) -> StationPosition:
    lat, lon = int(ref["latitude"]), int(ref["longitude"])
    if lat == _LAT_UNAVAILABLE or lon == _LON_UNAVAILABLE:
        raise V2xDecodeError(f"{what} is unavailable", reason="position")
    if not (-900_000_000 <= lat <= 900_000_000 and -1_800_000_000 <= lon <= 1_800_000_000):
        raise V2xDecodeError(f"{what} {lat / 1e7}, {lon / 1e7} is outside the globe", reason="position")
    altitude = int(ref["altitude"]["altitudeValue"])
    return StationPosition(
        latitude_deg=lat / 1e7,
        longitude_deg=lon / 1e7,
        altitude_m=None if altitude == _ALT_UNAVAILABLE else altitude / 100,
    )


def _heading_deg(value: int) -> float | None:
    if not 0 <= value <= 3600:
        return None
    return (value % 3600) / 10


def _speed_mps(value: int) -> float | None:
    return None if value == _SPEED_UNAVAILABLE or not 0 <= value < _SPEED_UNAVAILABLE else value / 100


def _decode_cam_body(version: int, decoded: Mapping[str, Any]) -> Cam:
    header = decoded["header"]
    body = decoded["cam"]
    params = body["camParameters"]
    basic = params["basicContainer"]
    kind, high = params["highFrequencyContainer"]
    station_id = int(_pick(header, "stationID", "stationId"))
    position = _decoded_position(basic["referencePosition"], "CAM reference position")
    cam_kwargs: dict[str, Any] = {}
    if kind == "basicVehicleContainerHighFrequency":
        acc = high["longitudinalAcceleration"]
        acc_value = int(_pick(acc, "longitudinalAccelerationValue", "value"))
        yaw = int(high["yawRate"]["yawRateValue"])
        length = int(high["vehicleLength"]["vehicleLengthValue"])
        width = int(high["vehicleWidth"])
        cam_kwargs = {
            "heading_deg": _heading_deg(int(high["heading"]["headingValue"])),
            "heading_confidence_deg": _heading_confidence_deg(int(high["heading"]["headingConfidence"])),
            "speed_mps": _speed_mps(int(high["speed"]["speedValue"])),
            "drive_direction": str(high["driveDirection"]),
            "length_m": None if length >= _LENGTH_UNAVAILABLE else length / 10,
            "width_m": None if width >= _WIDTH_UNAVAILABLE else width / 10,
            "longitudinal_acceleration_mps2": None if acc_value >= _ACC_UNAVAILABLE else acc_value / 10,
            "yaw_rate_dps": None if yaw >= _YAW_UNAVAILABLE else yaw / 100,
        }
    low = params.get("lowFrequencyContainer")
    if low is not None and low[0] == "basicVehicleContainerLowFrequency":
        bits, _n = low[1]["exteriorLights"]
        first = bits[0] if bits else 0
        cam_kwargs["vehicle_role"] = str(low[1]["vehicleRole"])
        cam_kwargs["exterior_lights"] = frozenset(
            name for i, name in enumerate(EXTERIOR_LIGHTS) if first & (0x80 >> i)
        )
    return Cam(
        station_id=station_id,
        station_type=int(basic["stationType"]),
        generation_delta_time_ms=int(body["generationDeltaTime"]),
        position=position,
        protocol_version=version,
        **cam_kwargs,
    )


def _cause_from_choice(event_type: Mapping[str, Any]) -> tuple[int, int]:
    if "causeCode" in event_type:
        return int(event_type["causeCode"]), int(event_type["subCauseCode"])
    name, sub = event_type["ccAndScc"]  # release 2: CHOICE alternatives end with the cause code number
    digits = ""
    for char in reversed(str(name)):
        if not char.isdigit():
            break
        digits = char + digits
    if not digits:
        raise V2xDecodeError(f"cause code alternative {name!r} has no number", reason="malformed")
    return int(digits), int(sub) if isinstance(sub, int) else 0


def _decode_denm_body(version: int, decoded: Mapping[str, Any]) -> Denm:
    header = decoded["header"]
    body = decoded["denm"]
    management = body["management"]
    action = _pick(management, "actionID", "actionId")
    detection = int(management["detectionTime"])
    reference = int(management["referenceTime"])
    if reference < detection:
        raise V2xDecodeError(
            f"DENM referenceTime {reference} is before its detectionTime {detection}", reason="time"
        )
    if reference < _ITS_TIME_FLOOR:
        raise V2xDecodeError(f"DENM referenceTime {reference} is before 2010", reason="time")
    distance_name = management.get("relevanceDistance", management.get("awarenessDistance"))
    direction = management.get("relevanceTrafficDirection", management.get("trafficDirection"))
    if direction is not None and direction in _R2_TRAFFIC_DIRECTIONS:
        direction = RELEVANCE_TRAFFIC_DIRECTIONS[_R2_TRAFFIC_DIRECTIONS.index(direction)]
    kwargs: dict[str, Any] = {}
    termination = management.get("termination")
    # A termination ends the event: only its management counts. (Release 1 allows a situation
    # beside it, release 2 does not; found by tools/fuzz/fuzz_v2x.py.)
    situation = body.get("situation") if termination is None else None
    if situation is not None:
        cause, sub = _cause_from_choice(situation["eventType"])
        kwargs.update(
            cause_code=cause, sub_cause_code=sub, information_quality=int(situation["informationQuality"])
        )
    location = body.get("location") if termination is None else None
    if location is not None:
        speed = location.get("eventSpeed")
        if speed is not None:
            kwargs["event_speed_mps"] = _speed_mps(int(speed["speedValue"]))
        heading = location.get("eventPositionHeading")
        if heading is not None:
            kwargs["event_heading_deg"] = _heading_deg(int(_pick(heading, "headingValue", "value")))
            kwargs["event_heading_confidence_deg"] = _heading_confidence_deg(
                int(_pick(heading, "headingConfidence", "confidence"))
            )
    if termination is None and situation is None:
        raise V2xDecodeError("DENM without a situation that is not a termination", reason="malformed")
    interval = management.get("transmissionInterval")
    return Denm(
        station_id=int(_pick(header, "stationID", "stationId")),
        action_id=ActionId(
            int(_pick(action, "originatingStationID", "originatingStationId")), int(action["sequenceNumber"])
        ),
        detection_time_ms=detection,
        reference_time_ms=reference,
        event_position=_decoded_position(management["eventPosition"], "DENM event position"),
        station_type=int(management["stationType"]),
        termination=None if termination is None else str(termination),
        relevance_distance_m=None
        if distance_name is None
        else RELEVANCE_DISTANCES_M[_RELEVANCE_NAMES.index(str(distance_name))],
        relevance_traffic_direction=None if direction is None else str(direction),
        validity_s=int(management.get("validityDuration", 600)),
        transmission_interval_ms=None if interval is None else int(interval),
        protocol_version=version,
        **kwargs,
    )


def _convert(version: int, message_id: int, decoded: Mapping[str, Any]) -> Cam | Denm:
    try:
        if message_id == MESSAGE_ID_CAM:
            return _decode_cam_body(version, decoded)
        return _decode_denm_body(version, decoded)
    except V2xDecodeError:
        raise
    except _DECODE_ERRORS as exc:
        raise V2xDecodeError(f"malformed message content: {exc!r}", reason="malformed") from exc


def decode_any(payload: bytes) -> Cam | Denm:
    """Decode a CAM or DENM of release 1 or 2; raises V2xDecodeError (with ``reason``)."""
    version, message_id, decoded = _decode(bytes(payload), None)
    return _convert(version, message_id, decoded)


def decode_cam(payload: bytes) -> Cam:
    """Decode a CAM (release 1 or 2)."""
    version, message_id, decoded = _decode(bytes(payload), MESSAGE_ID_CAM)
    result = _convert(version, message_id, decoded)
    assert isinstance(result, Cam)
    return result


def decode_denm(payload: bytes) -> Denm:
    """Decode a DENM (release 1 or 2)."""
    version, message_id, decoded = _decode(bytes(payload), MESSAGE_ID_DENM)
    result = _convert(version, message_id, decoded)
    assert isinstance(result, Denm)
    return result


def decode_raw(payload: bytes) -> tuple[int, str, dict[str, Any]]:
    """``(protocolVersion, "CAM"|"DENM", asn1tools dict)``: the full decoded tree, for ``tcu v2x decode``."""
    version, message_id, decoded = _decode(bytes(payload), None)
    return version, "CAM" if message_id == MESSAGE_ID_CAM else "DENM", decoded
