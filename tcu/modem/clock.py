"""Time from the modem's GNSS receiver: RMC fix time, and a clock that follows it (roaming policy time)."""

from __future__ import annotations

import calendar
import time

from tcu.modem.parse import GnssFix

__all__ = ["GnssClock", "fix_time_ns"]


def fix_time_ns(fix: GnssFix) -> int | None:
    """UTC epoch ns of an RMC fix (date and time); None when either is missing or malformed."""
    date, stamp = fix.date, fix.utc_time
    if date is None or len(date) != 6 or len(stamp) < 6 or not (date + stamp[:6]).isdigit():
        return None
    try:
        seconds = float(stamp[4:])
        whole = calendar.timegm(
            (2000 + int(date[4:6]), int(date[2:4]), int(date[0:2]), int(stamp[0:2]), int(stamp[2:4]), 0)
        )
    except ValueError:
        return None
    return whole * 1_000_000_000 + round(seconds * 1e9)


class GnssClock:
    """Policy time: the last GNSS time plus monotonic time since it arrived; wall clock before it.

    :meth:`now_ns` never goes backwards.
    """

    def __init__(self, *, use_gnss: bool = True) -> None:
        self.use_gnss = use_gnss
        self.fixes = 0
        self._gnss_ns: int | None = None
        self._at_mono_ns = 0
        self._last_ns = 0

    def on_fix(self, fix: GnssFix) -> None:
        t_ns = fix_time_ns(fix) if fix.valid else None
        if t_ns is None:
            return
        self.fixes += 1
        self._gnss_ns, self._at_mono_ns = t_ns, time.monotonic_ns()

    @property
    def synced(self) -> bool:
        return self.use_gnss and self._gnss_ns is not None

    def now_ns(self) -> int:
        if self.use_gnss and self._gnss_ns is not None:
            t_ns = self._gnss_ns + (time.monotonic_ns() - self._at_mono_ns)
        else:
            t_ns = time.time_ns()
        self._last_ns = max(self._last_ns, t_ns)
        return self._last_ns
