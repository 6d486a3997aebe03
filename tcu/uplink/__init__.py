"""Uplink: the gRPC client that streams batches to the ingest and applies its acks."""

from tcu.uplink.client import Uplink, UplinkStats
from tcu.uplink.outbox import MemoryOutbox, Outbox, OutboxReadError

__all__ = ["MemoryOutbox", "Outbox", "OutboxReadError", "Uplink", "UplinkStats"]
