"""Readers of recorded CAN logs that yield columnar :class:`~tcu.frames.FrameBatch` es, and a replay bus."""

from tcu.can.logs.reader import FORMATS, LogReader, open_log
from tcu.can.logs.reading import LogProblem, ReadStats, to_messages

__all__ = ["FORMATS", "LogProblem", "LogReader", "ReadStats", "open_log", "to_messages"]
