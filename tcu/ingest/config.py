"""Configuration of the cloud ingest (``tcu ingest``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tcu.errors import ConfigError

__all__ = ["IngestConfig", "IngestTls", "JetStreamConfig", "NatsTls"]


@dataclass(frozen=True, kw_only=True, slots=True)
class IngestTls:
    """mTLS material as file paths (the ingest reads them; nothing secret is kept in config)."""

    cert: Path
    """The server certificate (PEM), with the DNS names and IPs vehicles connect to."""
    key: Path
    """The server's private key (PEM)."""
    client_ca: Path
    """CA certificate(s) that vehicle and backend certificates must chain to."""
    crl: Path | None = None
    """Certificate revocation list (PEM), reloaded when the file changes."""


@dataclass(frozen=True, kw_only=True, slots=True)
class NatsTls:
    """TLS towards the NATS servers, as file paths (client certificate and key optional)."""

    ca: Path
    """CA certificate(s) the NATS servers' certificates chain to."""
    cert: Path | None = None
    """Client certificate (PEM) when the servers verify clients (mTLS)."""
    key: Path | None = None
    """The client certificate's private key (PEM)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class JetStreamConfig:
    """Where the JetStream sink (``sink = "jetstream"``) and ``tcu ingest archive`` keep batches.

    Batches go to stream ``stream`` on subjects ``<subject_prefix>.telemetry.<vehicle>``
    (quarantined ones ``.quarantine.<vehicle>``, check-ins ``.checkin.<vehicle>``); the
    acked watermarks and the catalogs live in the key-value buckets ``<stream>_WATERMARKS``
    and ``<stream>_CATALOGS`` with the same number of replicas.
    """

    servers: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    """NATS server URLs (any node of the cluster; the client fails over between them)."""
    stream: str = "TCU_TELEMETRY"
    subject_prefix: str = "tcu.v1"
    replicas: int = 1
    """Stream and bucket replicas: 1 on a single server, 3 in a 3-node cluster."""
    duplicate_window_s: float = 120.0
    """JetStream's Nats-Msg-Id dedup window (duplicates older than it are still stored once:
    the watermark says so before publishing, and the archive's key is unique)."""
    credentials: Path | None = None
    """NATS credentials file (JWT and NKey seed), when the servers require one."""
    tls: NatsTls | None = None
    connect_timeout_s: float = 5.0
    publish_timeout_s: float = 5.0
    """Wait for one PubAck (or key-value answer)."""
    publish_retry_s: float = 10.0
    """How long one batch is retried with the same Nats-Msg-Id (a cluster failing over) before its
    stream ends with UNAVAILABLE (the vehicle resends it)."""

    def __post_init__(self) -> None:
        if not self.servers:
            raise ConfigError("at least one NATS server URL is needed", key="jetstream.servers")
        for url in self.servers:
            if "://" not in url:
                raise ConfigError(
                    f"expected nats://HOST:PORT or tls://HOST:PORT, got {url!r}", key="jetstream.servers"
                )
        if not 1 <= self.replicas <= 5:
            raise ConfigError(f"must be 1 to 5, got {self.replicas}", key="jetstream.replicas")
        for key in ("stream", "subject_prefix"):
            value = getattr(self, key)
            if not value or any(c in value for c in " *>\t") or (key == "stream" and "." in value):
                raise ConfigError(f"not a usable name: {value!r}", key=f"jetstream.{key}")
        for key in ("duplicate_window_s", "connect_timeout_s", "publish_timeout_s"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"must be positive, got {getattr(self, key)}", key=f"jetstream.{key}")
        if self.publish_retry_s < 0:
            raise ConfigError(
                f"must not be negative, got {self.publish_retry_s}", key="jetstream.publish_retry_s"
            )
        if self.tls is not None and (self.tls.cert is None) != (self.tls.key is None):
            raise ConfigError("the client certificate and key go together", key="jetstream.tls")


