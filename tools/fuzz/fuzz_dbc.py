"""Fuzz target ``dbc``: :func:`tcu.signals.dbc.load_dbc` then
:func:`tcu.signals.codec.compile_database` and one decode per compiled message.

Contract: only :class:`tcu.errors.DbcError` may escape loading and compiling; decoding a
compiled message with a payload of the right shape must not raise at all.
"""

from __future__ import annotations

import warnings
from functools import cache

import numpy as np

from tcu.errors import DbcError
from tcu.signals.codec import compile_database
from tcu.signals.dbc import load_dbc
from tools.fuzz._common import REPO, scratch_dir
from tools.shared_data import shared_path

__all__ = ["NAME", "one_input", "seeds"]

NAME = "dbc"
_SEED_BYTES = 16_384


@cache
def seeds() -> list[bytes]:
    """The shared DBCs and the simulator's; big files without their ``VAL_TABLE_``
    lines and cut to about 16 KiB before a blank line or a ``BO_`` line."""
    files = [*sorted(shared_path("can/dbc").glob("*.dbc")), REPO / "sim" / "data" / "tcu_sim.dbc"]
    out: list[bytes] = []
    for file in files:
        data = file.read_bytes()
        if len(data) > _SEED_BYTES:
            data = b"".join(ln for ln in data.splitlines(keepends=True) if not ln.startswith(b"VAL_TABLE_ "))
            cut = max(data.rfind(b"\n\n", 0, _SEED_BYTES), data.rfind(b"\nBO_ ", 0, _SEED_BYTES))
            data = data[: cut + 1] if cut > 0 else data[:_SEED_BYTES]
        out.append(data)
    return out


def one_input(data: bytes) -> None:
    path = scratch_dir() / "input.dbc"
    path.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            codec = compile_database(load_dbc(path))
        except DbcError:
            return
        fill = np.frombuffer((data[:64] or b"\x00").ljust(64, b"\xa5"), dtype=np.uint8)
        for message in codec.messages:
            width = max(message.length, 8)
            payloads = np.resize(fill, (2, width)).astype(np.uint8)
            payloads[1] = ~payloads[1]
            message.decode_frames(payloads)
