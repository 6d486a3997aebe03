"""A progress line for long work (decode, plot, replay of large logs) on a terminal.

Drawn on stderr with ``\\r`` at most every ``every_s`` and only when stderr is a terminal;
piped or redirected, nothing is written (the summary lines of the commands still are). With
a ``total`` (bytes of the input file, when the read position can be seen) it is a bar with a
percentage; without, a count and a rate.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from pathlib import Path
from typing import IO

__all__ = ["FilePosition", "Progress"]


class FilePosition:
    """How far into ``path`` this process reads it (Linux: ``/proc/self/fdinfo``); else None."""

    def __init__(self, path: Path) -> None:
        self.path = path.resolve()
        self.size = path.stat().st_size if path.is_file() else 0
        self._fd: int | None = None

    def position(self) -> int | None:
        if not self.size:
            return None
        if self._fd is None:
            try:
                for name in os.listdir("/proc/self/fd"):
                    with contextlib.suppress(OSError):
                        if Path(os.readlink(f"/proc/self/fd/{name}")) == self.path:
                            self._fd = int(name)
                            break
            except OSError:
                return None
            if self._fd is None:
                return None
        try:
            with open(f"/proc/self/fdinfo/{self._fd}") as info:
                for line in info:
                    if line.startswith("pos:"):
                        return int(line.split()[1])
        except OSError:
            self._fd = None
        return None


class Progress:
    """``update(count)`` as work goes on; ``done()`` clears the line. Quiet unless on a TTY."""

    def __init__(
        self,
        label: str,
        *,
        unit: str = "frames",
        file: FilePosition | None = None,
        stream: IO[str] | None = None,
        every_s: float = 0.2,
        enabled: bool | None = None,
        total: int | None = None,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.label = label
        self.unit = unit
        self.file = file
        self.total = total
        """The count that is 100 % (e.g. the frames a replay will send), when the file position cannot say."""
        self.every_s = every_s
        self.started = time.monotonic()
        self._last = float("-inf")  # the first update draws at once, the next ones every every_s
        self.drawn = 0

    def update(self, count: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < self.every_s:
            return
        self._last = now
        rate = count / max(now - self.started, 1e-9)
        text = f"{self.label}: {count:,} {self.unit} ({rate:,.0f}/s)"
        pos = self.file.position() if self.file is not None else None
        fraction: float | None = None
        if pos is not None and self.file is not None and self.file.size:
            fraction = min(1.0, pos / self.file.size)
        elif self.total:
            fraction = min(1.0, count / self.total)
        if fraction is not None:
            width = 20
            filled = int(fraction * width)
            bar = "#" * filled + "." * (width - filled)
            # the label last: on a narrow terminal it is what gets cut
            text = f"[{bar}] {fraction:4.0%}  {count:,} {self.unit} ({rate:,.0f}/s)  {self.label}"
        columns = shutil.get_terminal_size((100, 20)).columns
        self.stream.write("\r" + text[: columns - 1].ljust(min(columns - 1, 79)))
        self.stream.flush()
        self.drawn += 1

    def done(self) -> None:
        if self.enabled and self.drawn:
            columns = shutil.get_terminal_size((100, 20)).columns
            self.stream.write("\r" + " " * (columns - 1) + "\r")
            self.stream.flush()
