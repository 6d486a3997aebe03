"""Errors of the spool, all below :class:`tcu.errors.SpoolError`::

SpoolError
├── SpoolUnavailableError  the directory cannot be created, opened or locked for writing
│   └── SpoolLockedError   another Spool (this or another process) holds the directory
├── SpoolFullError         the disk or file-size limit refused a write (ENOSPC, EDQUOT, EFBIG)
│   │                      even after eviction made room; nothing was stored
│   └── SpoolTooLargeError one payload is larger than max_bytes (it never fits)
├── SpoolCorruptError      stored bytes failed their checksum when read back, or the
│                          directory's state file is missing or unreadable
└── SpoolUsageError        the caller broke the contract (also a ValueError)
"""

from __future__ import annotations

from tcu.errors import SpoolError

__all__ = [
    "SpoolCorruptError",
    "SpoolError",
    "SpoolFullError",
    "SpoolLockedError",
    "SpoolTooLargeError",
    "SpoolUnavailableError",
    "SpoolUsageError",
]


class SpoolUnavailableError(SpoolError):
    """The spool directory cannot be created, opened or written; the message names the path."""


class SpoolLockedError(SpoolUnavailableError):
    """Another open Spool holds the directory's lock."""


class SpoolFullError(SpoolError):
    """The disk refused a write or the payload exceeds the byte bound; nothing was stored."""


class SpoolTooLargeError(SpoolFullError):
    """The record alone is larger than ``max_bytes``: retrying can never store it."""


class SpoolCorruptError(SpoolError):
    """Stored bytes failed their checksum on read, or the state file is unusable."""


class SpoolUsageError(SpoolError, ValueError):
    """The caller passed an argument the spool cannot accept (the message says which)."""
