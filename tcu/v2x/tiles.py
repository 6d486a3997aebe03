"""Geographic tiles (web-mercator quadkeys) and the MQTT topics that name them.

Topic layout, one topic level per quadkey digit as Orange's open-source its-client does::

    <prefix>/<msgtype>/<station>/<q1>/<q2>/.../<qn>

``<prefix>`` is one or more levels (default ``v2x``), ``<msgtype>`` is ``cam`` or ``denm``,
``<station>`` the originating ITS station id in decimal (the ACL binds it to a certificate),
``q1..qn`` the digits (0-3) of the quadkey of the message's position at the publish level.
A coarser tile is then a single MQTT filter: ``<prefix>/denm/+/1/2/0/2/#`` matches every
DENM published in any tile inside quadkey ``1202`` (``#`` also matches the parent level).

:class:`TileSubscriptions` keeps a vehicle subscribed to its own tile and its 8 neighbours
at the subscribe level and moves that 3x3 block with hysteresis: the block is re-centred
only when the vehicle is ``margin_m`` inside a tile other than the centre (or has left the
block altogether), so driving along a tile edge does not churn subscriptions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from tcu.v2x.errors import V2xTopicError

__all__ = [
    "MAX_LEVEL",
    "MESSAGE_TYPES",
    "ParsedTopic",
    "TileSubscriptions",
    "check_prefix",
    "filters_for",
    "neighbours",
    "parse_topic",
    "quadkey",
    "quadkey_bounds",
    "subscription_filter",
    "tile_size_m",
    "topic_for",
]

MAX_LEVEL: Final = 23
MESSAGE_TYPES: Final = ("cam", "denm")
_MAX_LATITUDE: Final = 85.05112878
_EARTH_CIRCUMFERENCE_M: Final = 40_075_016.686


def _tile_xy(lat: float, lon: float, level: int) -> tuple[float, float]:
    """Fractional tile coordinates (x east, y south) at ``level``."""
    if not (math.isfinite(lat) and math.isfinite(lon)):
        raise ValueError(f"position {lat}, {lon} is not finite")
    lat = max(-_MAX_LATITUDE, min(_MAX_LATITUDE, lat))
    n = 1 << level
    x = (lon + 180.0) / 360.0 * n
    s = math.sin(math.radians(lat))
    y = (0.5 - math.log((1 + s) / (1 - s)) / (4 * math.pi)) * n
    return min(max(x, 0.0), n - 1e-9), min(max(y, 0.0), n - 1e-9)


def _check_level(level: int) -> None:
    if not 1 <= level <= MAX_LEVEL:
        raise ValueError(f"tile level {level} outside 1..{MAX_LEVEL}")


def _key(x: int, y: int, level: int) -> str:
    digits = []
    for i in range(level, 0, -1):
        mask = 1 << (i - 1)
        digits.append(str((1 if x & mask else 0) + (2 if y & mask else 0)))
    return "".join(digits)


def _xy_of(key: str) -> tuple[int, int]:
    x = y = 0
    for char in key:
        if char not in "0123":
            raise ValueError(f"quadkey {key!r} has a digit other than 0-3")
        d = int(char)
        x, y = (x << 1) | (d & 1), (y << 1) | (d >> 1)
    return x, y


def quadkey(lat: float, lon: float, level: int) -> str:
    """The quadkey (``level`` digits 0-3) of the web-mercator tile containing (lat, lon)."""
    _check_level(level)
    x, y = _tile_xy(lat, lon, level)
    return _key(int(x), int(y), level)


def quadkey_bounds(key: str) -> tuple[float, float, float, float]:
    """``(south, west, north, east)`` in degrees of a tile."""
    level = len(key)
    _check_level(level)
    x, y = _xy_of(key)
    n = 1 << level

    def lat(yy: float) -> float:
        return math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * yy / n))))

    return lat(y + 1), x / n * 360.0 - 180.0, lat(y), (x + 1) / n * 360.0 - 180.0


def tile_size_m(lat: float, level: int) -> float:
    """Edge length in metres of a tile at ``level`` near latitude ``lat``."""
    return _EARTH_CIRCUMFERENCE_M * math.cos(math.radians(lat)) / (1 << level)


def neighbours(key: str) -> list[str]:
    """The up to 8 tiles around ``key`` at its level (x wraps at the antimeridian; none beyond the poles)."""
    level = len(key)
    _check_level(level)
    x, y = _xy_of(key)
    n = 1 << level
    out: list[str] = []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dx == dy == 0 or not 0 <= y + dy < n:
                continue
            key2 = _key((x + dx) % n, y + dy, level)
            if key2 != key and key2 not in out:
                out.append(key2)
    return out


def check_prefix(prefix: str) -> str:
    """A topic prefix: one or more non-empty levels without wildcards or ``$`` at the start."""
    levels = prefix.split("/")
    if not prefix or prefix.startswith("$") or any(not lv or any(c in lv for c in "+#\0") for lv in levels):
        raise V2xTopicError(f"invalid topic prefix {prefix!r}", reason="prefix")
    return prefix


def topic_for(prefix: str, msgtype: str, station_id: int, key: str) -> str:
    """``<prefix>/<msgtype>/<station>/<q1>/.../<qn>``."""
    if msgtype not in MESSAGE_TYPES:
        raise V2xTopicError(f"unknown message type {msgtype!r}", reason="unknown_type")
    if not 0 <= station_id <= 0xFFFFFFFF:
        raise V2xTopicError(f"station id {station_id} outside 0..4294967295", reason="station")
    _check_level(len(key))
    _xy_of(key)
    return "/".join([check_prefix(prefix), msgtype, str(station_id), *key])


def subscription_filter(prefix: str, key: str, msgtype: str = "+", station: str = "+") -> str:
    """The MQTT filter matching every message of ``msgtype`` published inside tile ``key``."""
    if msgtype != "+" and msgtype not in MESSAGE_TYPES:
        raise V2xTopicError(f"unknown message type {msgtype!r}", reason="unknown_type")
    _xy_of(key)
    return "/".join([check_prefix(prefix), msgtype, station, *key, "#"])


@dataclass(frozen=True, slots=True)
class ParsedTopic:
    msgtype: str
    station_id: int
    quadkey: str


def parse_topic(prefix: str, topic: str) -> ParsedTopic:
    """Split a V2N topic; a topic of the wrong shape raises V2xTopicError (``reason`` "topic")."""
    head = prefix + "/"
    if not topic.startswith(head):
        raise V2xTopicError(f"topic {topic!r} is not under {prefix!r}")
    parts = topic[len(head) :].split("/")
    if len(parts) < 3:
        raise V2xTopicError(f"topic {topic!r} has no message type, station and tile")
    msgtype, station, digits = parts[0], parts[1], parts[2:]
    if msgtype not in MESSAGE_TYPES:
        raise V2xTopicError(f"topic {topic!r}: unknown message type {msgtype!r}", reason="unknown_type")
    if not station.isdigit() or len(station) > 10 or int(station) > 0xFFFFFFFF:
        raise V2xTopicError(f"topic {topic!r}: station {station!r} is not an ITS station id")
    if len(digits) > MAX_LEVEL or any(d not in ("0", "1", "2", "3") for d in digits):
        raise V2xTopicError(f"topic {topic!r}: tile levels must be single digits 0-3 (at most {MAX_LEVEL})")
    return ParsedTopic(msgtype=msgtype, station_id=int(station), quadkey="".join(digits))


@dataclass(slots=True)
class TileSubscriptions:
    """The 3x3 block of tiles at ``level`` a moving vehicle listens to, moved with hysteresis.

    :meth:`update` returns ``(added, removed)`` quadkeys; the caller subscribes/unsubscribes
    the corresponding filters. ``moves`` counts re-centrings.
    """

    level: int
    margin_m: float = 50.0
    centre: str | None = None
    tiles: frozenset[str] = field(default_factory=frozenset)
    moves: int = 0

    def __post_init__(self) -> None:
        _check_level(self.level)

    def _inside_by(self, lat: float, lon: float, key: str) -> float:
        x, y = _tile_xy(lat, lon, self.level)
        fx, fy = x - int(x), y - int(y)
        return min(fx, 1 - fx, fy, 1 - fy) * tile_size_m(lat, self.level)

    def update(self, lat: float, lon: float) -> tuple[list[str], list[str]]:
        here = quadkey(lat, lon, self.level)
        if self.centre == here:
            return [], []
        if (
            self.centre is not None
            and here in self.tiles
            and self._inside_by(lat, lon, here) < min(self.margin_m, tile_size_m(lat, self.level) / 4)
        ):
            return [], []  # still covered and close to the edge: stay (hysteresis)
        new = frozenset([here, *neighbours(here)])
        added = sorted(new - self.tiles)
        removed = sorted(self.tiles - new)
        if self.centre is not None:
            self.moves += 1
        self.centre, self.tiles = here, new
        return added, removed


def filters_for(prefix: str, tiles: Iterable[str], msgtypes: Sequence[str]) -> list[str]:
    """Subscription filters for ``tiles`` and each of ``msgtypes``."""
    return [subscription_filter(prefix, key, msgtype) for key in sorted(tiles) for msgtype in msgtypes]
