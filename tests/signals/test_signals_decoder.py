"""The one decoder (FrameDecoder) equals cantools' decode_message frame by frame, for every shared DBC.

Frames of every message of a DBC, in a shuffled order, with payloads shorter than, as long
as and longer than the message, among unknown ids and error/remote frames: the decoder's
blocks must hold exactly the frames cantools decodes (``db.decode_message(id, data,
decode_choices=False)`` with its default length rule), with the same values, and its
counts must say what happened to the others.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import cantools
import numpy as np
import pytest

from tcu.frames import FrameBatch
from tcu.signals import compile_database, load_dbc
from tcu.signals.decoder import FrameDecoder

DBC_DIR = Path(os.environ["TCU_SHARED_DATA"], "can/dbc")
SHARED_DBCS = sorted(DBC_DIR.glob("*.dbc"))
EDGE_DBC = Path(__file__).with_name("edge_cases.dbc")


def _frames(db: cantools.database.can.Database, rng: np.random.Generator) -> FrameBatch:
    ids: list[int] = []
    ext: list[bool] = []
    payloads: list[bytes] = []
    for message in db.messages:
        for length in (
            message.length,
            message.length,
            max(0, message.length - 1),
            min(64, message.length + 3),
        ):
            ids.append(message.frame_id)
            ext.append(message.is_extended_frame)
            payloads.append(bytes(rng.integers(0, 256, length, dtype=np.uint8)))
    known = {(m.frame_id, m.is_extended_frame) for m in db.messages}
    for _ in range(50):  # ids the DBC does not have
        extended = bool(rng.integers(0, 2))
        ident = int(rng.integers(0, 0x1FFFFFFF if extended else 0x7FF))
        if (ident, extended) not in known:
            ids.append(ident)
            ext.append(extended)
            payloads.append(bytes(8))
    order = rng.permutation(len(ids))
    n = len(ids)
    width = 64 if max(len(p) for p in payloads) > 8 else 8
    data = np.zeros((n, width), np.uint8)
    for row, i in enumerate(order.tolist()):
        data[row, : len(payloads[i])] = np.frombuffer(payloads[i], np.uint8)
    special = np.zeros(n, np.bool_)
    special[rng.choice(n, size=min(5, n), replace=False)] = True
    return FrameBatch(
        t_ns=np.arange(n, dtype=np.int64) * 1000,
        arbitration_id=np.array(ids, np.uint32)[order],
        is_extended=np.array(ext, np.bool_)[order],
        channel=np.zeros(n, np.int16),
        channels=("can0",),
        dlc=np.array([len(payloads[i]) for i in order.tolist()], np.uint8),
        data=data,
        is_fd=np.zeros(n, np.bool_),
        bitrate_switch=np.zeros(n, np.bool_),
        is_error=special & (np.arange(n) % 2 == 0),
        is_remote=special & (np.arange(n) % 2 == 1),
        is_rx=np.ones(n, np.bool_),
    )


@pytest.mark.parametrize("path", [*SHARED_DBCS, EDGE_DBC], ids=lambda p: p.name)
def test_frame_decoder_equals_cantools_decode_message(path: Path) -> None:
    db = load_dbc(path)
    frames = _frames(db, np.random.default_rng(len(path.name)))
    decoder = FrameDecoder({None: compile_database(db)})
    blocks = decoder.decode(frames)
    got: dict[int, tuple[str, dict[str, float]]] = {}
    for block in blocks:
        for k, row in enumerate(block.rows.tolist()):
            if not block.decoded.ok[k]:
                continue
            values = {
                name: float(block.decoded.values[name][k])
                for name in block.codec.signal_names
                if block.decoded.present[name][k]
            }
            got[row] = (block.codec.name, values)
            assert block.t_ns[k] == frames.t_ns[row]
    by_key = {(m.frame_id, m.is_extended_frame): m for m in db.messages if not m.is_container}
    want: dict[int, tuple[str, dict[str, float]]] = {}
    unknown = short = refused = 0
    for row in range(len(frames)):
        if frames.is_error[row] or frames.is_remote[row]:
            continue
        message = by_key.get((int(frames.arbitration_id[row]), bool(frames.is_extended[row])))
        if message is None:
            unknown += 1
            continue
        data = frames.payload(row)
        try:
            decoded = db.decode_message(
                message.frame_id, data, decode_choices=False, force_extended_id=message.is_extended_frame
            )
        except cantools.database.DecodeError:
            refused += 1
            short += len(data) < message.length
            continue
        assert isinstance(decoded, dict)
        want[row] = (message.name, {k: float(v) for k, v in decoded.items()})  # type: ignore[arg-type]
    assert got.keys() == want.keys(), path.name
    for row, (name, values) in want.items():
        assert got[row][0] == name
        assert got[row][1].keys() == values.keys(), (name, row)
        for signal, value in values.items():
            mine = got[row][1][signal]
            assert mine == value or (math.isnan(value) and math.isnan(mine)), (name, signal, row)
    c = decoder.counts
    assert (c.frames, c.skipped) == (len(frames), int((frames.is_error | frames.is_remote).sum()))
    assert (c.decoded, c.unknown, c.errors, c.short, c.unmapped) == (len(want), unknown, refused, short, 0)
    assert c.decoded + c.unknown + c.errors + c.skipped == c.frames
    assert short > 0 and len(want) > 0


def test_batch_of_only_error_and_remote_frames_is_skipped() -> None:
    """A batch with no usable frame (a BLF of error frames only) decodes to nothing and counts them."""
    db = load_dbc(DBC_DIR / "hyundai_2015_ccan.dbc")
    n = 4
    frames = FrameBatch(
        t_ns=np.arange(n, dtype=np.int64),
        arbitration_id=np.full(n, db.messages[0].frame_id, np.uint32),
        is_extended=np.zeros(n, np.bool_),
        channel=np.zeros(n, np.int16),
        channels=("can0",),
        dlc=np.full(n, 8, np.uint8),
        data=np.zeros((n, 8), np.uint8),
        is_fd=np.zeros(n, np.bool_),
        bitrate_switch=np.zeros(n, np.bool_),
        is_error=np.array([True, True, False, False]),
        is_remote=np.array([False, False, True, True]),
        is_rx=np.ones(n, np.bool_),
    )
    decoder = FrameDecoder({None: compile_database(db)})
    assert decoder.decode(frames) == []
    c = decoder.counts
    assert (c.frames, c.skipped, c.decoded, c.unknown, c.errors) == (4, 4, 0, 0, 0)
