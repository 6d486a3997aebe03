"""Fuzz the ingest's Hello and batch validation (harness: tools/fuzz/fuzz_ingest.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tcu.api.v1 import ingest_pb2 as ingest_pb
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
