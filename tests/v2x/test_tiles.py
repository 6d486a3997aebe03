"""Quadkeys, neighbours, topics and the moving 3x3 subscription block."""

from __future__ import annotations

import pytest
from paho.mqtt.client import topic_matches_sub

from tcu.v2x.errors import V2xTopicError
from tcu.v2x.geo import destination
from tcu.v2x.tiles import (
    TileSubscriptions,
    neighbours,
    parse_topic,
    quadkey,
    quadkey_bounds,
    subscription_filter,
    tile_size_m,
    topic_for,
)


def test_quadkey_matches_the_bing_tile_system() -> None:
    # Bing Maps tile system documentation: tile (x=3, y=5) at level 3 is quadkey "213".
    south, west, north, east = quadkey_bounds("213")
    assert quadkey((south + north) / 2, (west + east) / 2, 3) == "213"
    assert quadkey(0.001, 0.001, 1) == "1" and quadkey(-0.001, -0.001, 1) == "2"
    stuttgart = quadkey(48.7758, 9.1829, 18)
    assert len(stuttgart) == 18 and stuttgart.startswith(quadkey(48.7758, 9.1829, 10))
    s, w, n, e = quadkey_bounds(stuttgart)
    assert s <= 48.7758 <= n and w <= 9.1829 <= e


def test_neighbours_are_the_8_adjacent_tiles() -> None:
    key = quadkey(48.7758, 9.1829, 14)
    around = neighbours(key)
    assert len(around) == 8 and key not in around and all(len(k) == 14 for k in around)
    s, w, n, e = quadkey_bounds(key)
    assert quadkey(n + 1e-6, (w + e) / 2, 14) in around and quadkey(s - 1e-6, e + 1e-6, 14) in around
    assert len(neighbours("0")) == 3  # top row at level 1: nothing north of it; x wraps


def test_topic_layout_and_filters() -> None:
    key = quadkey(48.7758, 9.1829, 18)
    topic = topic_for("v2x", "denm", 4242, key)
    assert topic == "v2x/denm/4242/" + "/".join(key)
    assert parse_topic("v2x", topic).quadkey == key
    coarse = key[:14]
    assert topic_matches_sub(subscription_filter("v2x", coarse), topic)
    assert topic_matches_sub(subscription_filter("v2x", coarse, "denm"), topic)
    assert not topic_matches_sub(subscription_filter("v2x", coarse, "cam"), topic)
    other = neighbours(coarse)[0]
    assert not topic_matches_sub(subscription_filter("v2x", other), topic)
    assert topic_for("acme/v2x", "cam", 1, "0123").startswith("acme/v2x/cam/1/0/1/2/3")


@pytest.mark.parametrize(
    "topic",
    [
        "other/denm/1/0/1",
        "v2x/denm",
        "v2x/spam/1/0/1",
        "v2x/denm/abc/0/1",
        "v2x/denm/1/0/12",
        "v2x/denm/1/4",
        "v2x/denm/99999999999/0",
    ],
)
def test_topics_of_the_wrong_shape_are_refused(topic: str) -> None:
    with pytest.raises(V2xTopicError):
        parse_topic("v2x", topic)


def test_invalid_prefix_refused() -> None:
    for prefix in ("", "v2x/#", "$SYS", "a//b"):
        with pytest.raises(V2xTopicError):
            topic_for(prefix, "cam", 1, "0")


def test_subscriptions_move_with_hysteresis() -> None:
    level = 14
    lat, lon = 48.7758, 9.1829
    subs = TileSubscriptions(level=level, margin_m=50.0)
    added, removed = subs.update(lat, lon)
    assert len(added) == 9 and removed == [] and subs.moves == 0
    centre = subs.centre
    assert centre is not None
    s, _w, n, e = quadkey_bounds(centre)
    size = tile_size_m(lat, level)
    assert size > 1000
    # Just across the eastern edge (10 m inside the next tile): covered, so no move yet.
    lat_mid = (s + n) / 2
    just_over = destination(lat_mid, e, 90.0, 10.0)
    assert subs.update(*just_over) == ([], []) and subs.centre == centre
    # Back and forth across the edge: still no churn.
    assert subs.update(*destination(lat_mid, e, 270.0, 10.0)) == ([], [])
    # Well inside the eastern tile: re-centre; 3 tiles added, 3 removed.
    added, removed = subs.update(*destination(lat_mid, e, 90.0, 200.0))
    assert len(added) == 3 and len(removed) == 3 and subs.moves == 1 and subs.centre != centre
    # A jump out of the block re-centres at once.
    added, removed = subs.update(lat + 1.0, lon)
    assert len(added) == 9 and len(removed) == 9 and subs.moves == 2
