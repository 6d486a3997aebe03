r"""V2N: ETSI CAM and DENM over MQTT on geographic tiles (an adapter, like ``tcu.uplink``).

Pure modules (no I/O, driven by time values):

* :mod:`tcu.v2x.messages` — domain types (:class:`Cam`, :class:`Denm`, :class:`StationPosition`,
  :class:`ActionId`) and the UPER codec (release 1 sent, releases 1 and 2 received);
* :mod:`tcu.v2x.tiles` — quadkeys, neighbours, topics ``<prefix>/<msgtype>/<station>/<q1>/...``,
  subscription filters, :class:`TileSubscriptions` (3x3 block with hysteresis);
* :mod:`tcu.v2x.cam_rules` — ETSI CAM generation rules (:class:`CamGenerator`);
* :mod:`tcu.v2x.denm` — DENM lifecycle of the originator (:class:`DenmOriginator`);
* :mod:`tcu.v2x.receive` — dedup, updates, cancellations, expiry, relevance (:class:`DenmReceiver`);
* :mod:`tcu.v2x.geo` — distances and bearings.

I/O: :mod:`tcu.v2x.client` (aiomqtt, MQTT v5) runs as named tasks in the caller's TaskGroup;
:mod:`tcu.v2x.station` (:class:`V2xStation`) puts the pure parts around one client: feed it
:class:`VehicleState` and trigger conditions, receive :class:`StationWarning`\ s.
This package imports no other adapter.
"""

from tcu.v2x.cam_rules import CamDecision, CamGenerator, CamRules, Kinematics
from tcu.v2x.client import Received, V2xClient, V2xClientConfig
from tcu.v2x.denm import DEFAULT_TRIGGERS, DenmOriginator, DenmTrigger, Outgoing
from tcu.v2x.errors import V2xDecodeError, V2xEncodeError, V2xError, V2xTopicError
from tcu.v2x.messages import (
    CAUSE_ACCIDENT,
    CAUSE_ADVERSE_WEATHER_ADHESION,
    CAUSE_DANGEROUS_SITUATION,
    CAUSE_HAZARDOUS_LOCATION_SURFACE,
    CAUSE_ROADWORKS,
    CAUSE_STATIONARY_VEHICLE,
    MAX_PAYLOAD_BYTES,
    SUB_CAUSE_EEBL,
    ActionId,
    Cam,
    Denm,
    StationPosition,
    decode_any,
    decode_cam,
    decode_denm,
    encode_cam,
    encode_denm,
    its_time_ms,
    unix_ns_from_its,
)
from tcu.v2x.receive import DenmReceiver, OwnState, ReceiverConfig, WarningChange
from tcu.v2x.station import StationSettings, StationWarning, V2xStation, VehicleState
from tcu.v2x.tiles import (
    ParsedTopic,
    TileSubscriptions,
    neighbours,
    parse_topic,
    quadkey,
    subscription_filter,
    topic_for,
)

__all__ = [
    "CAUSE_ACCIDENT",
    "CAUSE_ADVERSE_WEATHER_ADHESION",
    "CAUSE_DANGEROUS_SITUATION",
    "CAUSE_HAZARDOUS_LOCATION_SURFACE",
    "CAUSE_ROADWORKS",
    "CAUSE_STATIONARY_VEHICLE",
    "DEFAULT_TRIGGERS",
    "MAX_PAYLOAD_BYTES",
    "SUB_CAUSE_EEBL",
    "ActionId",
    "Cam",
    "CamDecision",
    "CamGenerator",
    "CamRules",
    "Denm",
    "DenmOriginator",
    "DenmReceiver",
    "DenmTrigger",
    "Kinematics",
    "Outgoing",
    "OwnState",
    "ParsedTopic",
    "Received",
    "ReceiverConfig",
    "StationPosition",
    "StationSettings",
    "StationWarning",
    "TileSubscriptions",
    "V2xClient",
    "V2xClientConfig",
    "V2xDecodeError",
    "V2xEncodeError",
    "V2xError",
    "V2xStation",
    "V2xTopicError",
    "VehicleState",
    "WarningChange",
    "decode_any",
    "decode_cam",
    "decode_denm",
    "encode_cam",
    "encode_denm",
    "its_time_ms",
    "neighbours",
    "parse_topic",
    "quadkey",
    "subscription_filter",
    "topic_for",
    "unix_ns_from_its",
]
