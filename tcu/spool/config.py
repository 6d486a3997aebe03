"""Typed configuration of the on-disk spool."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tcu.errors import ConfigError

Durability = Literal["power-loss", "crash"]
Compression = Literal["none", "zstd"]
OnDamage = Literal["refuse", "start-fresh"]

__all__ = ["Compression", "Durability", "OnDamage", "SpoolConfig"]


@dataclass(frozen=True, slots=True)
class SpoolConfig:
    """Where and how the spool stores batches.

    ``durability``:
      * ``"power-loss"``: :meth:`Spool.append` returns only after the record's bytes are
        ``fdatasync``-ed, and the directory is ``fsync``-ed after a segment is created,
        replaced or deleted. Acks are ``fdatasync``-ed too. Survives a power cut.
      * ``"crash"``: :meth:`Spool.append` returns after ``write()`` handed the record to the
        OS. Survives ``kill -9`` of the process, not a power cut or kernel crash.

    ``max_bytes`` bounds the segment files on disk and ``max_age_s`` (``None``: no age bound)
    the age of unacknowledged records; both evict by priority (see :class:`Spool`).
    ``segment_bytes`` is the size after which appends go to a new segment file.
    ``compression="zstd"`` compresses each payload (kept raw when that does not shrink it).
    ``on_damage`` decides what :meth:`Spool.open` does with a spool whose state cannot be
    rebuilt (``state.json`` and the ``epoch`` file both lost while segments exist):
    ``"refuse"`` raises :class:`SpoolCorruptError` and leaves the files alone;
    ``"start-fresh"`` moves them into ``damaged-<ns>/``, starts a new boot epoch and writes a
    ``"corrupt"`` tombstone for each unacknowledged batch found, so the loss is reported.
    """

    directory: Path
    durability: Durability = "power-loss"
    max_bytes: int = 256 * 1024 * 1024
    max_age_s: float | None = 7 * 24 * 3600.0
    segment_bytes: int = 4 * 1024 * 1024
    compression: Compression = "none"
    zstd_level: int = 3
    on_damage: OnDamage = "refuse"

    def __post_init__(self) -> None:
        if self.durability not in ("power-loss", "crash"):
            raise ConfigError(
                f"must be 'power-loss' or 'crash', got {self.durability!r}", key="spool.durability"
            )
        if self.compression not in ("none", "zstd"):
            raise ConfigError(f"must be 'none' or 'zstd', got {self.compression!r}", key="spool.compression")
        if self.segment_bytes < 4096:
            raise ConfigError(f"must be at least 4096, got {self.segment_bytes}", key="spool.segment_bytes")
        if self.max_bytes < self.segment_bytes:
            raise ConfigError(
                f"must be at least segment_bytes ({self.segment_bytes}), got {self.max_bytes}",
                key="spool.max_bytes",
            )
        if self.max_age_s is not None and self.max_age_s <= 0:
            raise ConfigError(f"must be positive or None, got {self.max_age_s}", key="spool.max_age_s")
        if self.on_damage not in ("refuse", "start-fresh"):
            raise ConfigError(
                f"must be 'refuse' or 'start-fresh', got {self.on_damage!r}", key="spool.on_damage"
            )
        if not 1 <= self.zstd_level <= 22:
            raise ConfigError(f"must be 1..22, got {self.zstd_level}", key="spool.zstd_level")
