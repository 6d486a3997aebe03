"""The one decoder: :class:`~tcu.frames.FrameBatch` es → decoded messages → catalog signal columns.

Used by the agent (live buses and ``tcu replay``), ``tcu decode``, ``tcu plot`` and the
benchmarks. :class:`FrameDecoder` decodes every message of a channel's DBCs (or those
selected); :class:`SignalDecoder` wraps it for the agent, selecting the messages that carry
a catalog signal and handing out one column per catalog signal.

How a batch is decoded: error and remote frames are set aside (``skipped``); the other
frames are ordered by (channel, frame key) with **one stable argsort**, so each message's
frames are one slice of the sorted columns, in arrival order, and each slice is decoded
by one call of the message's precompiled codec (:mod:`tcu.signals.codec`).

**Length rule** (that of cantools' ``decode_message(data)`` with its defaults
``allow_truncated=False, allow_excess=True``): a frame whose payload (``dlc``) is at least
the DBC message's length is decoded from the message's first ``length`` bytes (extra bytes
are ignored); a shorter frame is an error (``short``, counted in ``errors`` and logged once
per channel and message), as cantools raises ``DecodeError`` for it.

A frame counts as exactly one of (:class:`DecodeCounts`):

* ``decoded`` — cantools would decode it;
* ``unknown`` — no message with that frame key on its channel (normal: a DBC covers part
  of a real bus); the keys are collected in ``unknown_ids`` as ``(channel, frame key)``;
* ``unmapped`` — a known message not selected (the agent decodes only messages with a
  catalog signal);
* ``errors`` — known, but cantools would raise: payload shorter than the message
  (``short``, a subset of ``errors``), a multiplexer value without a branch, or a message
  that can never decode (overlapping signals loaded with ``strict=False``);
* ``skipped`` — error and remote frames, or a channel without a DBC.

**J1939** (per channel): extended frames whose frame key is not in the DBC are matched by
parameter group number (:func:`j1939_pgn`): priority and source address are ignored, and
for PDU1 groups (PF < 240) the destination address too.

Frame keys follow :func:`tcu.frames.frame_key` (bit 31 marks an extended id).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from cantools.database.can import Database

from tcu.frames import EXTENDED_FLAG, FrameBatch, frame_key
from tcu.signals.codec import DatabaseCodec, Decoded, MessageCodec, compile_database
from tcu.signals.mapping import Catalog

__all__ = [
    "DecodeCounts",
    "FrameDecoder",
    "MessageBlock",
    "SignalColumns",
    "SignalDecoder",
    "compile_codecs",
    "j1939_pgn",
]

log = logging.getLogger(__name__)

SignalColumns = list[tuple[int, npt.NDArray[np.int64], npt.NDArray[np.float64]]]
"""Decoded catalog signals: (signal id, source times in ns, physical values), time-ordered per column."""

OnDecoded = Callable[[SignalColumns], None]


def j1939_pgn(arbitration_id: npt.NDArray[np.uint32] | int) -> npt.NDArray[np.uint32]:
    """Parameter group number of 29-bit ids (PDU1: the destination byte is zeroed)."""
    ident = np.asarray(arbitration_id, dtype=np.uint32)
    pgn = (ident >> np.uint32(8)) & np.uint32(0x3FFFF)
    pdu1 = ((pgn >> np.uint32(8)) & np.uint32(0xFF)) < 240
    out: npt.NDArray[np.uint32] = np.where(pdu1, pgn & np.uint32(0x3FF00), pgn).astype(np.uint32)
    return out


@dataclass(frozen=True, slots=True)
class MessageBlock:
    """Frames of one message on one channel, decoded: ``rows`` index into the batch."""

    bus: str
    codec: MessageCodec
    rows: npt.NDArray[np.intp]
    t_ns: npt.NDArray[np.int64]
    arbitration_id: npt.NDArray[np.uint32]
    decoded: Decoded


@dataclass(slots=True)
class DecodeCounts:
    """What happened to every frame offered (see the module docstring); sums over calls."""

    frames: int = 0
    decoded: int = 0
    unknown: int = 0
    unmapped: int = 0
    errors: int = 0
    short: int = 0
    skipped: int = 0
    signals: int = 0
    """Signal values handed out as catalog columns (:class:`SignalDecoder` only)."""
    unknown_ids: set[tuple[str, int]] = field(default_factory=set)
    decoded_by_bus: dict[str, int] = field(default_factory=dict)
    """``decoded`` per channel name (added once per message block, not per frame)."""
    unknown_by_bus: dict[str, int] = field(default_factory=dict)
    """``unknown`` per channel name."""


class _Channel:
    """The codecs of one channel: lookup by frame key, by PGN with J1939, and the selection."""

    def __init__(
        self, codecs: Sequence[DatabaseCodec], *, j1939: bool, selected: Collection[str] | None
    ) -> None:
        self.by_key: dict[int, MessageCodec] = {}
        for codec in codecs:  # several DBCs on one bus: the first that defines an id wins
            for message in codec.messages:
                self.by_key.setdefault(frame_key(message.frame_id, message.is_extended), message)
        self.by_pgn: dict[int, MessageCodec] = {}
        if j1939:
            for message in self.by_key.values():
                if message.is_extended:
                    self.by_pgn.setdefault(int(j1939_pgn(message.frame_id)), message)
        self.selected = None if selected is None else frozenset(selected)

    def lookup(self, key: int) -> MessageCodec | None:
        found = self.by_key.get(key)
        if found is None and self.by_pgn and key & EXTENDED_FLAG:
            found = self.by_pgn.get(int(j1939_pgn(key & 0x1FFFFFFF)))
        return found


class FrameDecoder:
    """Decode frame batches with a DBC (or several) per channel.

    ``codecs``: channel name → database codec(s); key ``None`` is the default for channels
    not named (omit it to skip unnamed channels). ``j1939``: channels matched by PGN too
    (``True``: all). ``selected``: channel → the message names to decode; other known
    messages count as ``unmapped`` (default: decode every message).
    """

    def __init__(
        self,
        codecs: Mapping[str | None, DatabaseCodec | Sequence[DatabaseCodec]],
        *,
        j1939: bool | Collection[str | None] = False,
        selected: Mapping[str | None, Collection[str]] | None = None,
    ) -> None:
        if not codecs:
            raise ValueError("at least one DBC is needed")
        self._channels: dict[str | None, _Channel] = {}
        for name, given in codecs.items():
            listed = [given] if isinstance(given, DatabaseCodec) else list(given)
            self._channels[name] = _Channel(
                listed,
                j1939=j1939 if isinstance(j1939, bool) else name in j1939,
                selected=None if selected is None else selected.get(name, ()),
            )
        self.counts = DecodeCounts()
        self._reported: set[tuple[str, str, str]] = set()

    def decode(self, frames: FrameBatch) -> list[MessageBlock]:
        """Decode one batch; :attr:`counts` adds up over calls."""
        counts = self.counts
        n = len(frames)
        counts.frames += n
        if n == 0:
            return []
        usable = ~(frames.is_error | frames.is_remote)
        if usable.all():
            rows_all: npt.NDArray[np.intp] = np.arange(n)
            keys = frames.keys()
            chan = frames.channel
        else:
            rows_all = np.flatnonzero(usable)
            counts.skipped += n - len(rows_all)
            if len(rows_all) == 0:  # only error and remote frames (e.g. a BLF of error frames)
                return []
            keys = frames.keys()[rows_all]
            chan = frames.channel[rows_all]
        if len(frames.channels) > 1:
            sort_keys: npt.NDArray[np.unsignedinteger] = (chan.astype(np.uint64) << np.uint64(32)) | keys
        else:
            sort_keys = keys
        # Standard ids fit 16 bits, where numpy's stable sort is a radix sort (about 6x faster).
        if len(sort_keys) and int(sort_keys.max()) < 0x10000:
            order = np.argsort(sort_keys.astype(np.uint16), kind="stable")
        else:
            order = np.argsort(sort_keys, kind="stable")
        sorted_keys = sort_keys[order]
        sorted_rows = rows_all[order]
        # One gather per small column in key order; each message's block is then a slice.
        # Payloads are gathered per block: as one little-endian word per frame for messages
        # within 8 bytes (cheap, and all the word path reads), as rows otherwise.
        dlc = frames.dlc[sorted_rows]
        t_ns = frames.t_ns[sorted_rows]
        ids = frames.arbitration_id[sorted_rows]
        data = frames.data
        words: npt.NDArray[np.uint64] | None = None
        bounds = np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1
        starts_arr = np.concatenate([[0], bounds])
        min_dlc = np.minimum.reduceat(dlc, starts_arr).tolist()
        starts = starts_arr.tolist()
        stops = [*starts[1:], len(sorted_keys)]
        first_keys = sorted_keys[starts_arr].tolist()
        channel_names = frames.channels or ("",)
        multi = len(frames.channels) > 1
        width = data.shape[1]
        blocks: list[MessageBlock] = []
        for start, stop, compound, shortest in zip(starts, stops, first_keys, min_dlc, strict=True):
            bus = channel_names[compound >> 32] if multi else channel_names[0]
            key = compound & 0xFFFFFFFF
            channel = self._channels.get(bus) or self._channels.get(None)
            if channel is None:
                counts.skipped += stop - start
                continue
            message = channel.lookup(key)
            if message is None:
                counts.unknown += stop - start
                counts.unknown_ids.add((bus, key))
                counts.unknown_by_bus[bus] = counts.unknown_by_bus.get(bus, 0) + stop - start
                continue
            if channel.selected is not None and message.name not in channel.selected:
                counts.unmapped += stop - start
                continue
            rows = sorted_rows[start:stop]
            b_t_ns = t_ns[start:stop]
            b_ids = ids[start:stop]
            long_enough: npt.NDArray[np.bool_] | None = None
            if width < message.length or shortest < message.length:
                long_enough = dlc[start:stop] >= message.length
                if width < message.length:
                    long_enough[:] = False
                short = int((~long_enough).sum())
                counts.errors += short
                counts.short += short
                lengths = sorted(set(dlc[start:stop][~long_enough].tolist()))
                self._report_once(
                    bus, message, "short", f"frames have {lengths} bytes, the DBC says {message.length}"
                )
                if not long_enough.any():
                    continue
                rows = rows[long_enough]
                b_t_ns, b_ids = b_t_ns[long_enough], b_ids[long_enough]
            if message.word_path and width >= 8 and width % 8 == 0 and data.flags.c_contiguous:
                if words is None:
                    words = data.view("<u8")[:, 0]  # each payload's first 8 bytes
                decoded = message.decode_words(words[rows])
            else:
                decoded = message.decode_frames(data[rows])
            good = len(rows) if decoded.complete or decoded.ok.all() else int(decoded.ok.sum())
            counts.decoded += good
            counts.decoded_by_bus[bus] = counts.decoded_by_bus.get(bus, 0) + good
            if good < len(rows):
                counts.errors += len(rows) - good
                self._report_once(
                    bus, message, "mux", message.problem or "multiplexer value without a branch"
                )
            blocks.append(
                MessageBlock(
                    bus=bus, codec=message, rows=rows, t_ns=b_t_ns, arbitration_id=b_ids, decoded=decoded
                )
            )
        return blocks

    def _report_once(self, bus: str, message: MessageCodec, kind: str, problem: str) -> None:
        key = (bus, message.name, kind)
        if key in self._reported:
            return
        self._reported.add(key)
        log.warning(
            "bus %s message %s (0x%X): frames not decoded: %s; they are counted (logged once per message)",
            bus,
            message.name,
            message.frame_id,
            problem,
        )


def compile_codecs(databases: Mapping[str, Sequence[Database]]) -> dict[str, list[DatabaseCodec]]:
    """Compile each bus's loaded DBCs once (:func:`~tcu.signals.codec.compile_database`)."""
    return {bus: [compile_database(db) for db in dbs] for bus, dbs in databases.items()}


