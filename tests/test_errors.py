"""The error tree: one root, no name that shadows a library's, stream and batch problems apart."""

from __future__ import annotations

import tcu.errors
from tcu.errors import BatchRejected, IngestError, StreamRejected, TcuError


def test_every_error_derives_from_the_root() -> None:
    for name in tcu.errors.__all__:
        assert issubclass(getattr(tcu.errors, name), TcuError), name


def test_no_decode_error_shadowing_protobufs() -> None:
    # never raised, and google.protobuf.message.DecodeError is what a reader of `except DecodeError` means
    assert not hasattr(tcu.errors, "DecodeError")


def test_a_stream_problem_is_not_a_kind_of_batch_problem() -> None:
    # an `except BatchRejected` (quarantine the batch, carry on) must not swallow a stream problem
    assert issubclass(StreamRejected, IngestError) and issubclass(BatchRejected, IngestError)
    assert not issubclass(StreamRejected, BatchRejected)
    assert not issubclass(BatchRejected, StreamRejected)
