"""Rate-limited log lines for paths a misbehaving or hostile peer can trigger at will.

A client that retries a refused certificate or a malformed batch in a tight loop must
not be able to flood the service's log (and its disk). :class:`RateLimitedLog` lets
``burst`` lines per key through in each ``interval_s`` window; the rest are counted,
and the next line let through for that key says how many were suppressed
(``suppressed_total`` counts them all, also those of a key that went quiet). Keys are
whatever identifies the source (peer identity, vehicle, reason); the number of keys
tracked is bounded (the oldest windows are forgotten first).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

__all__ = ["RateLimitedLog"]


@dataclass(slots=True)
class _Window:
    start: float
    lines: int = 0
    suppressed: int = 0


class RateLimitedLog:
    """``log(key, level, msg, *args)``: ``logger.log`` with at most ``burst`` lines per key and window."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        burst: int = 5,
        interval_s: float = 60.0,
        max_keys: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self.burst = burst
        self.interval_s = interval_s
        self.max_keys = max_keys
        self._clock = clock
        self._windows: OrderedDict[Hashable, _Window] = OrderedDict()
        self.suppressed_total = 0

    def log(self, key: Hashable, level: int, msg: str, *args: object) -> bool:
        """Log the line unless the key is over its budget; True when it was logged."""
        now = self._clock()
        window = self._windows.get(key)
        carried = 0
        if window is None or now - window.start >= self.interval_s:
            carried = window.suppressed if window is not None else 0
            window = _Window(now)
            self._windows[key] = window
            self._windows.move_to_end(key)
            while len(self._windows) > self.max_keys:
                self._windows.popitem(last=False)
        if window.lines >= self.burst:
            window.suppressed += 1
            self.suppressed_total += 1
            return False
        window.lines += 1
        if carried:
            msg = f"{msg} ({carried} similar lines suppressed in the last {self.interval_s:g} s)"
        self._logger.log(level, msg, *args)
        return True