@dataclass(frozen=True, slots=True)
class _Route:
    outputs: tuple[tuple[str, int], ...]  # (DBC signal name, catalog signal id)


class SignalDecoder:
    """The agent's decoder: frames of its buses → one column per catalog signal.

    ``codecs``: bus name → its compiled DBCs (:func:`compile_codecs`; the first that
    defines an id wins); ``j1939``: the buses whose extended frames are matched by PGN
    too. Only messages that carry a catalog signal are decoded; counters in :attr:`counts`.
    """

    def __init__(
        self,
        catalog: Catalog,
        codecs: Mapping[str, Sequence[DatabaseCodec]],
        *,
        j1939: Collection[str] = (),
    ) -> None:
        self.catalog = catalog
        compiled = codecs
        self._routes: dict[tuple[str, str], _Route] = {}
        selected: dict[str | None, set[str]] = {bus: set() for bus in compiled}
        for spec in catalog.signals:
            if spec.bus not in compiled:
                continue
            route = self._routes.get((spec.bus, spec.message))
            outputs = (*(route.outputs if route else ()), (spec.signal, spec.signal_id))
            self._routes[(spec.bus, spec.message)] = _Route(outputs)
            selected[spec.bus].add(spec.message)
        by_channel: dict[str | None, Sequence[DatabaseCodec]] = {}
        for bus, bus_codecs in compiled.items():
            by_channel[bus] = bus_codecs
        self.frames = FrameDecoder(by_channel, j1939=set(j1939), selected=selected)

    @property
    def counts(self) -> DecodeCounts:
        return self.frames.counts

    def decode(self, frames: FrameBatch) -> SignalColumns:
        """The catalog signals in ``frames``: per message, one column per mapped signal."""
        counts = self.frames.counts
        out: SignalColumns = []
        for block in self.frames.decode(frames):
            route = self._routes[(block.bus, block.codec.name)]
            values, present = block.decoded.values, block.decoded.present
            if block.decoded.complete:  # every signal in every frame: no masks to look at
                for signal_name, signal_id in route.outputs:
                    out.append((signal_id, block.t_ns, values[signal_name]))
                counts.signals += len(block.t_ns) * len(route.outputs)
                continue
            for signal_name, signal_id in route.outputs:
                here = present[signal_name]
                if here.all():
                    out.append((signal_id, block.t_ns, values[signal_name]))
                    counts.signals += len(here)
                elif here.any():
                    out.append((signal_id, block.t_ns[here], values[signal_name][here]))
                    counts.signals += int(here.sum())
        return out
