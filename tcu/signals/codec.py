"""Batch decoders compiled once per DBC message.

A :class:`MessageCodec` decodes an ``(n, L)`` uint8 array of payloads at once with numpy:
for every signal it reads the 8 (or 9) bytes around the signal as one big- or
little-endian uint64 per row, shifts and masks, sign-extends, reinterprets IEEE floats,
applies scale and offset, and works out which multiplexed signals are present.

The results equal cantools' ``Message.decode(data, decode_choices=False, scaling=True)``
value for value (as float64; see ``tests/signals``): the same arithmetic order is used
(``raw * scale + offset``, integer arithmetic where cantools uses Python ints), and a
frame that cantools rejects (a multiplexer value with no branch, a message whose
overlapping signals make cantools' unpacking fail) is flagged in ``Decoded.ok``.

Values of integer signals wider than 53 bits are rounded to the nearest float64, as
``float(value)`` would; cantools returns them as exact Python ints.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from cantools.database.can import Database, Message, Signal
from cantools.database.utils import create_encode_decode_formats

from tcu.errors import DbcError
from tcu.frames import frame_key

__all__ = ["DatabaseCodec", "Decoded", "MessageCodec", "compile_database"]

log = logging.getLogger(__name__)

U8Array = npt.NDArray[np.uint8]
F64Array = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
_U64 = npt.NDArray[np.uint64]

_INT64_LIMIT = 2**62  # conservative bound below which int64 arithmetic cannot overflow
_FLOAT_EXACT_LIMIT = 2**53  # integers below this are exact in float64


@dataclass(frozen=True, slots=True)
class Decoded:
    """Result of :meth:`MessageCodec.decode_frames`.

    ``values[name]``: float64[n], NaN where absent; ``present[name]``: bool[n], where
    cantools would return the signal; ``ok``: bool[n], False where cantools would raise.
    """

    values: dict[str, F64Array]
    present: dict[str, BoolArray]
    ok: BoolArray
    complete: bool = False
    """Every signal is present in every row (no multiplexing, nothing refused)."""


@dataclass(frozen=True, slots=True)
class _SignalPlan:
    name: str
    big_endian: bool
    byte0: int  # first byte of the 8-byte window
    shift: int  # right shift of the window word
    length: int
    extra_byte: int  # -1, or index of a 9th byte needed for wide unaligned signals
    extra_shift: int  # left shift of that 9th byte into the result
    signed: bool
    float_bits: int  # 0 for integer signals, else 16/32/64
    scale: int | float
    offset: int | float
    kind: str  # "identity" | "int" | "linear"
    int_bound: int  # max |raw * scale + offset| for the "int" kind
    parent: str | None  # multiplexer signal name
    mux_ids: frozenset[int] | None
    is_multiplexer: bool
    children_ids: frozenset[int]  # branches of this multiplexer (empty: never checked)
    word_shift: int  # right shift within the payload's first 8 bytes as one word; -1: not there


class MessageCodec:
    """Batch decoder of one DBC message (compiled by :func:`compile_database`)."""

    name: str
    frame_id: int
    is_extended: bool
    length: int
    signal_names: tuple[str, ...]
    decodable: bool
    problem: str | None
    cycle_time_ms: float | None
    """The DBC's ``GenMsgCycleTime`` (cantools' ``cycle_time``) when it is > 0, else None."""

    def __init__(self, message: Message) -> None:
        self.name = message.name
        self.frame_id = int(message.frame_id)
        self.is_extended = bool(message.is_extended_frame)
        self.length = int(message.length)
        cycle = message.cycle_time
        self.cycle_time_ms = float(cycle) if isinstance(cycle, int | float) and cycle > 0 else None
        signals: list[Signal] = list(message.signals)
        self.signal_names = tuple(s.name for s in signals)
        self._plans = [_plan(s, signals, self.length) for s in signals]
        # Order so that every multiplexer is evaluated before its children.
        self._order = _topological(self._plans)
        self._broken_branches = _broken_branches(message, signals, self.length)
        self._short = self.length <= 8 and all(p.word_shift >= 0 for p in self._plans)
        self._has_big = any(p.big_endian for p in self._plans)
        self._word = _WordPlan.of(self._plans) if self._short else None
        self.problem = self._broken_branches.get((None, None))
        self.decodable = self.problem is None

    def __repr__(self) -> str:
        return (
            f"MessageCodec({self.name!r}, frame_id=0x{self.frame_id:X}, "
            f"extended={self.is_extended}, length={self.length})"
        )

    @property
    def word_path(self) -> bool:
        """Whether :meth:`decode_words` serves this message (every signal a plain integer
        within the payload's first 8 bytes, no multiplexing)."""
        return self._word is not None and self.decodable

    def decode_words(self, little: _U64) -> Decoded:
        """Decode payloads given as their first 8 bytes read as one little-endian uint64 each
        (bytes past the message's length are never read); only when :attr:`word_path`.
        Equals :meth:`decode_frames` of the same payloads."""
        if self._word is None or not self.decodable:
            raise ValueError(f"{self.name}: not a message of one 8-byte word")
        return self._word.decode_words(little, self.signal_names)

    def decode(self, payloads: U8Array) -> dict[str, F64Array]:
        """Physical values per signal: float64[n], NaN where cantools has no value."""
        return self.decode_frames(payloads).values

    def decode_frames(self, payloads: U8Array) -> Decoded:
        """Decode ``payloads`` (uint8, shape (n, L), L >= length); see :class:`Decoded`.

        Arrays in the result may be shared between signals (e.g. one all-True
        ``present`` array): treat them as read-only.
        """
        if payloads.ndim != 2 or payloads.shape[1] < self.length:
            raise ValueError(
                f"{self.name}: payloads must have shape (n, >= {self.length}), got {payloads.shape}"
            )
        n = payloads.shape[0]
        if not self.decodable or n == 0:
            ok = np.full(n, self.decodable, dtype=np.bool_)
            return Decoded(
                {s: np.full(n, np.nan) for s in self.signal_names},
                {s: np.zeros(n, dtype=np.bool_) for s in self.signal_names},
                ok,
            )
        if self._word is not None:
            return self._word.decode(payloads, self.length, self.signal_names)
        with np.errstate(all="ignore"):  # NaN/inf float payloads are values, not faults
            return self._decode(payloads, n)

    def _decode(self, payloads: U8Array, n: int) -> Decoded:
        ok = np.ones(n, dtype=np.bool_)
        all_ok = True
        everywhere = np.ones(n, dtype=np.bool_)
        everywhere.flags.writeable = False
        values: dict[str, F64Array] = {}
        present: dict[str, BoolArray] = {}
        extract = self._extractor(payloads, n)
        mux_ints: dict[str, npt.NDArray[np.int64]] = {}
        for plan in self._order:
            if plan.parent is None:
                here = everywhere
            elif plan.parent in mux_ints and plan.mux_ids is not None:
                here = present[plan.parent] & _isin(mux_ints[plan.parent], plan.mux_ids)
            else:
                here = np.zeros(n, dtype=np.bool_)
            value = _physical(plan, extract(plan))
            present[plan.name] = here
            values[plan.name] = value
            if plan.is_multiplexer:
                finite = np.isfinite(value)
                mux = np.where(finite, np.trunc(value), -1).astype(np.int64)
                mux_ints[plan.name] = mux
                if plan.children_ids:
                    bad = here & (~finite | ~_isin(mux, plan.children_ids))
                    if bad.any():
                        ok &= ~bad
                        all_ok = False
                for mux_id, _problem in self._branch_problems(plan.name):
                    bad = here & (mux == mux_id)
                    if bad.any():
                        ok &= ~bad
                        all_ok = False
        for plan in self._order:
            name = plan.name
            if all_ok:
                if plan.parent is not None:
                    values[name] = np.where(present[name], values[name], np.nan)
                continue
            keep = present[name] & ok
            present[name] = keep
            values[name] = np.where(keep, values[name], np.nan)
        return Decoded(values, present, ok)

    def _extractor(self, payloads: U8Array, n: int) -> Callable[[_SignalPlan], _U64]:
        """A function giving each signal's raw bits (uint64 per frame)."""
        if self._short:
            block = np.zeros((n, 8), dtype=np.uint8)
            block[:, : self.length] = payloads[:, : self.length]
            little = block.view("<u8").ravel()
            big = block.view(">u8").ravel().astype(np.uint64) if self._has_big else little

            def from_word(plan: _SignalPlan) -> _U64:
                word = big if plan.big_endian else little
                if plan.word_shift:
                    word = word >> np.uint64(plan.word_shift)
                if plan.length < 64:
                    word = word & np.uint64((1 << plan.length) - 1)
                return word

            return from_word
        width = self.length + 9
        buf = np.zeros((n, width), dtype=np.uint8)
        buf[:, : self.length] = payloads[:, : self.length]

        def from_window(plan: _SignalPlan) -> _U64:
            return _raw_bits(plan, buf, width)

        return from_window

    def broken_branches(self) -> dict[tuple[str, int], str]:
        """(multiplexer, value) → why frames selecting that branch never decode."""
        return {
            (parent, mux_id): problem
            for (parent, mux_id), problem in self._broken_branches.items()
            if parent is not None and mux_id is not None
        }

    def _branch_problems(self, mux_name: str) -> Iterable[tuple[int, str]]:
        for (parent, mux_id), problem in self._broken_branches.items():
            if parent == mux_name and mux_id is not None:
                yield mux_id, problem


class DatabaseCodec:
    """All message codecs of one database, looked up by (arbitration_id, is_extended)."""

    messages: tuple[MessageCodec, ...]

    def __init__(self, messages: Iterable[MessageCodec]) -> None:
        self.messages = tuple(messages)
        self._by_key: dict[int, MessageCodec] = {}
        self._by_name: dict[str, MessageCodec] = {}
        for codec in self.messages:
            self._by_key[frame_key(codec.frame_id, codec.is_extended)] = codec
            self._by_name.setdefault(codec.name, codec)

    def get(self, arbitration_id: int, is_extended: bool) -> MessageCodec | None:
        """The codec of that id, or None if the database does not define it."""
        return self._by_key.get(frame_key(arbitration_id, is_extended))

    def by_name(self, name: str) -> MessageCodec | None:
        """The codec of the message named ``name``, or None."""
        return self._by_name.get(name)

    def __len__(self) -> int:
        return len(self.messages)


def compile_database(db: Database) -> DatabaseCodec:
    """Compile every message of ``db``. Messages cantools can never decode are kept
    but marked (``decodable = False``, ``problem``) and reported once here."""
    codecs: list[MessageCodec] = []
    for message in db.messages:
        if message.is_container:
            log.warning(
                "message %s (0x%X) is an AUTOSAR container; not decoded", message.name, message.frame_id
            )
            continue
        try:
            codec = MessageCodec(message)
        except (ValueError, TypeError) as exc:
            raise DbcError(f"message {message.name}: cannot compile: {exc}") from exc
        if not codec.decodable:
            log.warning(
                "message %s (0x%X) can never be decoded (%s); its frames will be counted as errors",
                codec.name,
                codec.frame_id,
                codec.problem,
            )
        else:
            for (mux_name, mux_id), problem in codec.broken_branches().items():
                log.warning(
                    "message %s (0x%X): frames with %s = %s can never be decoded (%s); counted as errors",
                    codec.name,
                    codec.frame_id,
                    mux_name,
                    mux_id,
                    problem,
                )
        codecs.append(codec)
    return DatabaseCodec(codecs)


def _isin(values: npt.NDArray[np.int64], ids: frozenset[int]) -> BoolArray:
    if len(ids) == 1:
        (only,) = ids
        same: BoolArray = values == only
        return same
    found: BoolArray = np.isin(values, np.fromiter(ids, dtype=np.int64, count=len(ids)))
    return found


def _plan(signal: Signal, signals: list[Signal], length: int) -> _SignalPlan:
    bits = int(signal.length)
    conversion = signal.conversion
    is_float = bool(conversion.is_float)
    if is_float and bits not in (16, 32, 64):
        raise ValueError(f"signal {signal.name}: float signals must be 16, 32 or 64 bits, not {bits}")
    if signal.byte_order == "big_endian":
        msb = 8 * (signal.start // 8) + (7 - signal.start % 8)  # network bit order
        byte0 = msb // 8
        first = msb - 8 * byte0  # bit position inside the window, from its MSB
        end = first + bits
        if end <= 64:
            shift, extra, extra_shift = 64 - end, -1, 0
        else:  # needs a 9th byte: take the low (end - 64) bits from it
            low = end - 64
            shift, extra, extra_shift = 0, byte0 + 8, low
            # result = (word << low) | (byte9 >> (8 - low)); encoded via negative shift
            shift = -low
        big = True
    else:
        byte0 = signal.start // 8
        first = signal.start - 8 * byte0
        if first + bits <= 64:
            shift, extra, extra_shift = first, -1, 0
        else:
            shift, extra, extra_shift = first, byte0 + 8, 64 - first
        big = False
    scale = conversion.scale
    offset = conversion.offset
    if scale == 1 and offset == 0:
        kind = "identity"
    elif not is_float and _is_int(scale) and _is_int(offset):
        kind = "int"
        scale, offset = int(scale), int(offset)
    else:
        kind = "linear"
    max_raw = 2**bits
    bound = max_raw * abs(int(scale)) + abs(int(offset)) if kind == "int" else 0
    children: set[int] = set()
    if signal.is_multiplexer:
        for other in signals:
            if other.multiplexer_signal == signal.name and other.multiplexer_ids is not None:
                children.update(int(i) for i in other.multiplexer_ids)
        if conversion.choices:
            children.update(int(k) for k in conversion.choices)
    if big:
        end_bit = msb + bits
        word_shift = 64 - end_bit if end_bit <= min(64, 8 * length) else -1
    else:
        word_shift = signal.start if signal.start + bits <= min(64, 8 * length) else -1
    parent = signal.multiplexer_signal
    mux_ids = None if signal.multiplexer_ids is None else frozenset(int(i) for i in signal.multiplexer_ids)
    return _SignalPlan(
        name=signal.name,
        big_endian=big,
        byte0=byte0,
        shift=shift,
        length=bits,
        extra_byte=extra,
        extra_shift=extra_shift,
        signed=bool(signal.is_signed) and not is_float,
        float_bits=bits if is_float else 0,
        scale=scale,
        offset=offset,
        kind=kind,
        int_bound=bound,
        parent=parent,
        mux_ids=mux_ids,
        is_multiplexer=bool(signal.is_multiplexer),
        children_ids=frozenset(children),
        word_shift=word_shift,
    )


class _WordPlan:
    """All signals of a simple message at once: one ``(k, n)`` array of shifts, masks and scaling.

    Taken when the message fits one 8-byte word and every signal is a plain integer
    signal (no multiplexing, no IEEE float) of at most 53 bits whose ``raw * scale +
    offset`` float64 arithmetic equals cantools' (Python numbers: an int scale keeps
    ``|raw * scale|`` below 2**53, where float64 is exact; a float scale is float
    arithmetic on both sides).
    """

    __slots__ = (
        "big",
        "has_big",
        "has_offset",
        "has_scale",
        "has_signed",
        "mask",
        "offset",
        "scale",
        "shift",
        "up",
    )

    def __init__(self, plans: list[_SignalPlan]) -> None:
        self.shift = np.array([p.word_shift for p in plans], np.uint64)[:, None]
        self.mask = np.array([(1 << p.length) - 1 for p in plans], np.uint64)[:, None]
        self.up = np.array([64 - p.length if p.signed else 0 for p in plans], np.uint64)[:, None]
        self.scale = np.array([float(p.scale) for p in plans], np.float64)[:, None]
        self.offset = np.array([float(p.offset) for p in plans], np.float64)[:, None]
        self.big = np.array([p.big_endian for p in plans], np.bool_)[:, None]
        self.has_big = bool(self.big.any())
        self.has_signed = bool(self.up.any())
        self.has_scale = bool((self.scale != 1.0).any())
        self.has_offset = bool((self.offset != 0.0).any())

    @classmethod
    def of(cls, plans: list[_SignalPlan]) -> _WordPlan | None:
        for p in plans:
            if p.parent is not None or p.is_multiplexer or p.float_bits or p.length > 53:
                return None
            if (
                isinstance(p.scale, int)
                and (1 << p.length) * abs(p.scale) + abs(p.offset) >= _FLOAT_EXACT_LIMIT
            ):
                return None
            if not isinstance(p.offset, int | float) or abs(p.offset) >= _FLOAT_EXACT_LIMIT:
                return None
        return cls(plans) if plans else None

    def decode(self, payloads: U8Array, length: int, names: tuple[str, ...]) -> Decoded:
        n = payloads.shape[0]
        # Every signal's bits lie in the message's first ``length`` bytes (``word_shift >= 0``),
        # so the bytes after them, whatever they hold, are never read.
        if payloads.shape[1] == 8 and payloads.flags.c_contiguous:
            block = payloads
        elif payloads.shape[1] >= 8:
            block = np.ascontiguousarray(payloads[:, :8])
        else:
            block = np.zeros((n, 8), dtype=np.uint8)
            block[:, :length] = payloads[:, :length]
        return self.decode_words(block.view("<u8").reshape(n), names)

    def decode_words(self, little: _U64, names: tuple[str, ...]) -> Decoded:
        """Decode from each payload's first 8 bytes read as one little-endian uint64."""
        n = little.shape[0]
        word = little.reshape(1, n)
        if self.has_big:
            word = np.where(self.big, little.byteswap().reshape(1, n), word)
        raw = (word >> self.shift) & self.mask
        # Steps that change nothing for this message are skipped (x * 1.0 and x + 0.0 are
        # exact, and a shift by 0 is the identity), so the values are the same.
        if self.has_signed:
            ints = (raw << self.up).view(np.int64) >> self.up.view(np.int64)
            matrix = ints.astype(np.float64)
        else:  # every raw value is below 2**53: as uint64 or int64, the same float64
            matrix = raw.astype(np.float64)
        if self.has_scale:
            matrix *= self.scale
        if self.has_offset:
            matrix += self.offset
        everywhere = _everywhere(n)
        values = dict(zip(names, matrix, strict=True))
        return Decoded(values, dict.fromkeys(names, everywhere), everywhere, complete=True)


_ONES: list[BoolArray] = [np.ones(0, dtype=np.bool_)]


def _everywhere(n: int) -> BoolArray:
    """A read-only all-True bool[n] (a view of one shared buffer, grown when needed)."""
    ones = _ONES[0]
    if len(ones) < n:
        ones = np.ones(max(n, 2 * len(ones), 4096), dtype=np.bool_)
        ones.flags.writeable = False
        _ONES[0] = ones
    view: BoolArray = ones[:n]
    return view


def _is_int(value: Any) -> bool:
    if isinstance(value, int):
        return True
    return isinstance(value, float) and value.is_integer()


def _topological(plans: list[_SignalPlan]) -> list[_SignalPlan]:
    by_name = {p.name: p for p in plans}
    done: set[str] = set()
    order: list[_SignalPlan] = []

    def visit(plan: _SignalPlan, depth: int) -> None:
        if plan.name in done:
            return
        parent = by_name.get(plan.parent) if plan.parent is not None else None
        if parent is not None and depth < len(plans):
            visit(parent, depth + 1)
        done.add(plan.name)
        order.append(plan)

    for plan in plans:
        visit(plan, 0)
    return order


def _broken_branches(
    message: Message, signals: list[Signal], length: int
) -> dict[tuple[str | None, int | None], str]:
    """Codec-tree nodes whose bitstruct formats cannot unpack (cantools raises for any data).

    Keys are (multiplexer name, multiplexer id); (None, None) is the root node.
    The tree is built the way cantools' ``Message._create_codec`` builds it.
    """
    broken: dict[tuple[str | None, int | None], str] = {}
    zeros = bytes(length)

    def node_signals(parent: str | None, mux_id: int | None) -> list[Signal]:
        chosen = []
        for s in signals:
            if s.multiplexer_signal != parent:
                continue
            if mux_id is not None and (s.multiplexer_ids is None or mux_id not in s.multiplexer_ids):
                continue
            chosen.append(s)
        return chosen

    def walk(parent: str | None, mux_id: int | None, depth: int) -> None:
        chosen = node_signals(parent, mux_id)
        formats = create_encode_decode_formats(chosen, length)
        try:
            formats.big_endian.unpack(zeros)
            formats.little_endian.unpack(zeros)
        except Exception as exc:  # bitstruct raises its own Error or ValueError
            names = ", ".join(s.name for s in chosen)
            broken[(parent, mux_id)] = f"signals do not fit in {length} bytes ({names}): {exc}"
            return
        if depth > len(signals):
            return
        for s in chosen:
            if not s.is_multiplexer:
                continue
            ids: set[int] = set()
            for child in signals:
                if child.multiplexer_signal == s.name and child.multiplexer_ids is not None:
                    ids.update(child.multiplexer_ids)
            if s.conversion.choices:
                ids.update(int(k) for k in s.conversion.choices)
            for child_id in ids:
                walk(s.name, child_id, depth + 1)

    walk(None, None, 0)
    return broken


def _window(buf: U8Array, width: int, byte0: int, big: bool) -> _U64:
    """One uint64 per row read from bytes byte0..byte0+7 (unaligned view, no copy)."""
    dtype = np.dtype(">u8" if big else "<u8")
    view: np.ndarray[Any, np.dtype[Any]] = np.ndarray(
        shape=(buf.shape[0],), dtype=dtype, buffer=buf, offset=byte0, strides=(width,)
    )
    return view.astype(np.uint64)


def _raw_bits(plan: _SignalPlan, buf: U8Array, width: int) -> _U64:
    word = _window(buf, width, plan.byte0, plan.big_endian)
    bits = plan.length
    if plan.extra_byte < 0:
        if plan.shift:
            word >>= np.uint64(plan.shift)
    elif plan.big_endian:
        low = -plan.shift
        nxt = buf[:, plan.extra_byte].astype(np.uint64)
        word = (word << np.uint64(low)) | (nxt >> np.uint64(8 - low))
    else:
        nxt = buf[:, plan.extra_byte].astype(np.uint64)
        word = (word >> np.uint64(plan.shift)) | (nxt << np.uint64(plan.extra_shift))
    if bits < 64:
        word &= np.uint64((1 << bits) - 1)
    return word


def _physical(plan: _SignalPlan, raw: _U64) -> F64Array:
    bits = plan.length
    if plan.float_bits == 64:
        value = raw.view(np.float64).copy()
    elif plan.float_bits == 32:
        value = raw.astype(np.uint32).view(np.float32).astype(np.float64)
    elif plan.float_bits == 16:
        value = raw.astype(np.uint16).view(np.float16).astype(np.float64)
    else:
        if plan.signed:
            up = np.uint64(64 - bits)
            ints = (raw << up).view(np.int64) >> np.int64(64 - bits)
            return _scale_int(plan, ints)
        return _scale_uint(plan, raw)
    if plan.kind == "identity":
        return value
    result: F64Array = value * float(plan.scale) + plan.offset
    return result


def _scale_int(plan: _SignalPlan, ints: npt.NDArray[np.int64]) -> F64Array:
    if plan.kind == "identity":
        return ints.astype(np.float64)
    if plan.kind == "int":
        if plan.int_bound < _FLOAT_EXACT_LIMIT:
            return _int_in_float(ints.astype(np.float64), plan)
        if plan.int_bound < _INT64_LIMIT:
            return (ints * np.int64(plan.scale) + np.int64(plan.offset)).astype(np.float64)
        return _exact(ints, plan)
    return _linear(ints.astype(np.float64), plan)


def _scale_uint(plan: _SignalPlan, raw: _U64) -> F64Array:
    if plan.kind == "identity":
        return raw.astype(np.float64)
    if plan.kind == "int":
        if plan.int_bound < _FLOAT_EXACT_LIMIT:
            return _int_in_float(raw.astype(np.float64), plan)
        if plan.int_bound < _INT64_LIMIT:
            return (raw.astype(np.int64) * np.int64(plan.scale) + np.int64(plan.offset)).astype(np.float64)
        return _exact(raw, plan)
    if plan.length > 53 and isinstance(plan.scale, int):
        return _exact(raw, plan)
    return _linear(raw.astype(np.float64), plan)


def _int_in_float(raw: F64Array, plan: _SignalPlan) -> F64Array:
    # Every intermediate is an integer below 2**53, so float64 arithmetic is exact and
    # equals cantools' Python-int result converted to float.
    if plan.scale != 1:
        raw *= float(plan.scale)
    if plan.offset != 0:
        raw += float(plan.offset)
    return raw


def _linear(raw: F64Array, plan: _SignalPlan) -> F64Array:
    # cantools: raw * scale + offset with Python numbers; an int scale times an int raw is
    # exact there, and equally exact here while raw * scale stays below 2**53.
    result: F64Array = raw * plan.scale + plan.offset
    return result


def _exact(raw: npt.NDArray[Any], plan: _SignalPlan) -> F64Array:
    """Python-number arithmetic per element, for the rare very wide signals."""
    scale, offset = plan.scale, plan.offset
    return np.fromiter(
        (float(int(r) * scale + offset) for r in raw.tolist()), dtype=np.float64, count=len(raw)
    )
