"""Batch validation on its own: every rejection names the batch, the signal and the problem."""

from __future__ import annotations

from typing import Any

import pytest

from tcu.api.v1 import ingest_pb2 as ingest_pb
from tcu.api.v1 import telemetry_pb2 as telemetry_pb
from tcu.errors import BatchRejected, IngestError
from tcu.ingest import Limits, ValueKind, validate_batch, validate_hello

LIMITS = Limits(max_catalog_signals=8, max_batch_columns=2, max_batch_samples=5, max_string_bytes=16)


def _hello() -> ingest_pb.Hello:
    return ingest_pb.Hello(
        vehicle_id="veh-1",
        boot_epoch=3,
        catalog=telemetry_pb.SignalCatalog(
            catalog_id="c1",
            signals=[
                telemetry_pb.SignalInfo(
                    signal_id=12, name="Vehicle.Speed", unit="km/h", type=telemetry_pb.VALUE_TYPE_DOUBLE
                ),
                telemetry_pb.SignalInfo(signal_id=13, name="Vehicle.Op", type=telemetry_pb.VALUE_TYPE_STRING),
                telemetry_pb.SignalInfo(
                    signal_id=14, name="Vehicle.Odo", type=telemetry_pb.VALUE_TYPE_DOUBLE
                ),
            ],
        ),
    )


def _batch(**columns: Any) -> telemetry_pb.TelemetryBatch:
    message = telemetry_pb.TelemetryBatch(
        vehicle_id="veh-1", boot_epoch=3, seq=7, catalog_id="c1", base_time_ns=1000
    )
    for signal_id, (t, doubles, strings) in columns.items():
        message.columns.add(
            signal_id=int(signal_id[1:]), t_offset_ns=t, double_values=doubles, string_values=strings
        )
    return message


def test_valid_batch_becomes_absolute_columns() -> None:
    session = validate_hello(_hello(), LIMITS)
    assert session.catalog.signals[13].kind is ValueKind.STRING
    batch = validate_batch(session, _batch(s12=([0, -10], [1.0, 2.0], []), s13=([5], [], ["D1"])), LIMITS)
    assert (batch.vehicle_id, batch.boot_epoch, batch.seq, batch.samples) == ("veh-1", 3, 7, 3)
    assert [(c.signal.name, c.t_ns, c.double_values, c.string_values) for c in batch.columns] == [
        ("Vehicle.Speed", [1000, 990], [1.0, 2.0], []),
        ("Vehicle.Op", [1005], [], ["D1"]),
    ]


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        (
            {"s12": ([0, 1, 2, 3, 4], [1.0, 2.0, 3.0, 4.0], [])},
            "batch seq 7: column for signal 12 (Vehicle.Speed) has 5 times but 4 values",
        ),
        (
            {"s12": ([0], [], ["x"])},
            "batch seq 7: column for signal 12 (Vehicle.Speed) is DOUBLE but carries 1 string values",
        ),
        (
            {"s13": ([0], [1.0], [])},
            "batch seq 7: column for signal 13 (Vehicle.Op) is STRING but carries 1 double values",
        ),
        (
            {"s13": ([0], [], ["Vodafone.de-roam!"])},
            "batch seq 7: column for signal 13 (Vehicle.Op) has a string value longer than 16 bytes",
        ),
        (
            {"s12": ([0, 1, 2], [1.0] * 3, []), "s14": ([0, 1, 2], [1.0] * 3, [])},
            "batch seq 7: more than 5 samples",
        ),
        (
            {"s12": ([0], [1.0], []), "s13": ([0], [], ["a"]), "s14": ([0], [1.0], [])},
            "batch seq 7: 3 columns, more than 2",
        ),
        (
            {"s12": ([2**63 - 1000], [1.0], [])},
            "batch seq 7: column for signal 12 (Vehicle.Speed):"
            " base_time_ns 1000 + t_offset_ns leaves the int64 range",
        ),
        ({"s99": ([0], [1.0], [])}, "batch seq 7: signal id 99 is not in catalog c1"),
    ],
    ids=[
        "lengths",
        "string-in-double",
        "double-in-string",
        "long-string",
        "samples",
        "columns",
        "overflow",
        "unknown",
    ],
)
def test_rejections_name_what_is_wrong(columns: dict[str, Any], message: str) -> None:
    session = validate_hello(_hello(), LIMITS)
    with pytest.raises(BatchRejected) as caught:
        validate_batch(session, _batch(**columns), LIMITS)
    assert str(caught.value) == message
    assert isinstance(caught.value, IngestError)


def test_same_signal_twice_in_one_batch_is_rejected() -> None:
    session = validate_hello(_hello(), LIMITS)
    message = _batch(s12=([0], [1.0], []))
    message.columns.add(signal_id=12, t_offset_ns=[1], double_values=[2.0])
    with pytest.raises(
        BatchRejected, match=r"^batch seq 7: column for signal 12 \(Vehicle.Speed\) appears twice$"
    ):
        validate_batch(session, message, LIMITS)


