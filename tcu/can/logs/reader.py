"""Open a CAN log by its suffix and read it as columnar chunks.

======== ============================================ ==========================
suffix   format                                       reader
======== ============================================ ==========================
``.log`` candump ``-L`` (python-can "canutils")       bulk numpy parser (ours)
``.blf`` Vector binary logging format                 bulk numpy parser (ours)
``.asc`` Vector ASCII                                 python-can ``ASCReader``
``.trc`` PEAK trace                                   python-can ``TRCReader``
``.mf4`` ASAM MDF 4 bus logging (needs ``asammdf``)   python-can ``MF4Reader``
======== ============================================ ==========================

Reading streams: memory is bounded by the chunk size, not by the log's length. The path
``-`` reads a candump ``-L`` text stream from stdin (``candump -L can0 | tcu decode -``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from tcu.can.logs.blf import read_blf
from tcu.can.logs.candump import read_candump
from tcu.can.logs.generic import read_with_python_can
from tcu.can.logs.reading import ReadStats
from tcu.errors import LogFormatError
from tcu.frames import FrameBatch

__all__ = ["FORMATS", "LogReader", "open_log"]

FORMATS = ("candump", "blf", "asc", "trc", "mf4")
_SUFFIX = {".log": "candump", ".blf": "blf", ".asc": "asc", ".trc": "trc", ".mf4": "mf4"}


class LogReader:
    """Iterate a log's frames as :class:`FrameBatch` s; ``stats`` fills in as it goes.

    ``fmt`` overrides the suffix (one of :data:`FORMATS`). A missing file raises
    :class:`~tcu.errors.LogFormatError`; corrupt records are counted in ``stats``.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        fmt: str | None = None,
        chunk_frames: int = 65536,
        stream: BinaryIO | None = None,
    ) -> None:
        self.path = Path(path)
        self.stream = stream
        if stream is not None:  # a pipe: only candump -L text can be read as it arrives
            if fmt not in (None, "candump"):
                raise LogFormatError(
                    f"only candump -L text can be read from a stream, not {fmt!r}", path=str(self.path)
                )
            fmt = "candump"
        if fmt is None:
            fmt = _SUFFIX.get(self.path.suffix.lower())
            if fmt is None:
                raise LogFormatError(
                    f"cannot tell the log format from suffix {self.path.suffix!r} (known: "
                    f"{', '.join(sorted(_SUFFIX))})",
                    path=str(self.path),
                )
        if fmt not in FORMATS:
            raise LogFormatError(
                f"unknown log format {fmt!r} (known: {', '.join(FORMATS)})", path=str(self.path)
            )
        if stream is None and not self.path.is_file():
            raise LogFormatError("no such log file", path=str(self.path))
        if chunk_frames < 1:
            raise ValueError("chunk_frames must be >= 1")
        self.fmt = fmt
        self.chunk_frames = chunk_frames
        self.stats = ReadStats(str(self.path))

    def __iter__(self) -> Iterator[FrameBatch]:
        """Chunks of frames; implausible dates (before 2000, in the future) are counted in ``stats``."""
        for chunk in self._chunks():
            self.stats.check_times(chunk)
            yield chunk

    def _chunks(self) -> Iterator[FrameBatch]:
        if self.fmt == "candump":
            return read_candump(self.path, self.stats, chunk_frames=self.chunk_frames, stream=self.stream)
        if self.fmt == "blf":
            return read_blf(self.path, self.stats, chunk_frames=self.chunk_frames)
        return read_with_python_can(self.path, self.stats, chunk_frames=self.chunk_frames)


def open_log(
    path: str | Path, *, fmt: str | None = None, chunk_frames: int = 65536, stream: BinaryIO | None = None
) -> LogReader:
    """A :class:`LogReader` for ``path`` (format from the suffix unless ``fmt`` is given);
    with ``stream``, candump text read from it (``path`` names it in messages)."""
    return LogReader(path, fmt=fmt, chunk_frames=chunk_frames, stream=stream)
