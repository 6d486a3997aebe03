"""tcu.wire round trips: varints, the batch wrapping and the identity stamp, against protobuf itself."""

from __future__ import annotations

import pytest

from tcu.api.v1 import ingest_pb2 as ingest_pb
from tcu.api.v1 import telemetry_pb2 as telemetry_pb
from tcu.wire import batch_fields, read_varint, stamped_identity, varint, wrap_batch

_VALUES = [0, 1, 127, 128, 300, 16_383, 16_384, 2**32 - 1, 2**32, 1_763_800_000_123_456_789, 2**64 - 1]


@pytest.mark.parametrize("n", _VALUES)
def test_varint_round_trips_and_matches_protobuf(n: int) -> None:
    encoded = varint(n)
    assert read_varint(b"\xaa" + encoded + b"\x01", 1) == (n, 1 + len(encoded))
    # protobuf encodes a uint64 field 3 as tag 0x18 and the same varint (proto3 leaves 0 out)
    assert telemetry_pb.TelemetryBatch(seq=n).SerializeToString() == (b"\x18" + encoded if n else b"")


def test_varint_refuses_negative_and_truncated() -> None:
    with pytest.raises(ValueError, match="n >= 0"):
        varint(-1)
    with pytest.raises(ValueError, match="truncated"):
        read_varint(b"\x80\x80", 0)
    with pytest.raises(ValueError, match="truncated"):
        read_varint(b"\xff" * 11, 0)


_STAMPS = [(0, 1), (1, 300), (1_763_800_000_123_456_789, 2**40), (2**63 - 1, 2**63 - 1)]


@pytest.mark.parametrize(("epoch", "seq"), _STAMPS)
def test_wrap_batch_round_trips_through_the_envelope_and_the_stamp(epoch: int, seq: int) -> None:
    batch = telemetry_pb.TelemetryBatch(vehicle_id="V", base_time_ns=5, boot_epoch=9, seq=9)
    batch.columns.add(signal_id=1, t_offset_ns=[0, 10] * 100, double_values=[1.0, 2.0] * 100)
    payload = batch.SerializeToString()
    wrapped = wrap_batch(payload, boot_epoch=epoch, seq=seq)
    parsed = ingest_pb.UploadRequest.FromString(wrapped)
    assert parsed.batch.boot_epoch == epoch and parsed.batch.seq == seq  # the stamp wins
    assert parsed.batch.vehicle_id == "V" and len(parsed.batch.columns) == 1
    inner, only = batch_fields(wrapped) or (b"", False)
    assert only and inner.startswith(payload)
    assert stamped_identity(inner) == (epoch, seq)
    assert stamped_identity(b"\xff\xff\xff" + inner[len(payload) :]) == (epoch, seq)  # broken beginning


def test_batch_fields_of_other_and_broken_envelopes() -> None:
    hello = ingest_pb.UploadRequest(hello=ingest_pb.Hello(vehicle_id="V")).SerializeToString()
    assert batch_fields(hello) == (b"", False)
    assert batch_fields(hello + wrap_batch(b"", boot_epoch=1, seq=1)) == (b"\x10\x01\x18\x01", False)
    assert batch_fields(b"\x12\x05ab") is None  # the length runs past the end
    assert batch_fields(b"\x0f") is None  # wire type 7
    assert stamped_identity(b"\x10\x01\x18\x00") is None  # seq 0 is no stamp
    assert stamped_identity(b"") is None
