"""Durable on-disk spool of encoded telemetry batches: append before sending, ack to free.

See :class:`Spool` for the guarantees and :mod:`tcu.spool.spool` for the directory layout.
"""

from __future__ import annotations

from tcu.errors import SpoolError
from tcu.spool.config import Compression, Durability, SpoolConfig
from tcu.spool.errors import (
    SpoolCorruptError,
    SpoolFullError,
    SpoolLockedError,
    SpoolTooLargeError,
    SpoolUnavailableError,
    SpoolUsageError,
)
from tcu.spool.spool import EvictionReport, Spool, SpoolRecord, SpoolStats, TombstoneReason

__all__ = [
    "Compression",
    "Durability",
    "EvictionReport",
    "Spool",
    "SpoolConfig",
    "SpoolCorruptError",
    "SpoolError",
    "SpoolFullError",
    "SpoolLockedError",
    "SpoolRecord",
    "SpoolStats",
    "SpoolTooLargeError",
    "SpoolUnavailableError",
    "SpoolUsageError",
    "TombstoneReason",
]
