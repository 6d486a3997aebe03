"""The agent's own state as telemetry: spool fill, evictions, disk errors.

Conditions the agent cannot fix itself (a full or read-only disk, evicted
batches, repaired corruption) must reach the backend, not only the local log.
:class:`SpoolHealth` samples the spool every ``period_s`` into
``Vehicle.Tcu.Spool.*`` signals; they are spooled and sent like any other
sample, so a condition that arose offline arrives when the link returns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from tcu.agent.outbox import SpoolOutbox
from tcu.agent.sources import Emitter
from tcu.errors import SpoolError
from tcu.signals.mapping import ExtraSignal

__all__ = ["SpoolHealth"]

_ORIGIN = "agent/spool"
_SIGNALS = (
    ExtraSignal("Vehicle.Tcu.Spool.Bytes", "B", "double", _ORIGIN),
    ExtraSignal("Vehicle.Tcu.Spool.UnackedBatches", "", "double", _ORIGIN),
    ExtraSignal("Vehicle.Tcu.Spool.EvictedBatches", "", "double", _ORIGIN),
    ExtraSignal("Vehicle.Tcu.Spool.RepairedRegions", "", "double", _ORIGIN),
    ExtraSignal("Vehicle.Tcu.Spool.AppendErrors", "", "double", _ORIGIN),
    ExtraSignal("Vehicle.Tcu.Spool.BacklogDropped", "", "double", _ORIGIN),
    ExtraSignal("Vehicle.Tcu.Spool.Error", "", "string", _ORIGIN),
)


class SpoolHealth:
    name: str = "spool-health"
    signals: Sequence[ExtraSignal] = _SIGNALS

    def __init__(self, outbox: SpoolOutbox, *, period_s: float = 10.0) -> None:
        self._outbox = outbox
        self._period_s = period_s
        self._last_error = ""

    async def run(self, emit: Emitter) -> None:
        while True:
            self.sample(emit)
            await asyncio.sleep(self._period_s)

    def sample(self, emit: Emitter) -> None:
        try:
            stats = self._outbox.spool.stats()
        except SpoolError as exc:
            self._error(emit, str(exc))
            return
        emit.emit("Vehicle.Tcu.Spool.Bytes", float(stats.bytes))
        emit.emit("Vehicle.Tcu.Spool.UnackedBatches", float(self._outbox.unacked()))
        emit.emit("Vehicle.Tcu.Spool.EvictedBatches", float(sum(stats.evicted_by_priority.values())))
        emit.emit("Vehicle.Tcu.Spool.RepairedRegions", float(stats.repaired_regions))
        emit.emit("Vehicle.Tcu.Spool.AppendErrors", float(self._outbox.append_errors))
        emit.emit("Vehicle.Tcu.Spool.BacklogDropped", float(self._outbox.backlog_dropped))
        if self._outbox.last_error != self._last_error:
            self._error(emit, self._outbox.last_error)

    def _error(self, emit: Emitter, text: str) -> None:
        self._last_error = text
        emit.emit("Vehicle.Tcu.Spool.Error", text or "ok")
