"""Readers of recorded CAN logs that yield columnar :class:`FrameChunk` s, and a replay bus."""

from tcu.can.logs.chunk import FrameChunk, LogProblem, ReadStats, concat_chunks
from tcu.can.logs.reader import FORMATS, LogReader, open_log

__all__ = ["FORMATS", "FrameChunk", "LogProblem", "LogReader", "ReadStats", "concat_chunks", "open_log"]
