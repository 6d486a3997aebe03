"""The ingest parses each Upload request once: a batch's bytes are decoded only into the request's batch."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from tcu.api.v1 import ingest_pb2 as ingest_pb
from tcu.api.v1 import telemetry_pb2 as telemetry_pb
from tcu.ingest import servicer
from tcu.wire import wrap_batch


class _CountingRequests:
    """Stands in for ``ingest_pb.UploadRequest`` and counts whole-request parses."""

    def __init__(self) -> None:
        self.parses = 0

    def __call__(self, **kwargs: Any) -> ingest_pb.UploadRequest:
        return ingest_pb.UploadRequest(**kwargs)

    def FromString(self, data: bytes) -> ingest_pb.UploadRequest:
        self.parses += 1
        return ingest_pb.UploadRequest.FromString(data)


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> _CountingRequests:
    requests = _CountingRequests()
    proxy = SimpleNamespace(**{k: getattr(ingest_pb, k) for k in dir(ingest_pb) if not k.startswith("__")})
    proxy.UploadRequest = requests
    monkeypatch.setattr(servicer, "ingest_pb", proxy)
    return requests


def test_a_batch_request_is_parsed_once(counting: _CountingRequests) -> None:
    batch = telemetry_pb.TelemetryBatch(vehicle_id="V", base_time_ns=5)
    batch.columns.add(signal_id=1, t_offset_ns=[0, 10] * 100, double_values=[1.0, 2.0] * 100)
    payload = batch.SerializeToString()
    wrapped = wrap_batch(payload, boot_epoch=7, seq=3)
    raw = servicer.read_upload_request(wrapped)
    # The batch's content was decoded straight into the request, not a second time as a whole request.
    assert counting.parses == 0
    assert raw.message == ingest_pb.UploadRequest.FromString(wrapped)
    assert raw.batch_bytes == payload + b"\x10\x07\x18\x03"
    assert raw.message is not None and raw.message.batch.seq == 3 and raw.message.batch.boot_epoch == 7


def test_an_empty_batch_is_still_a_batch(counting: _CountingRequests) -> None:
    raw = servicer.read_upload_request(b"\x12\x00")
    assert raw.message is not None and raw.message.WhichOneof("kind") == "batch"
    assert raw.message == ingest_pb.UploadRequest.FromString(b"\x12\x00")


def test_other_requests_are_parsed_once_as_a_whole(counting: _CountingRequests) -> None:
    hello = ingest_pb.UploadRequest(hello=ingest_pb.Hello(vehicle_id="V")).SerializeToString()
    raw = servicer.read_upload_request(hello)
    assert counting.parses == 1
    assert raw.message is not None and raw.message.hello.vehicle_id == "V" and raw.batch_bytes == b""


def test_a_batch_that_does_not_decode_keeps_its_bytes_and_reason(counting: _CountingRequests) -> None:
    corrupt = b"\x0a\x05\xff\xff"  # field 1 claims 5 bytes, 2 follow
    raw = servicer.read_upload_request(wrap_batch(corrupt, boot_epoch=3, seq=5))
    assert raw.message is None and raw.is_batch
    assert raw.batch_bytes == corrupt + b"\x10\x03\x18\x05"
    assert "does not decode as a TelemetryBatch" in raw.error
