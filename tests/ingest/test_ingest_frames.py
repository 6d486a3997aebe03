"""Raw CAN frames of captured events: validated with named problems, stored in the event, read back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tcu.api.v1 import ingest_pb2 as ingest_pb
from tcu.api.v1 import telemetry_pb2 as telemetry_pb
from tcu.errors import BatchRejected
from tcu.ingest import IngestConfig, Limits, validate_batch, validate_hello
from tcu.ingest._events import capture_from_pb, capture_pb
from tcu.ingest.model import HistoryQuery
from tcu.ingest.store import SqliteSink

LIMITS = Limits(max_batch_samples=6, max_string_bytes=16)
FD_PAYLOAD = bytes(range(64))


def _session() -> Any:
    catalog = telemetry_pb.SignalCatalog(
        catalog_id="c1",
        signals=[
            telemetry_pb.SignalInfo(signal_id=12, name="Vehicle.Speed", type=telemetry_pb.VALUE_TYPE_DOUBLE)
        ],
    )
    return validate_hello(ingest_pb.Hello(vehicle_id="veh-1", boot_epoch=3, catalog=catalog), LIMITS)


def _batch(*frames: dict[str, Any], speed: int = 1) -> telemetry_pb.TelemetryBatch:
    """A batch with one event over [1500, 2500] and the given raw frame entries."""
    message = telemetry_pb.TelemetryBatch(vehicle_id="veh-1", boot_epoch=3, seq=7, catalog_id="c1")
    event = message.events.add(
        campaign="brake", campaign_version=1, trigger_ns=2000, start_ns=1500, end_ns=2500
    )
    event.columns.add(signal_id=12, t_offset_ns=list(range(speed)), double_values=[1.0] * speed)
    for entry in frames:
        event.frames.add(**entry)
    return message


def _frames(bus: str = "can0", arbitration_id: int = 0x123, **changes: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "bus": bus,
        "arbitration_id": arbitration_id,
        "t_offset_ns": [0, 400, 1000],
        "data": [b"\x01\x02", b"", FD_PAYLOAD],
    }
    entry.update(changes)
    return entry


def test_frames_become_absolute_and_survive_the_stored_form() -> None:
    batch = validate_batch(
        _session(),
        _batch(_frames(), _frames(bus="can1", arbitration_id=0x18FEF100, t_offset_ns=[], data=[])),
        LIMITS,
    )
    (event,) = batch.events
    assert [(f.bus, f.arbitration_id, f.t_ns, f.data, f.dropped) for f in event.frames] == [
        ("can0", 0x123, [1500, 1900, 2500], [b"\x01\x02", b"", FD_PAYLOAD], 0),
        ("can1", 0x18FEF100, [], [], 0),
    ]
    assert (event.samples, event.frame_count) == (1, 3)
    # The ingest stores an event as its serialised Fleet Event: frames come back unchanged.
    blob = capture_pb(event).SerializeToString()
    assert capture_from_pb(type(capture_pb(event)).FromString(blob)).frames == event.frames
    # A signal filter (live Subscribe, Query with signals) keeps the frames of an event it sends.
    assert capture_pb(event, frozenset({"Vehicle.Speed"})).frames == capture_pb(event).frames


def test_dropped_count_is_carried() -> None:
    batch = validate_batch(_session(), _batch(_frames(dropped=250)), LIMITS)
    assert batch.events[0].frames[0].dropped == 250
    assert capture_pb(batch.events[0]).frames[0].dropped == 250


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        (
            [_frames(data=[b"\x01", b"", FD_PAYLOAD + b"\x00"])],
            "batch seq 7: event #0 (brake v1): raw frames #0 (bus 'can0' id 0x123): frame #2 has a payload"
            " of 65 bytes, more than 64",
        ),
        (
            [_frames(t_offset_ns=[0, 400, 1001])],
            "batch seq 7: event #0 (brake v1): raw frames #0 (bus 'can0' id 0x123): frame time 2501"
            " (start_ns + t_offset_ns) is outside the event's [start_ns 1500, end_ns 2500]",
        ),
        (
            [_frames(t_offset_ns=[-1, 400, 1000])],
            "batch seq 7: event #0 (brake v1): raw frames #0 (bus 'can0' id 0x123): frame time 1499"
            " (start_ns + t_offset_ns) is outside the event's [start_ns 1500, end_ns 2500]",
        ),
        (
            [_frames(t_offset_ns=[0, 400])],
            "batch seq 7: event #0 (brake v1): raw frames #0 (bus 'can0' id 0x123) have 2 times"
            " but 3 payloads",
        ),
        (
            [_frames(data=[b"\x01"])],
            "batch seq 7: event #0 (brake v1): raw frames #0 (bus 'can0' id 0x123) have 3 times"
            " but 1 payloads",
        ),
        (
            [_frames(bus="")],
            "batch seq 7: event #0 (brake v1): raw frames #0 (bus '' id 0x123): bus is empty",
        ),
        (
            [_frames(bus="can0-with-a-long-name")],
            "batch seq 7: event #0 (brake v1): raw frames #0 (bus 'can0-with-a-long-name' id 0x123): bus is"
            " longer than 16 bytes",
        ),
        (
            [_frames(), _frames(t_offset_ns=[], data=[])],
            "batch seq 7: event #0 (brake v1): raw frames #1 (bus 'can0' id 0x123) appear twice",
        ),
        (
            # 1 sample + 3 + 3 frames > max_batch_samples=6: frames count against the limit.
            [_frames(), _frames(arbitration_id=0x124)],
            "batch seq 7: event #0 (brake v1): more than 6 samples",
        ),
    ],
    ids=[
        "payload-65",
        "after-end",
        "before-start",
        "fewer-times",
        "fewer-payloads",
        "no-bus",
        "long-bus",
        "twice",
        "budget",
    ],
)
def test_malformed_frames_are_rejected_by_name(frames: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(BatchRejected) as caught:
        validate_batch(_session(), _batch(*frames), LIMITS)
    assert str(caught.value) == message


async def test_frames_survive_the_sqlite_sink(tmp_path: Path) -> None:
    batch = validate_batch(_session(), _batch(_frames()), LIMITS)
    sink = await SqliteSink.open(IngestConfig(insecure=True, db_path=tmp_path / "ingest.sqlite"))
    try:
        await sink.store(batch)
        got = [c async for chunk in sink.events(HistoryQuery("veh-1", (), 0, 2**62, 1000)) for c in chunk]
    finally:
        await sink.aclose()
    assert [c.frames for c in got] == [batch.events[0].frames]
