"""The default periodic campaign: one sample per signal per period.

Time is divided into windows of ``period_ms`` on the CAN source clock
(``floor(t_ns / period_ns)``); the first sample of a signal in each window is
kept with its own source timestamp and value, the rest are dropped. Because the
rule only depends on source times, the expected samples of a drive can be
computed from recorded ground truth alone, whatever speed the agent ran at.
"""

from __future__ import annotations

import numpy as np

from tcu.signals.decoder import SignalColumns
from tcu.signals.mapping import Catalog

__all__ = ["PeriodicSampler"]


class PeriodicSampler:
    def __init__(self, catalog: Catalog) -> None:
        self._period_ns = {s.signal_id: s.period_ms * 1_000_000 for s in catalog.signals}
        self._last_window: dict[int, int] = {}
        self.samples_in = 0
        self.samples_out = 0

    def sample(self, columns: SignalColumns) -> SignalColumns:
        out: SignalColumns = []
        for signal_id, t_ns, values in columns:
            self.samples_in += len(t_ns)
            period = self._period_ns.get(signal_id)
            if period is None or len(t_ns) == 0:
                continue
            windows = t_ns // period
            last = self._last_window.get(signal_id, np.iinfo(np.int64).min)
            # A window is new when it is above every window seen before it.
            previous_max = np.maximum.accumulate(np.concatenate(([last], windows[:-1])))
            keep = windows > previous_max
            if keep.any():
                out.append((signal_id, t_ns[keep], values[keep]))
                self.samples_out += int(keep.sum())
                self._last_window[signal_id] = max(last, int(windows.max()))
        return out
