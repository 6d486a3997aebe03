"""Receiving DENMs: own, dedup, update, cancellation, expiry, relevance."""

from __future__ import annotations

from dataclasses import replace

from tcu.v2x.geo import destination
from tcu.v2x.messages import ActionId, Denm, StationPosition
from tcu.v2x.receive import DenmReceiver, OwnState, ReceiverConfig

NOW = 700_000_000_000
ME = OwnState(48.0, 9.0, heading_deg=90.0)  # driving east


def _denm(distance: float = 300.0, bearing: float = 90.0, heading: float | None = 90.0, **kw: object) -> Denm:
    lat, lon = destination(48.0, 9.0, bearing, distance)
    base: dict[str, object] = {
        "station_id": 7,
        "action_id": ActionId(7, 1),
        "detection_time_ms": NOW,
        "reference_time_ms": NOW,
        "event_position": StationPosition(lat, lon),
        "relevance_distance_m": 500.0,
        "relevance_traffic_direction": "upstreamTraffic",
        "validity_s": 20,
        "cause_code": 99,
        "sub_cause_code": 1,
        "event_heading_deg": heading,
    }
    base.update(kw)
    return Denm(**base)  # type: ignore[arg-type]


def test_accept_dedup_update_cancel() -> None:
    rx = DenmReceiver(ReceiverConfig(own_station_id=1))
    first = rx.receive(_denm(), NOW + 50, ME)
    assert first is not None and first.kind == "accepted" and first.distance_m is not None
    assert 299 < first.distance_m < 301
    assert rx.receive(_denm(), NOW + 1050, ME) is None  # repetition
    later = _denm(reference_time_ms=NOW + 5000, detection_time_ms=NOW + 5000)
    update = rx.receive(later, NOW + 5050, ME)
    assert update is not None and update.kind == "updated"
    assert rx.receive(_denm(), NOW + 5100, ME) is None  # older than what is held
    cancel = replace(later, termination="isCancellation", reference_time_ms=NOW + 6000, cause_code=None)
    done = rx.receive(cancel, NOW + 6050, ME)
    assert done is not None and done.kind == "cancelled" and rx.held == {}
    assert rx.receive(cancel, NOW + 6100, ME) is None
    assert dict(rx.counters) == {"accepted": 1, "duplicate": 2, "updated": 1, "stale": 1, "cancelled": 1}
    assert rx.receive(replace(cancel, action_id=ActionId(7, 99)), NOW + 6200, ME) is None
    assert rx.counters["cancel_unknown"] == 1


def test_own_future_and_expired() -> None:
    rx = DenmReceiver(ReceiverConfig(own_station_id=7))
    assert rx.receive(_denm(), NOW, ME) is None
    rx = DenmReceiver(ReceiverConfig(own_station_id=1))
    assert rx.receive(_denm(reference_time_ms=NOW + 60_000), NOW, ME) is None
    assert rx.receive(_denm(), NOW + 20_000, ME) is None
    assert dict(rx.counters) == {"future": 1, "expired": 1}


def test_held_events_expire() -> None:
    rx = DenmReceiver(ReceiverConfig(own_station_id=1))
    assert rx.receive(_denm(), NOW, ME) is not None
    assert rx.expire(NOW + 19_999) == []
    gone = rx.expire(NOW + 20_000)
    assert [g.kind for g in gone] == ["expired"] and rx.held == {}


def test_relevance_distance_ahead_and_carriageway() -> None:
    rx = DenmReceiver(ReceiverConfig(own_station_id=1))
    assert rx.receive(_denm(distance=800.0), NOW, ME) is None  # beyond 500 m
    assert rx.receive(_denm(bearing=270.0), NOW, ME) is None  # behind
    assert rx.receive(_denm(heading=270.0), NOW, ME) is None  # other carriageway (opposite heading)
    assert rx.counters["not_relevant"] == 3
    ok = rx.receive(_denm(bearing=100.0, heading=85.0), NOW, ME)  # slightly right, ahead, same direction
    assert ok is not None and ok.kind == "accepted"
    # Road operator warning for all directions and without heading: distance and ahead only.
    rx2 = DenmReceiver(ReceiverConfig(own_station_id=1))
    works = _denm(
        heading=None,
        relevance_traffic_direction="allTrafficDirections",
        cause_code=3,
        action_id=ActionId(9, 1),
        station_id=9,
    )
    assert rx2.receive(works, NOW, OwnState(48.0, 9.0, heading_deg=None)) is not None
    # No own position: cannot judge relevance.
    assert DenmReceiver(ReceiverConfig(own_station_id=1)).receive(_denm(), NOW, None) is None


def test_table_is_bounded_and_evictions_counted() -> None:
    rx = DenmReceiver(ReceiverConfig(own_station_id=1, max_events=2))
    for seq in range(3):
        assert rx.receive(_denm(action_id=ActionId(7, seq), validity_s=10 + seq), NOW, ME) is not None
    assert len(rx.held) == 2 and rx.counters["evicted"] == 1 and ActionId(7, 0) not in rx.held


def test_a_late_copy_after_the_cancellation_does_not_warn_again() -> None:
    rx = DenmReceiver(ReceiverConfig(own_station_id=1))
    new = _denm()
    assert rx.receive(new, NOW, ME) is not None
    cancel = replace(new, termination="isCancellation", reference_time_ms=NOW + 3000, cause_code=None)
    done = rx.receive(cancel, NOW + 3050, ME)
    assert done is not None and done.kind == "cancelled"
    # A repetition of the original that was delayed (a retry after a reconnect) arrives afterwards.
    assert rx.receive(new, NOW + 3100, ME) is None
    assert rx.receive(cancel, NOW + 4000, ME) is None  # the cancellation's own repetition
    assert rx.counters["after_end"] == 1 and rx.counters["duplicate"] == 1
    # A later update under the same actionId (referenceTime after the end) is a new warning again.
    revived = replace(new, reference_time_ms=NOW + 5000, detection_time_ms=NOW + 5000)
    again = rx.receive(revived, NOW + 5050, ME)
    assert again is not None and again.kind == "accepted"