def test_hello_problems() -> None:
    hello = _hello()
    hello.catalog.signals[2].type = telemetry_pb.VALUE_TYPE_UNSPECIFIED
    with pytest.raises(
        BatchRejected, match=r"signal #2 \(id 14\) \(Vehicle.Odo\): value type 0 is not DOUBLE"
    ):
        validate_hello(hello, LIMITS)
    with pytest.raises(BatchRejected, match=r"^hello: vehicle_id is empty$"):
        validate_hello(ingest_pb.Hello(), LIMITS)
    with pytest.raises(BatchRejected, match=r"no catalog"):
        validate_hello(ingest_pb.Hello(vehicle_id="v"), LIMITS)
    with pytest.raises(BatchRejected, match=r"boot_epoch 9223372036854775808 is above"):
        validate_hello(ingest_pb.Hello(vehicle_id="v", boot_epoch=2**63), LIMITS)


def _with_event(message: telemetry_pb.TelemetryBatch, **changes: Any) -> telemetry_pb.TelemetryBatch:
    event = message.events.add(
        campaign="brake", campaign_version=1, trigger_ns=2000, start_ns=1500, end_ns=2500
    )
    event.columns.add(signal_id=12, t_offset_ns=[0, 1000], double_values=[3.0, 4.0])
    for key, value in changes.items():
        setattr(event, key, value)
    return message


def test_events_become_absolute_captures() -> None:
    session = validate_hello(_hello(), LIMITS)
    batch = validate_batch(session, _with_event(_batch(s12=([0], [1.0], [])), truncated=True), LIMITS)
    assert batch.samples == 1  # the batch's own samples; events count separately
    (event,) = batch.events
    assert (event.campaign, event.campaign_version, event.trigger_ns, event.start_ns, event.end_ns) == (
        "brake",
        1,
        2000,
        1500,
        2500,
    )
    assert event.truncated and not event.history_incomplete and event.samples == 2
    assert [(c.signal.name, c.t_ns, c.double_values) for c in event.columns] == [
        ("Vehicle.Speed", [1500, 2500], [3.0, 4.0])
    ]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: _with_event(_batch(), campaign=""),
            "batch seq 7: event #0 (? v1): campaign is empty",
        ),
        (
            lambda: _with_event(_batch(), trigger_ns=3000),
            "batch seq 7: event #0 (brake v1): times out of order: start_ns 1500, trigger_ns 3000,"
            " end_ns 2500 (need start <= trigger <= end)",
        ),
        (
            lambda: _with_event(_batch(), end_ns=2400),
            "batch seq 7: event #0 (brake v1): column for signal 12 (Vehicle.Speed): sample time 2500"
            " (start_ns + t_offset_ns) is outside the event's [start_ns 1500, end_ns 2400]",
        ),
        (
            lambda: _add(_with_event(_batch()), signal_id=99, t_offset_ns=[0], double_values=[1.0]),
            "batch seq 7: event #0 (brake v1): signal id 99 is not in catalog c1",
        ),
        (
            lambda: _add(_with_event(_batch()), signal_id=13, t_offset_ns=[0], double_values=[1.0]),
            "batch seq 7: event #0 (brake v1): column for signal 13 (Vehicle.Op) is STRING but carries"
            " 1 double values",
        ),
        (
            lambda: _add(_with_event(_batch()), signal_id=14, t_offset_ns=[0, 1], double_values=[1.0]),
            "batch seq 7: event #0 (brake v1): column for signal 14 (Vehicle.Odo) has 2 times but 1 values",
        ),
        (
            lambda: _add(_with_event(_batch()), signal_id=12, t_offset_ns=[0], double_values=[1.0]),
            "batch seq 7: event #0 (brake v1): column for signal 12 (Vehicle.Speed) appears twice",
        ),
        (
            # 4 batch samples + 2 event samples > max_batch_samples=5: events count against the limit.
            lambda: _with_event(_batch(s12=([0, 1, 2, 3], [1.0, 2.0, 3.0, 4.0], []))),
            "batch seq 7: event #0 (brake v1): more than 5 samples",
        ),
        (
            # 2 batch columns + 1 event column > max_batch_columns=2.
            lambda: _with_event(_batch(s12=([0], [1.0], []), s14=([0], [1.0], []))),
            "batch seq 7: 3 columns, more than 2",
        ),
    ],
    ids=[
        "no-campaign",
        "trigger-outside",
        "sample-outside",
        "unknown-signal",
        "wrong-type",
        "lengths",
        "twice",
        "samples",
        "columns",
    ],
)
def test_event_rejections_name_what_is_wrong(build: Any, message: str) -> None:
    session = validate_hello(_hello(), LIMITS)
    with pytest.raises(BatchRejected) as caught:
        validate_batch(session, build(), LIMITS)
    assert str(caught.value) == message


def _add(message: telemetry_pb.TelemetryBatch, **column: Any) -> telemetry_pb.TelemetryBatch:
    message.events[0].columns.add(**column)
    return message


def test_loss_batch_must_not_carry_events() -> None:
    session = validate_hello(_hello(), LIMITS)
    message = _with_event(_batch())
    message.loss.reason = "evicted"
    with pytest.raises(
        BatchRejected, match=r"DataLoss batch must not carry columns or events \(0 columns, 1 events"
    ):
        validate_batch(session, message, LIMITS)
