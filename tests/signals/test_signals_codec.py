"""The batch codecs equal cantools' decode_message(decode_choices=False, scaling=True)."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path

import cantools
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tcu.signals import DatabaseCodec, compile_database, load_dbc
from tools.shared_data import shared_path

DBC_DIR = shared_path("can/dbc")
EDGE_DBC = Path(__file__).with_name("edge_cases.dbc")
ALL_DBCS = [*sorted(DBC_DIR.glob("*.dbc")), EDGE_DBC]
FRAMES_PER_MESSAGE = 48


@pytest.fixture(scope="module")
def databases() -> Iterator[list[tuple[Path, cantools.database.can.Database, DatabaseCodec]]]:
    quiet = logging.getLogger("tcu")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # compiling every DBC warns a lot; put back for the tests after these
    out = []
    for path in ALL_DBCS:
        db = load_dbc(path)
        out.append((path, db, compile_database(db)))
    yield out
    quiet.setLevel(level)


def _set_raw(payload: bytearray, signal: cantools.database.can.Signal, raw: int, length: int) -> None:
    """Write a raw value into the signal's bits (the test's own bit arithmetic)."""
    bits = signal.length
    mask = (1 << bits) - 1
    if signal.byte_order == "little_endian":
        value = int.from_bytes(payload[:length], "little")
        value = (value & ~(mask << signal.start)) | ((raw & mask) << signal.start)
        payload[:length] = value.to_bytes(length, "little")
    else:
        msb = 8 * (signal.start // 8) + (7 - signal.start % 8)
        shift = 8 * length - msb - bits
        value = int.from_bytes(payload[:length], "big")
        value = (value & ~(mask << shift)) | ((raw & mask) << shift)
        payload[:length] = value.to_bytes(length, "big")


def _payloads(message: cantools.database.can.Message, rng: np.random.Generator) -> np.ndarray:
    """Random payloads (wider than the message); for multiplexed messages, most frames
    get valid multiplexer values so every branch is exercised."""
    width = message.length + 5
    payloads = rng.integers(0, 256, (FRAMES_PER_MESSAGE, width), dtype=np.uint8)
    payloads[0] = 0
    payloads[1] = 0xFF
    muxes = [s for s in message.signals if s.is_multiplexer]
    if muxes:
        for row in range(2, FRAMES_PER_MESSAGE - 4):
            data = bytearray(payloads[row].tobytes())
            for mux in muxes:
                ids = sorted(
                    {
                        i
                        for s in message.signals
                        if s.multiplexer_signal == mux.name
                        for i in s.multiplexer_ids or ()
                    }
                    | set((mux.conversion.choices or {}).keys())
                )
                if ids:
                    choice = int(ids[rng.integers(0, len(ids))])
                    raw = round((choice - mux.conversion.offset) / mux.conversion.scale)
                    _set_raw(data, mux, raw, message.length)
            payloads[row] = np.frombuffer(bytes(data), dtype=np.uint8)
    return payloads


def _check_message(message: cantools.database.can.Message, codec: DatabaseCodec, payloads: np.ndarray) -> int:
    mc = codec.get(message.frame_id, message.is_extended_frame)
    assert mc is not None, message.name
    got = mc.decode_frames(payloads)
    plain = mc.decode(payloads)
    compared = 0
    for row in range(len(payloads)):
        data = payloads[row].tobytes()
        try:
            want = message.decode(data, decode_choices=False, scaling=True)
        except cantools.database.DecodeError:
            assert not got.ok[row], f"{message.name} row {row}: cantools raises, codec says ok"
            assert all(math.isnan(plain[name][row]) for name in mc.signal_names)
            continue
        assert got.ok[row], f"{message.name} row {row}: cantools decodes, codec flags an error"
        for name in mc.signal_names:
            value = got.values[name][row]
            if name not in want:
                assert not got.present[name][row], f"{message.name}.{name} row {row} should be absent"
                assert math.isnan(value)
                continue
            expected = float(want[name])
            assert got.present[name][row], f"{message.name}.{name} row {row} should be present"
            assert value == expected or (math.isnan(expected) and math.isnan(value)), (
                f"{message.name}.{name} row {row}: {value!r} != {expected!r} (payload {data.hex()})"
            )
            assert plain[name][row] == value or math.isnan(value)
            compared += 1
    return compared


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(min_value=0, max_value=2**32 - 1))
@example(seed=0)
def test_codecs_equal_cantools_for_every_message_of_every_dbc(databases, seed: int) -> None:
    rng = np.random.default_rng(seed)
    compared = 0
    messages = 0
    for _path, db, codec in databases:
        for message in db.messages:
            compared += _check_message(message, codec, _payloads(message, rng))
            messages += 1
    assert messages > 700
    assert compared > 100_000


def test_edge_cases_cover_what_they_claim(databases) -> None:
    _path, db, codec = next(d for d in databases if d[0] == EDGE_DBC)
    wide = codec.get(0x400, True)
    assert wide is not None and wide.length == 24 and wide.is_extended
    assert codec.get(0x400, False) is None
    mux = db.get_message_by_name("Mux")
    payload = bytearray(8)
    _set_raw(payload, mux.get_signal_by_name("sel"), 1, 8)
    _set_raw(payload, mux.get_signal_by_name("b"), 3, 8)
    _set_raw(payload, mux.get_signal_by_name("c"), 0xFE, 8)
    got = codec.get(0x200, False).decode(np.frombuffer(bytes(payload), dtype=np.uint8)[None, :])
    assert got["c"][0] == -1.0  # signed, scale 0.5, nested under b == 3
    assert math.isnan(got["a"][0]) and math.isnan(got["e"][0])
    # a multiplexer value without a branch: cantools raises, the codec flags the frame
    _set_raw(payload, mux.get_signal_by_name("sel"), 6, 8)
    decoded = codec.get(0x200, False).decode_frames(np.frombuffer(bytes(payload), dtype=np.uint8)[None, :])
    assert not decoded.ok[0]
    with pytest.raises(cantools.database.DecodeError):
        mux.decode(bytes(payload), decode_choices=False)


def test_message_that_never_decodes_is_marked_once(caplog) -> None:
    db = load_dbc(DBC_DIR / "toyota_new_mc_pt_flattened.dbc")
    with caplog.at_level(logging.WARNING, logger="tcu.signals.codec"):
        codec = compile_database(db)
    pcs = codec.get(0x411, False)
    assert pcs is not None and not pcs.decodable and pcs.problem
    warnings = [r for r in caplog.records if "PCS_HUD" in r.getMessage()]
    assert len(warnings) == 1
    decoded = pcs.decode_frames(np.zeros((3, 8), dtype=np.uint8))
    assert not decoded.ok.any()
    with pytest.raises(cantools.database.DecodeError):
        db.get_message_by_name("PCS_HUD").decode(bytes(8))


def test_short_payload_array_is_refused() -> None:
    codec = compile_database(load_dbc(EDGE_DBC)).get(0x400, True)
    assert codec is not None
    with pytest.raises(ValueError, match="WideFd"):
        codec.decode(np.zeros((2, 8), dtype=np.uint8))


BROKEN_BRANCH_DBC = """VERSION ""

