"""The cloud ingest: gRPC Upload from vehicles, dedup and durable storage, and the Fleet API.

Start one with :class:`IngestServer` (or :func:`serve` until a signal)::

    server = IngestServer(IngestConfig(insecure=True, listen="127.0.0.1:0", db_path=Path("ingest.db")))
    port = await server.start()
    ...
    await server.stop(grace_s=5)
"""

from tcu.ingest.commands import (
    CommandConflict,
    CommandOutcome,
    CommandRouter,
    CommandsExhausted,
    CommandState,
)
from tcu.ingest.config import IngestConfig, IngestTls
from tcu.ingest.hub import SubscriberOverflow, Subscription, UpdateHub
from tcu.ingest.model import (
    Batch,
    CampaignRef,
    Capture,
    Catalog,
    Column,
    HistoryQuery,
    LossRecord,
    Series,
    SignalDef,
    StoreResult,
    ValueKind,
    VehicleNotFound,
    VehicleSummary,
)
from tcu.ingest.server import SERVICE_NAMES, IngestServer, serve
from tcu.ingest.servicer import Identity, no_identity
from tcu.ingest.store import Sink, SqliteSink, WriterStats
from tcu.ingest.validate import Limits, Session, validate_batch, validate_checkin, validate_hello

__all__ = [
    "SERVICE_NAMES",
    "Batch",
    "CampaignRef",
    "Capture",
    "Catalog",
    "Column",
    "CommandConflict",
    "CommandOutcome",
    "CommandRouter",
    "CommandState",
    "CommandsExhausted",
    "HistoryQuery",
    "Identity",
    "IngestConfig",
    "IngestServer",
    "IngestTls",
    "Limits",
    "LossRecord",
    "Series",
    "Session",
    "SignalDef",
    "Sink",
    "SqliteSink",
    "StoreResult",
    "SubscriberOverflow",
    "Subscription",
    "UpdateHub",
    "ValueKind",
    "VehicleNotFound",
    "VehicleSummary",
    "WriterStats",
    "no_identity",
    "serve",
    "validate_batch",
    "validate_checkin",
    "validate_hello",
]
