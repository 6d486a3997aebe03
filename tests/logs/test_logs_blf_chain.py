"""The BLF reader's object chain: a container that ends inside an object's header keeps the fast path."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from tcu.can.logs import blf


def _object(size: int) -> bytes:
    return struct.pack("<4sHHLL", b"LOBJ", 16, 1, size, blf.CAN_MESSAGE) + bytes(size - 16)


def test_chain_with_a_header_cut_short_takes_the_rest_from_its_signature(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    buf = _object(48) + _object(48) + _object(52) + b"LOBJ\x10\x00"  # the 4th header is cut
    arr = np.frombuffer(buf + bytes(blf._TAIL_PAD), np.uint8)

    def no_walk(*_args: object) -> None:
        raise AssertionError("walked object by object")

    monkeypatch.setattr(blf, "_walk", no_walk)
    positions, rest = blf._chain(buf, arr, len(buf))
    assert positions.tolist() == [0, 48, 96] and rest == 148
