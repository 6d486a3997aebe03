"""Frames of one bus → columns of catalog signals, through the compiled codecs.

Frames are grouped by arbitration id and each group is decoded in one call of
the message's precompiled codec, so the per-frame cost is a few array
operations rather than a chain of Python calls. Only messages that carry a
mapped signal are decoded. Counters tell what happened to every frame:
decoded, unknown id (no DBC message: normal on a real bus), known but unmapped,
or length mismatch (counted, and logged once per id).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from tcu.signals.codec import MessageCodec, compile_database
from tcu.signals.mapping import Catalog

__all__ = ["DecodeStats", "SignalColumns", "SignalDecoder"]

log = logging.getLogger(__name__)

# One decoded column: (signal id, source times in ns, physical values).
SignalColumns = list[tuple[int, npt.NDArray[np.int64], npt.NDArray[np.float64]]]


@dataclass(slots=True)
class DecodeStats:
    frames: int = 0
    decoded_frames: int = 0
    unknown_frames: int = 0
    unmapped_frames: int = 0
    length_mismatch_frames: int = 0
    signals_decoded: int = 0
    unknown_ids: set[tuple[str, int]] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class _Route:
    codec: MessageCodec
    outputs: tuple[tuple[str, int], ...]  # (DBC signal name, catalog signal id)


class SignalDecoder:
    """Decodes :class:`~tcu.can.FrameBatch`-shaped arrays into catalog signal columns."""

    def __init__(self, catalog: Catalog, databases: Mapping[str, Sequence[Any]]) -> None:
        self.catalog = catalog
        self.stats = DecodeStats()
        self._routes: dict[str, dict[int, _Route]] = {}
        self._known: dict[str, set[int]] = {}
        self._mismatch_logged: set[tuple[str, int]] = set()
        for bus, dbs in databases.items():
            routes: dict[int, _Route] = {}
            known: set[int] = set()
            wanted = [s for s in catalog.signals if s.bus == bus]
            for db in dbs:
                codec_db = compile_database(db)
                for mc in codec_db.messages:
                    key = _key(mc.frame_id, mc.is_extended)
                    known.add(key)
                    outputs = tuple((s.signal, s.signal_id) for s in wanted if s.message == mc.name)
                    if outputs and key not in routes:
                        routes[key] = _Route(mc, outputs)
            self._routes[bus] = routes
            self._known[bus] = known

    def decode(
        self,
        bus: str,
        t_ns: npt.NDArray[np.int64],
        arbitration_id: npt.NDArray[np.uint32],
        is_extended: npt.NDArray[np.bool_],
        data: Sequence[bytes],
    ) -> SignalColumns:
        n = len(data)
        self.stats.frames += n
        if n == 0:
            return []
        routes = self._routes.get(bus, {})
        known = self._known.get(bus, set())
        keys = arbitration_id.astype(np.int64) | (is_extended.astype(np.int64) << 32)
        uniq, inverse = np.unique(keys, return_inverse=True)
        out: SignalColumns = []
        for k, key in enumerate(uniq.tolist()):
            idx = np.flatnonzero(inverse == k)
            route = routes.get(key)
            if route is None:
                if key in known:
                    self.stats.unmapped_frames += len(idx)
                else:
                    self.stats.unknown_frames += len(idx)
                    self.stats.unknown_ids.add((bus, key & 0x1FFFFFFF))
                continue
            length = route.codec.length
            rows = [data[i] for i in idx.tolist()]
            good = [len(r) == length for r in rows]
            if not all(good):
                bad = len(good) - sum(good)
                self.stats.length_mismatch_frames += bad
                if (bus, key) not in self._mismatch_logged:
                    self._mismatch_logged.add((bus, key))
                    log.warning(
                        "bus %s: frames of id 0x%X (%s) have %s bytes, the DBC says %d; "
                        "they are counted and skipped (logged once per id)",
                        bus,
                        key & 0x1FFFFFFF,
                        route.codec.name,
                        sorted({len(r) for r, g in zip(rows, good, strict=True) if not g}),
                        length,
                    )
                mask = np.array(good, dtype=np.bool_)
                idx = idx[mask]
                rows = [r for r, g in zip(rows, good, strict=True) if g]
                if not rows:
                    continue
            payloads = np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(len(rows), length)
            values = route.codec.decode(payloads)
            self.stats.decoded_frames += len(rows)
            times = t_ns[idx]
            for signal_name, signal_id in route.outputs:
                column = values[signal_name]
                present = ~np.isnan(column)
                if present.all():
                    out.append((signal_id, times, column))
                    self.stats.signals_decoded += len(column)
                elif present.any():
                    out.append((signal_id, times[present], column[present]))
                    self.stats.signals_decoded += int(present.sum())
        return out


def _key(frame_id: int, is_extended: bool) -> int:
    return frame_id | (int(is_extended) << 32)
