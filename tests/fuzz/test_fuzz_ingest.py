"""Fuzz the ingest's Hello and batch validation (harness: tools/fuzz/fuzz_ingest.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcu.api.v1 import ingest_pb2 as ingest_pb
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
