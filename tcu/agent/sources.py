"""Signals the agent produces itself (modem, eSIM, spool), next to the ones decoded from CAN.

A :class:`SignalSource` declares its signals (they join the catalog the agent
announces) and runs as a named task of the agent's ``TaskGroup``; it hands
samples to an :class:`Emitter`. Everything runs on the agent's event loop, so
``emit`` is a plain call that adds the sample to the batch being built; such
samples are not subsampled by the periodic campaign (they are events:
a profile switch, a new serving network).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from tcu.collect.batch import BatchBuilder
from tcu.errors import TcuError
from tcu.signals.mapping import Catalog, ExtraSignal

__all__ = ["Emitter", "SignalSource"]


class SignalSource(Protocol):
    name: str
    signals: Sequence[ExtraSignal]

    async def run(self, emit: Emitter) -> None: ...


class Emitter:
    """Adds samples of declared extra signals to the agent's current batch."""

    def __init__(self, catalog: Catalog, builder: BatchBuilder) -> None:
        self._specs = {s.name: s for s in catalog.signals if s.origin}
        self._builder = builder
        self.emitted = 0

    def emit(self, name: str, value: float | str, *, t_ns: int | None = None) -> None:
        spec = self._specs.get(name)
        if spec is None:
            raise TcuError(f"signal {name!r} was not declared by any source")
        when = time.time_ns() if t_ns is None else t_ns
        if spec.value_type == "string":
            self._builder.add_strings(spec.signal_id, [(when, str(value))])
        else:
            if isinstance(value, str):
                raise TcuError(f"signal {name!r} is numeric, got text {value!r}")
            self._builder.add(
                [
                    (
                        spec.signal_id,
                        np.array([when], dtype=np.int64),
                        np.array([float(value)], dtype=np.float64),
                    )
                ]
            )
        self.emitted += 1
