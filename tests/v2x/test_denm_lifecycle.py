"""The originator's DENM lifecycle: new, repetitions, updates, cancellation."""

from __future__ import annotations

from tcu.v2x.denm import DenmOriginator, DenmTrigger
from tcu.v2x.messages import ActionId, StationPosition, decode_denm, encode_denm, its_time_ms

S = 1_000_000_000
T0 = 1_780_000_000 * S
POS = StationPosition(48.0, 9.0)


def _trigger(**kw: object) -> DenmTrigger:
    base: dict[str, object] = {
        "name": "hard_braking",
        "cause_code": 99,
        "sub_cause_code": 1,
        "validity_s": 20,
        "release_ns": S,
        "repetition_interval_ns": S,
        "update_interval_ns": 10 * S,
        "cancel_repetitions": 1,
    }
    base.update(kw)
    return DenmTrigger(**base)  # type: ignore[arg-type]


def _run(orig: DenmOriginator, times_s: list[float], active: bool) -> list[tuple[float, str]]:
    out = []
    for t in times_s:
        for item in orig.step(T0 + int(t * S), {"hard_braking": active}, POS, 90.0, 10.0):
            out.append((t, item.kind))
    return out


def test_new_repetitions_update_and_cancellation() -> None:
    orig = DenmOriginator(station_id=42, triggers=[_trigger()])
    steps = [i / 10 for i in range(125)]  # 0 .. 12.4 s, condition true
    sent = _run(orig, steps, True)
    assert sent[0] == (0.0, "new")
    assert [t for t, k in sent if k == "repetition"] == [
        1.0,
        2.0,
        3.0,
        4.0,
        5.0,
        6.0,
        7.0,
        8.0,
        9.0,
        11.0,
        12.0,
    ]
    assert [t for t, k in sent if k == "update"] == [10.0]
    action = orig.active["hard_braking"]
    assert action == ActionId(42, 0)
    # Condition ends at 12.5 s: cancelled once it has been false for release_ns (1 s).
    ending = []
    for t in [12.5 + i / 10 for i in range(30)]:
        ending += [(round(t, 1), o) for o in orig.step(T0 + int(t * S), {}, POS, 90.0, 0.0)]
    kinds = [(t, o.kind) for t, o in ending]
    # While the release time runs, the event is still active and repeated.
    assert kinds == [(13.0, "repetition"), (13.5, "cancellation"), (14.5, "repetition")]
    cancel = ending[1][1].denm
    assert cancel.termination == "isCancellation" and cancel.action_id == action
    assert cancel.reference_time_ms == its_time_ms(T0 + int(13.5 * S))
    back = decode_denm(encode_denm(cancel))
    assert back.termination == "isCancellation"
    assert orig.active == {}
    # A new event gets a new sequence number.
    again = orig.step(T0 + 20 * S, {"hard_braking": True}, POS)
    assert [o.kind for o in again] == ["new"] and again[0].denm.action_id == ActionId(42, 1)


def test_update_keeps_action_and_refreshes_times_and_position() -> None:
    orig = DenmOriginator(station_id=42, triggers=[_trigger(update_distance_m=20.0)])
    first = orig.step(T0, {"hard_braking": True}, POS)[0].denm
    moved = StationPosition(48.0, 9.0004)  # about 30 m east
    update = orig.step(T0 + S // 2, {"hard_braking": True}, moved)
    assert [o.kind for o in update] == ["update"]
    denm = update[0].denm
    assert denm.action_id == first.action_id and denm.reference_time_ms > first.reference_time_ms
    assert denm.detection_time_ms > first.detection_time_ms and denm.event_position == moved


def test_hold_time_and_short_blips() -> None:
    orig = DenmOriginator(
        station_id=1, triggers=[_trigger(name="stationary_hazard", cause_code=94, hold_ns=3 * S)]
    )
    out = []
    for t in range(6):
        out += orig.step(T0 + t * S, {"stationary_hazard": t != 2}, POS)  # a blip at 2 s restarts the hold
    assert [o.kind for o in out] == []
    out = orig.step(T0 + 6 * S, {"stationary_hazard": True}, POS)
    assert [o.kind for o in out] == ["new"] and out[0].denm.cause_code == 94
    # A short false blip (< release) does not cancel.
    assert all(o.kind == "repetition" for o in orig.step(T0 + int(6.5 * S), {}, POS))
    assert [o.kind for o in orig.step(T0 + 7 * S, {"stationary_hazard": True}, POS)] == ["repetition"]


def test_no_position_no_new_event() -> None:
    orig = DenmOriginator(station_id=1, triggers=[_trigger()])
    assert orig.step(T0, {"hard_braking": True}, None) == []
    assert [o.kind for o in orig.step(T0 + 1, {"hard_braking": True}, POS)] == ["new"]
    assert dict(orig.sent) == {"new": 1}
