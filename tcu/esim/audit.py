"""Append-only, hash-chained audit log (JSON lines).

Each line is a JSON object with ``seq`` (from 1), ``t_ns`` (UTC epoch ns), ``kind`` and
the caller's fields, plus ``prev``: the SHA-256 (hex) of the previous line's bytes
(64 zeros for the first line). Editing, dropping, inserting or reordering any line breaks
the chain, which :func:`verify` reports with the line number.

Writes are small and flushed (and fsync'ed when ``fsync=True``); async callers use
:meth:`AuditLog.aappend`, which runs the write in a worker thread under a lock so order
is kept and the event loop is not blocked.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tcu.errors import EsimError

__all__ = ["GENESIS", "AuditError", "AuditLog", "verify"]

GENESIS = "0" * 64


class AuditError(EsimError):
    """The audit log cannot be written, or its chain is broken (names file and line)."""


def _digest(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def _last_line(path: Path) -> bytes | None:
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        block = min(size, 65536)
        while True:
            handle.seek(size - block)
            tail = handle.read(block).rstrip(b"\n")
            if b"\n" in tail or block == size:
                break
            block = min(size, block * 2)
    if not tail:
        return None
    return tail.rsplit(b"\n", 1)[-1]


class AuditLog:
    """Appends hash-chained entries to ``path`` (created if missing; continued if present)."""

    def __init__(self, path: str | Path, *, fsync: bool = False) -> None:
        self.path = Path(path)
        self._fsync = fsync
        self._lock = threading.Lock()
        self._async_lock = asyncio.Lock()
        try:
            last = _last_line(self.path) if self.path.exists() else None
        except OSError as exc:
            raise AuditError(f"{self.path}: cannot read: {exc.strerror}") from exc
        if last is None:
            self._prev, self._seq = GENESIS, 0
        else:
            try:
                self._seq = int(json.loads(last)["seq"])
            except (ValueError, KeyError, TypeError) as exc:
                raise AuditError(f"{self.path}: last line is not an audit entry: {exc}") from exc
            self._prev = _digest(last)

    @property
    def seq(self) -> int:
        return self._seq

    def append(self, kind: str, fields: Mapping[str, Any] | None = None, *, t_ns: int | None = None) -> int:
        """Append one entry; returns its ``seq``. Blocking (small write)."""
        with self._lock:
            entry: dict[str, Any] = {
                "seq": self._seq + 1,
                "t_ns": t_ns if t_ns is not None else time.time_ns(),
            }
            entry["kind"] = kind
            for key, value in (fields or {}).items():
                if key in ("seq", "t_ns", "kind", "prev"):
                    raise AuditError(f"{self.path}: field name {key!r} is reserved")
                entry[key] = value
            entry["prev"] = self._prev
            try:
                line = json.dumps(entry, sort_keys=True, separators=(",", ":"), default=str).encode()
            except (TypeError, ValueError) as exc:
                raise AuditError(f"{self.path}: entry {kind!r} is not JSON-serialisable: {exc}") from exc
            try:
                with self.path.open("ab") as handle:
                    handle.write(line + b"\n")
                    handle.flush()
                    if self._fsync:
                        os.fsync(handle.fileno())
            except OSError as exc:
                raise AuditError(f"{self.path}: cannot append: {exc.strerror}") from exc
            self._seq += 1
            self._prev = _digest(line)
            return self._seq

    async def aappend(
        self, kind: str, fields: Mapping[str, Any] | None = None, *, t_ns: int | None = None
    ) -> int:
        """:meth:`append` in a worker thread, in call order."""
        async with self._async_lock:
            return await asyncio.to_thread(self.append, kind, fields, t_ns=t_ns)


def verify(path: str | Path) -> int:
    """Check the whole chain; returns the number of entries or raises :class:`AuditError`."""
    path = Path(path)
    prev = GENESIS
    count = 0
    try:
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if not raw.endswith(b"\n"):
                    raise AuditError(f"{path}:{number}: truncated last line (no newline)")
                line = raw[:-1]
                try:
                    entry = json.loads(line)
                except ValueError as exc:
                    raise AuditError(f"{path}:{number}: not JSON: {exc}") from exc
                if not isinstance(entry, dict):
                    raise AuditError(f"{path}:{number}: entry is not an object")
                if entry.get("prev") != prev:
                    raise AuditError(
                        f"{path}:{number}: hash chain broken (prev does not match line {number - 1})"
                    )
                if entry.get("seq") != number:
                    raise AuditError(f"{path}:{number}: seq {entry.get('seq')!r}, expected {number}")
                prev = _digest(line)
                count += 1
    except OSError as exc:
        raise AuditError(f"{path}: cannot read: {exc.strerror}") from exc
    return count
