"""Fuzz the ingest's Hello and batch validation (harness: tools/fuzz/fuzz_ingest.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcu.api.v1 import ingest_pb2 as ingest_pb
from tcu.api.v1 import telemetry_pb2 as telemetry_pb
from tcu.errors import BatchRejected, StreamRejected
from tcu.ingest.servicer import read_upload_request, stamped_identity
from tcu.ingest.validate import Limits, validate_batch, validate_hello
from tools.fuzz import fuzz_ingest as harness
from tools.fuzz._hypothesis import check_input, fuzz_settings, mutated


def test_fuzz_ingest_seeds_validate():
    seeds = harness.seeds()
    assert len(seeds) == 6
    accepted = 0
    for seed in seeds:
        check_input(harness, seed)
        hello = ingest_pb.UploadRequest.FromString(seed[1 : 1 + seed[0]])
        batch = ingest_pb.UploadRequest.FromString(seed[1 + seed[0] :])
        if seed[0]:
            session = validate_hello(hello.hello, Limits())
            validate_batch(session, batch.batch, Limits())
            accepted += 1
    assert accepted == 3  # the seed batches pass, so mutations start from valid input


@fuzz_settings(2000)
@given(st.binary(max_size=1024))
def test_fuzz_ingest_random_bytes(data):
    check_input(harness, data)


@fuzz_settings(3000)
@given(mutated(harness.seeds()))
def test_fuzz_ingest_mutated_seeds(data):
    check_input(harness, data)


def test_fuzz_ingest_tells_content_problems_from_stream_problems():
    """Content problems of a seed batch are plain BatchRejected (quarantined at the ingest), problems
    of the stream StreamRejected (the stream ends); read_upload_request keeps the batch's bytes."""
    seed = harness.seeds()[0]
    session = validate_hello(ingest_pb.UploadRequest.FromString(seed[1 : 1 + seed[0]]).hello, Limits())
    request = ingest_pb.UploadRequest.FromString(seed[1 + seed[0] :])

    content = ingest_pb.UploadRequest()
    content.CopyFrom(request)
    del content.batch.columns[0].double_values[-1]
    with pytest.raises(BatchRejected) as caught:
        validate_batch(session, content.batch, Limits())
    assert not isinstance(caught.value, StreamRejected)
    unannounced = ingest_pb.UploadRequest()  # a catalog the Hello did not announce: content too
    unannounced.CopyFrom(request)
    unannounced.batch.catalog_id = "cat-2"
    with pytest.raises(BatchRejected, match="is not the announced catalog") as caught:
        validate_batch(session, unannounced.batch, Limits())
    assert not isinstance(caught.value, StreamRejected)

    for field, value in (("vehicle_id", "VIN0002"), ("seq", 0)):
        stream = ingest_pb.UploadRequest()
        stream.CopyFrom(request)
        setattr(stream.batch, field, value)
        with pytest.raises(StreamRejected):
            validate_batch(session, stream.batch, Limits())

    raw = read_upload_request(seed[1 + seed[0] :])
    assert raw.message == request and raw.batch_bytes == request.batch.SerializeToString()
    broken = read_upload_request(b"\x12\x06\x0f\x00\x10\x03\x18\x05")  # undecodable, stamped 3/5
    assert broken.message is None and stamped_identity(broken.batch_bytes) == (3, 5)


def _whole_range(low: int, high: int) -> st.SearchStrategy[int]:
    """Integers of ``[low, high]``, the edges of the narrower integer types among them (hypothesis
    alone rarely draws a large value from a wide range)."""
    edges = [v for e in (0, 1, 2**31, 2**32, 2**53, 2**63, 2**64) for v in (e - 1, e, -e) if low <= v <= high]
    return st.one_of(st.sampled_from(sorted(set(edges))), st.integers(low, high))


_U64 = _whole_range(0, 2**64 - 1)
_I64 = _whole_range(-(2**63), 2**63 - 1)
_U32 = _whole_range(0, 2**32 - 1)
_KEY = st.one_of(st.integers(1, 1000), _U64)
_DOUBLE = st.floats(allow_nan=True, allow_infinity=True)
_SHORT = st.text(max_size=8)


@st.composite
def _structured(draw: st.DrawFn) -> bytes:
    """A Hello and a batch built field by field over each field's whole wire range (uint64, int64,
    doubles with NaN), so that values the database cannot hold are tried early and often."""
    catalog = telemetry_pb.SignalCatalog(catalog_id="cat-s")
    catalog.signals.add(
        signal_id=1,
        name="Vehicle.Speed",
        type=telemetry_pb.VALUE_TYPE_DOUBLE,
        resolution=draw(_DOUBLE),
        period_ms=draw(_U32),
    )
    catalog.signals.add(signal_id=2, name="Vehicle.Operator", type=telemetry_pb.VALUE_TYPE_STRING)
    hello = ingest_pb.UploadRequest(
        hello=ingest_pb.Hello(vehicle_id="VIN-S", boot_epoch=draw(_U64), catalog=catalog)
    )
    batch = telemetry_pb.TelemetryBatch(
        vehicle_id="VIN-S",
        boot_epoch=draw(_KEY),  # mostly a usable identity, so the batch gets past the stream checks
        seq=draw(_KEY),
        catalog_id="cat-s",
        base_time_ns=draw(_I64),
        created_ns=draw(_I64),
    )
    kind = draw(st.sampled_from(["loss", "columns", "event"]))
    if kind == "loss":
        batch.loss.CopyFrom(
            telemetry_pb.DataLoss(
                reason=draw(_SHORT),
                priority=draw(st.integers(-(2**31), 2**31 - 1)),
                created_ns=draw(_I64),
                payload_bytes=draw(_U64),
            )
        )
        batch.catalog_id = ""
    elif kind == "columns":
        times = draw(st.lists(_I64, max_size=3))
        batch.columns.add(signal_id=1, t_offset_ns=times, double_values=[draw(_DOUBLE) for _ in times])
        batch.columns.add(signal_id=2, t_offset_ns=times[:1], string_values=[draw(_SHORT) for _ in times[:1]])
    else:
        start, end = sorted((draw(_I64), draw(_I64)))
        event = batch.events.add(
            campaign="c",
            campaign_version=draw(_U32),
            trigger_ns=start,
            start_ns=start,
            end_ns=end,
            truncated=draw(st.booleans()),
        )
        event.columns.add(signal_id=1, t_offset_ns=[0], double_values=[draw(_DOUBLE)])
        event.frames.add(
            bus="can0", arbitration_id=draw(_U32), t_offset_ns=[0], data=[b"\x01"], dropped=draw(_U32)
        )
    first = hello.SerializeToString()
    if len(first) > 255:
        first = b""
    return bytes([len(first)]) + first + ingest_pb.UploadRequest(batch=batch).SerializeToString()


@fuzz_settings(400)
@given(_structured())
def test_fuzz_ingest_structured_reaches_the_store(data):
    """Through validation into the store: this is what finds issue 10 item 5 (a DataLoss with
    payload_bytes 2**64-1 passed validation and failed the group commit of every vehicle)."""
    check_input(harness, data)
