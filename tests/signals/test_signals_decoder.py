"""The one decoder (FrameDecoder) equals cantools' decode_message frame by frame, for every shared DBC.

Frames of every message of a DBC, in a shuffled order, with payloads shorter than, as long
as and longer than the message, among unknown ids and error/remote frames: the decoder's
blocks must hold exactly the frames cantools decodes (``db.decode_message(id, data,
decode_choices=False)`` with its default length rule), with the same values, and its
counts must say what happened to the others.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import cantools
import numpy as np
import pytest

from tcu.frames import FrameBatch, concat_frames
from tcu.signals import compile_database, load_dbc
from tcu.signals.decoder import DecodeCounts, FrameDecoder, MessageBlock

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


def _values(blocks: list[MessageBlock]) -> dict[tuple[str, int], tuple[str, dict[str, float]]]:
    out: dict[tuple[str, int], tuple[str, dict[str, float]]] = {}
    for block in blocks:
        for k, row in enumerate(block.rows.tolist()):
            if block.decoded.ok[k]:
                names = block.codec.signal_names
                out[block.bus, row] = (
                    block.codec.name,
                    {n: float(block.decoded.values[n][k]) for n in names if block.decoded.present[n][k]},
                )
    return out


def test_a_multi_bus_batch_decodes_like_each_bus_alone_with_its_own_dbc_and_j1939() -> None:
    """The agent's tick batch: several buses in one call, each with its DBC (and J1939 on one)."""
    rng = np.random.default_rng(12)
    names = {
        "pt": "toyota_new_mc_pt_flattened.dbc",
        "adas": "toyota_adas.dbc",
        "truck": "CSS-Electronics-SAE-J1939-DEMO.dbc",
    }
    dbs = {bus: load_dbc(DBC_DIR / name) for bus, name in names.items()}
    alone = {bus: _frames(db, rng).renamed((bus,)) for bus, db in dbs.items()}
    truck = alone["truck"]  # other source addresses: only a PGN match finds these
    sa = np.where(truck.is_extended, (truck.arbitration_id & 0x1FFFFF00) | 0x3D, truck.arbitration_id)
    alone["truck"] = dataclasses.replace(truck, arbitration_id=sa.astype(np.uint32))
    buses = tuple(names)
    parts = [alone[b] for b in buses]
    # Interleave the buses' frames in a random arrival order (each bus keeps its own order).
    owner = rng.permutation(np.repeat(np.arange(len(buses)), [len(p) for p in parts]))
    local = np.zeros(len(owner), np.intp)
    for i in range(len(buses)):
        local[owner == i] = np.arange(len(parts[i]))
    offsets = np.cumsum([0] + [len(p) for p in parts[:-1]])
    pick = offsets[owner] + local  # merged row -> row of the concatenated parts
    every = concat_frames([p.renamed(("",)) for p in parts])
    merged = dataclasses.replace(every.select(pick), channel=owner.astype(np.int16), channels=buses)
    codecs = {bus: compile_database(db) for bus, db in dbs.items()}
    one = FrameDecoder(codecs, j1939=["truck"])
    got = _values(one.decode(merged))
    want: dict[tuple[str, int], tuple[str, dict[str, float]]] = {}
    total = DecodeCounts()
    for i, bus in enumerate(buses):
        single = FrameDecoder({bus: codecs[bus]}, j1939=[bus] if bus == "truck" else [])
        rows = np.flatnonzero(owner == i)
        for (b, k), value in _values(single.decode(alone[bus])).items():
            want[b, int(rows[k])] = value
        for field in ("frames", "decoded", "unknown", "unmapped", "errors", "short", "skipped"):
            setattr(total, field, getattr(total, field) + getattr(single.counts, field))
        total.unknown_ids |= single.counts.unknown_ids
        total.decoded_by_bus.update(single.counts.decoded_by_bus)  # one bus each: a union
        total.unknown_by_bus.update(single.counts.unknown_by_bus)
    assert got.keys() == want.keys()
    for key, (name, values) in want.items():
        assert got[key][0] == name
        assert got[key][1] == values or all(
            a == b or (math.isnan(a) and math.isnan(b))
            for a, b in zip(got[key][1].values(), values.values(), strict=True)
        ), key
    assert one.counts == total
    assert {b for b, _ in got} == set(buses)
    truck_decoded = sum(1 for b, _ in got if b == "truck")
    assert truck_decoded > 0 and not set(alone["truck"].arbitration_id.tolist()) & {
        m.frame_id for m in dbs["truck"].messages if m.is_extended_frame
    }  # every truck frame was found by its PGN


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
