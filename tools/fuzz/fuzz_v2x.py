"""Fuzz target ``v2x``: the CAM/DENM UPER decoder (:mod:`tcu.v2x.messages`), the topic parser
(:mod:`tcu.v2x.tiles`) and the receiver's handling of what decodes (:mod:`tcu.v2x.receive`).

Each input goes to :func:`~tcu.v2x.messages.decode_any` (both ETSI releases), to
``parse_topic`` (as Latin-1 text) and, when it decodes to a DENM, through a
:class:`~tcu.v2x.receive.DenmReceiver`. Contract: only
:class:`~tcu.v2x.errors.V2xDecodeError` (decoder) and :class:`~tcu.v2x.errors.V2xTopicError`
(topics) escape; a decoded message re-encodes (release 1) to bytes that decode to the same
value (apart from ``protocol_version`` for a release-2 input); the receiver raises nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
from functools import cache
from typing import Any

from tcu.v2x.errors import V2xDecodeError, V2xEncodeError, V2xTopicError
from tcu.v2x.messages import (
    ActionId,
    Cam,
    Denm,
    StationPosition,
    compile_release,
    decode_any,
    encode_cam,
    encode_denm,
)
from tcu.v2x.receive import DenmReceiver, OwnState, ReceiverConfig
from tcu.v2x.tiles import parse_topic

__all__ = ["NAME", "one_input", "seeds"]

NAME = "v2x"
_NOW_MS = 700_000_000_000  # 2026 in ITS time


def _r2_seeds() -> list[bytes]:
    spec = compile_release(2)
    pos = {
        "latitude": 487758000,
        "longitude": 91829000,
        "positionConfidenceEllipse": {
            "semiMajorConfidence": 4095,
            "semiMinorConfidence": 4095,
            "semiMajorOrientation": 3601,
        },
        "altitude": {"altitudeValue": 800001, "altitudeConfidence": "unavailable"},
    }
    denm = {
        "header": {"protocolVersion": 2, "messageId": 1, "stationId": 77},
        "denm": {
            "management": {
                "actionId": {"originatingStationId": 77, "sequenceNumber": 3},
                "detectionTime": _NOW_MS,
                "referenceTime": _NOW_MS,
                "eventPosition": pos,
                "awarenessDistance": "lessThan1000m",
                "trafficDirection": "allTrafficDirections",
                "validityDuration": 300,
                "stationType": 15,
            },
            "situation": {"informationQuality": 4, "eventType": {"ccAndScc": ("roadworks3", 0)}},
            "location": {"detectionZonesToEventPosition": [[]]},
        },
    }
    return [bytes(spec.encode("DENM", denm))]


@cache
def seeds() -> list[bytes]:
    """CAMs and DENMs (new, with every optional field, cancellation) of release 1, a release-2 DENM."""
    here = StationPosition(48.7758, 9.1829, 245.5)
    cams = [
        Cam(4242, 5, 1234, here),
        Cam(
            4242,
            5,
            1234,
            here,
            87.3,
            13.9,
            "forward",
            4.7,
            1.8,
            -6.5,
            1.25,
            "default",
            frozenset({"lowBeamHeadlightsOn", "leftTurnSignalOn"}),
        ),
    ]
    base = Denm(4242, ActionId(4242, 7), _NOW_MS, _NOW_MS + 20, here, cause_code=99, sub_cause_code=1)
    denms = [
        base,
        dataclasses.replace(
            base,
            relevance_distance_m=500.0,
            relevance_traffic_direction="upstreamTraffic",
            transmission_interval_ms=1000,
            event_speed_mps=12.5,
            event_heading_deg=87.3,
        ),
        dataclasses.replace(base, termination="isCancellation", cause_code=None),
    ]
    return [*(encode_cam(c) for c in cams), *(encode_denm(d) for d in denms), *_r2_seeds()]


def _normal(value: Any) -> Any:
    return dataclasses.replace(value, protocol_version=1)


def one_input(data: bytes) -> None:
    with contextlib.suppress(V2xTopicError):
        parse_topic("v2x", data.decode("latin-1"))
    try:
        message = decode_any(data)
    except V2xDecodeError:
        return
    try:
        again = decode_any(encode_cam(message) if isinstance(message, Cam) else encode_denm(message))
    except (V2xEncodeError, V2xDecodeError) as exc:
        raise AssertionError(f"{data.hex()} decodes to {message!r}, which does not re-encode: {exc}") from exc
    if _normal(again) != _normal(message):
        raise AssertionError(f"{data.hex()} decodes to {message!r}, re-encoded decodes to {again!r}")
    if isinstance(message, Denm):
        receiver = DenmReceiver(ReceiverConfig(own_station_id=1))
        own = OwnState(message.event_position.latitude_deg, message.event_position.longitude_deg, 10.0)
        receiver.receive(message, message.reference_time_ms, own)
        receiver.receive(message, message.reference_time_ms + 1, None)
        receiver.expire(message.expires_at_ms)