@dataclass(frozen=True, kw_only=True, slots=True)
class IngestConfig:
    """Everything the ingest server needs; built by the CLI or by tests, never from the environment.

    Limits bound what one stream may make the server hold: a batch above them is
    rejected with INVALID_ARGUMENT before anything is stored.
    """

    db_path: Path
    """SQLite database file of the embedded sink (created if missing; WAL mode). With
    ``sink = "jetstream"`` the archive's database (``tcu ingest archive``), which this
    replica reads for Fleet.Query and ListVehicles."""
    sink: Literal["sqlite", "jetstream"] = "sqlite"
    """Where accepted batches go: the embedded SQLite file, or a NATS JetStream stream
    (stateless replicas; see :mod:`tcu.ingest.jetstream`)."""
    jetstream: JetStreamConfig | None = None
    """The JetStream stream, servers and credentials (required with ``sink = "jetstream"``)."""
    listen: str = "127.0.0.1:50051"
    """``host:port`` to listen on; port 0 picks a free port."""
    reuse_port: bool = False
    """Share ``listen`` with other processes (SO_REUSEPORT). Off: a port already in use is
    refused ("address in use"), so two ingests cannot split the vehicles between two databases."""
    subscriber_queue: int = 1024
    """Live updates buffered per Fleet.Subscribe stream before it is ended with RESOURCE_EXHAUSTED."""
    subscriber_max_bytes: int = 32 * 1024 * 1024
    """Bytes (serialised updates) buffered per Fleet.Subscribe stream before it is ended with
    RESOURCE_EXHAUSTED, also while the stream is blocked on a client that does not read."""
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"
    """``PRAGMA synchronous``: FULL survives power loss; NORMAL (WAL) survives a process crash."""
    sqlite_busy_timeout_s: float = 5.0
    """How long a write waits for a lock held by another process before the batch fails (UNAVAILABLE)."""
    commit_max_batches: int = 256
    """Most batches written in one group-commit transaction."""
    commit_max_samples: int = 250_000
    """Samples a group commit takes before it is closed (a larger batch is a group alone); groups
    take one batch per vehicle in turn, so a vehicle with huge batches cannot starve a small one."""
    write_queue_batches: int = 4096
    """Batches waiting for the writer; when full, uploads wait (backpressure to the vehicles)."""
    pipeline_depth: int = 64
    """Batches of one Upload stream in flight (read but not yet acked) before reading pauses."""
    reader_threads: int = 2
    """Threads (each with its own SQLite connection) that serve Query and ListVehicles."""
    query_chunk_samples: int = 10_000
    """Samples per Query chunk when the request says 0."""
    query_chunk_samples_max: int = 100_000
    """Upper bound on a requested Query chunk size."""
    max_catalog_signals: int = 65_536
    max_batch_columns: int = 65_536
    max_batch_samples: int = 1_000_000
    max_string_bytes: int = 4096
    """Longest string value (UTF-8 bytes) and longest vehicle id / signal name."""
    max_message_bytes: int = 16 * 1024 * 1024
    """gRPC receive limit for one message."""
    max_hello_bytes: int = 1024 * 1024
    """Largest Hello (its catalogs); a stream's catalogs stay in memory while it is open."""
    max_vehicle_signals: int = 16_384
    """Signals one Hello may announce over all its catalogs (current and previous)."""
    hello_timeout_s: float = 30.0
    """An Upload stream that sends no Hello within this long is ended (INVALID_ARGUMENT)."""
    max_streams: int = 10_000
    """Upload and Subscribe streams open at once; one more is RESOURCE_EXHAUSTED with a retry-after."""
    max_streams_per_identity: int = 4
    """Streams open at once per vehicle (Upload) or per backend (Subscribe); one more is
    RESOURCE_EXHAUSTED with a retry-after (a reconnecting vehicle's old stream may not be gone yet)."""
    grace_s: float = 5.0
    """Drain deadline used by :func:`tcu.ingest.serve` when it stops."""
    crl_check_interval_s: float = 2.0
    """How often the CRL file is looked at; a revocation ends the certificate's open streams
    within about this long of the file changing."""
    tls: IngestTls | None = None
    """mTLS: required unless ``insecure`` is set. The vehicle id is bound to the certificate."""
    insecure: bool = False
    """Serve plain TCP without client authentication (tests and local demos only)."""
    max_batches_per_s: float = 200.0
    """Per vehicle: batches per second over all its streams before RESOURCE_EXHAUSTED."""
    batch_burst: int = 2000
    """Per vehicle: batches accepted at once above the rate (a spool draining after an outage)."""
    throttle_max_wait_s: float = 2.0
    """A vehicle over its rate is paced (reading its stream waits) up to this long per batch;
    needing longer ends the stream with RESOURCE_EXHAUSTED and a ``retry-after-ms``."""
    max_connection_age_s: float | None = 3600.0
    """End connections after this long (gRPC max_connection_age): the vehicle reconnects, so its
    certificate is checked again (expiry, revocation) and load spreads after scaling. None: never."""
    max_connection_age_grace_s: float = 5.0
    """How long a stream may go on after its connection reached max_connection_age."""
    max_pending_commands: int = 16
    """Per vehicle: Fleet.SendCommand calls waiting at once (for a stream or a result);
    one more is RESOURCE_EXHAUSTED."""
    command_timeout_s: float = 30.0
    """Fleet.SendCommand wait when the request's timeout_ms is 0."""
    command_timeout_max_s: float = 3600.0
    """Upper bound on a requested SendCommand timeout (larger ones are cut to it)."""
    max_command_bytes: int = 64 * 1024
    """Largest signed command envelope SendCommand accepts."""

    def __post_init__(self) -> None:
        positive = {
            "subscriber_queue": self.subscriber_queue,
            "subscriber_max_bytes": self.subscriber_max_bytes,
            "commit_max_batches": self.commit_max_batches,
            "commit_max_samples": self.commit_max_samples,
            "write_queue_batches": self.write_queue_batches,
            "pipeline_depth": self.pipeline_depth,
            "reader_threads": self.reader_threads,
            "query_chunk_samples": self.query_chunk_samples,
            "query_chunk_samples_max": self.query_chunk_samples_max,
            "max_catalog_signals": self.max_catalog_signals,
            "max_batch_columns": self.max_batch_columns,
            "max_batch_samples": self.max_batch_samples,
            "max_string_bytes": self.max_string_bytes,
            "max_message_bytes": self.max_message_bytes,
            "max_hello_bytes": self.max_hello_bytes,
            "max_vehicle_signals": self.max_vehicle_signals,
            "max_streams": self.max_streams,
            "max_streams_per_identity": self.max_streams_per_identity,
            "max_pending_commands": self.max_pending_commands,
            "max_command_bytes": self.max_command_bytes,
        }
        for key, value in positive.items():
            if value < 1:
                raise ConfigError(f"must be at least 1, got {value}", key=f"ingest.{key}")
        if self.sqlite_synchronous not in ("FULL", "NORMAL"):
            raise ConfigError(
                f"must be FULL or NORMAL, got {self.sqlite_synchronous!r}", key="ingest.sqlite_synchronous"
            )
        if self.query_chunk_samples > self.query_chunk_samples_max:
            raise ConfigError(
                f"{self.query_chunk_samples} is above query_chunk_samples_max={self.query_chunk_samples_max}",
                key="ingest.query_chunk_samples",
            )
        host, sep, port = self.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ConfigError(f"expected host:port, got {self.listen!r}", key="ingest.listen")
        if self.sqlite_busy_timeout_s < 0:
            raise ConfigError(
                f"must not be negative, got {self.sqlite_busy_timeout_s}", key="ingest.sqlite_busy_timeout_s"
            )
        if self.max_connection_age_s is not None and self.max_connection_age_s <= 0:
            raise ConfigError(
                f"must be positive (or None: never), got {self.max_connection_age_s}",
                key="ingest.max_connection_age_s",
            )
        if self.hello_timeout_s <= 0:
            raise ConfigError(f"must be positive, got {self.hello_timeout_s}", key="ingest.hello_timeout_s")
        if self.crl_check_interval_s <= 0:
            raise ConfigError(
                f"must be positive, got {self.crl_check_interval_s}", key="ingest.crl_check_interval_s"
            )
        if self.grace_s < 0:
            raise ConfigError(f"must not be negative, got {self.grace_s}", key="ingest.grace_s")
        if self.tls is None and not self.insecure:
            raise ConfigError(
                "no TLS material: give the server certificate, key and client CA (mTLS), "
                "or set insecure for a local test",
                key="ingest.tls",
            )
        if self.tls is not None and self.insecure:
            raise ConfigError("tls and insecure exclude each other", key="ingest.insecure")
        if not 0 < self.command_timeout_s <= self.command_timeout_max_s:
            raise ConfigError(
                f"must be positive and at most command_timeout_max_s={self.command_timeout_max_s},"
                f" got {self.command_timeout_s}",
                key="ingest.command_timeout_s",
            )
        if self.sink not in ("sqlite", "jetstream"):
            raise ConfigError(f"must be sqlite or jetstream, got {self.sink!r}", key="ingest.sink")
        if self.sink == "jetstream" and self.jetstream is None:
            raise ConfigError(
                "the jetstream sink needs the NATS servers (jetstream.servers)", key="ingest.sink"
            )
        if self.max_batches_per_s <= 0 or self.batch_burst < 1:
            raise ConfigError("must be positive", key="ingest.max_batches_per_s")