NS_ :

BS_:

BU_: ECU

BO_ 300 BrokenBranch: 2 ECU
 SG_ sel M : 0|2@1+ (1,0) [0|0] "" ECU
 SG_ ok_sig m0 : 8|8@1+ (1,0) [0|0] "" ECU
 SG_ wide_a m1 : 8|8@1+ (1,0) [0|0] "" ECU
 SG_ wide_b m1 : 4|8@1+ (1,0) [0|0] "" ECU
"""


def test_multiplexer_branch_that_never_decodes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "broken.dbc"
    path.write_text(BROKEN_BRANCH_DBC)
    db = load_dbc(path)  # overlapping signals in branch 1: loaded with strict=False
    with caplog.at_level(logging.WARNING, logger="tcu.signals.codec"):
        codec = compile_database(db).get(300, False)
    assert codec is not None and codec.decodable
    assert codec.broken_branches().keys() == {("sel", 1)}
    assert sum("sel = 1 can never be decoded" in r.getMessage() for r in caplog.records) == 1
    payloads = np.array([[0, 5], [1, 5], [2, 5]], dtype=np.uint8)
    decoded = codec.decode_frames(payloads)
    message = db.get_message_by_name("BrokenBranch")
    for row, data in enumerate(payloads):
        try:
            want = message.decode(data.tobytes(), decode_choices=False)
        except cantools.database.DecodeError:
            assert not decoded.ok[row]
            continue
        assert decoded.ok[row]
        assert {k: decoded.values[k][row] for k in want} == {k: float(v) for k, v in want.items()}
    assert decoded.ok.tolist() == [True, False, False]
