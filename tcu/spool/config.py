"""Typed configuration of the on-disk spool: defined in :mod:`tcu.config` (one tree), re-exported."""

from __future__ import annotations

from tcu.config import Compression, Durability, OnDamage, SpoolConfig

__all__ = ["Compression", "Durability", "OnDamage", "SpoolConfig"]
