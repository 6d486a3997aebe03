"""``tcu ingest``: run the cloud ingest (gRPC Upload + Fleet API on an SQLite database).

``tcu ingest --sink jetstream --nats URL ...`` runs a stateless replica on a NATS JetStream
stream instead; ``tcu ingest archive --db PATH --nats URL ...`` writes that stream into the
SQLite database the replicas answer Fleet.Query and ListVehicles from.

``tcu ingest --sink jetstream --nats URL ...`` runs a stateless replica on a NATS JetStream
stream instead; ``tcu ingest archive --db PATH --nats URL ...`` writes that stream into the
SQLite database the replicas answer Fleet.Query and ListVehicles from.

``tcu ingest quarantine --db PATH [--vehicle VIN] [--export DIR] [--json]`` lists the
batches the ingest kept in quarantine (malformed content) and exports their bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import logging
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

from tcu.ingest.config import IngestConfig, IngestTls

__all__ = ["register"]

log = logging.getLogger(__name__)

_EXAMPLE = """\
example:
  tcu pki init ./pki && tcu pki vehicle ./pki WTCUSIM0000000001
  tcu ingest --listen 0.0.0.0:50051 --db ./ingest.db --pki ./pki
  tcu ingest --listen 127.0.0.1:0 --db ./ingest.db --port-file ./ingest.port --insecure

mTLS is the default: vehicles and backends need a certificate from the client CA, and
every upload is bound to the vehicle id in the certificate.
It serves tcu.api.v1.Ingest, tcu.api.v1.Fleet, grpc.health.v1.Health and server reflection.
Stop it with SIGINT or SIGTERM: in-flight batches are acked, then the database is closed.

  tcu ingest quarantine --db ./ingest.db --export ./quarantined   # batches kept as malformed

scale-out on a NATS JetStream cluster (any number of replicas, one archive):
  tcu ingest --sink jetstream --nats nats://10.0.0.1:4222 --nats nats://10.0.0.2:4222 \\
      --stream-replicas 3 --db ./archive.db --pki ./pki --listen 0.0.0.0:50051
  tcu ingest archive --nats nats://10.0.0.1:4222 --stream-replicas 3 --db ./archive.db
With --sink jetstream, Fleet.SendCommand commands are durable on the same servers (any replica
reaches the vehicle; a command waits for an offline vehicle until it expires); --commands jetstream
gives the same to a single SQLite ingest, --commands local turns it off.
"""

_ARCHIVE_EXAMPLE = """\\
example:
  tcu ingest archive --nats nats://127.0.0.1:4222 --db ./archive.db

A durable pull consumer (--durable, default tcu-archive) of the stream: each message is acked
to JetStream only after the SQLite commit that holds it, so a killed archive restarts where it
was without losing or duplicating a batch. Stop it with SIGINT or SIGTERM.
"""


_LIMIT_FLAGS: tuple[tuple[str, str, type, str], ...] = (
    ("--max-streams", "max_streams", int, "Upload and Subscribe streams open at once"),
    (
        "--max-streams-per-identity",
        "max_streams_per_identity",
        int,
        "streams open at once per vehicle or backend",
    ),
    ("--max-hello-bytes", "max_hello_bytes", int, "largest Hello (its catalogs) in bytes"),
    (
        "--max-vehicle-signals",
        "max_vehicle_signals",
        int,
        "signals a Hello may announce over all its catalogs",
    ),
    ("--max-batch-samples", "max_batch_samples", int, "samples (and raw frames) per batch"),
    ("--max-message-bytes", "max_message_bytes", int, "largest gRPC message"),
    ("--subscriber-queue", "subscriber_queue", int, "live updates buffered per Fleet.Subscribe stream"),
    ("--subscriber-max-bytes", "subscriber_max_bytes", int, "bytes buffered per Fleet.Subscribe stream"),
    ("--commit-max-samples", "commit_max_samples", int, "samples per group commit (round-robin per vehicle)"),
    ("--crl-check-interval", "crl_check_interval_s", float, "seconds between looks at the CRL file"),
    ("--hello-timeout", "hello_timeout_s", float, "seconds an Upload stream has to send its Hello"),
)
"""Flags for the :class:`~tcu.ingest.config.IngestConfig` limits (same names, defaults from it)."""


_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(IngestConfig)}


def _add_nats_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("NATS JetStream (--sink jetstream and the archive)")
    group.add_argument(
        "--nats",
        action="append",
        metavar="URL",
        help="a NATS server (nats://HOST:PORT or tls://HOST:PORT); repeat for the nodes of a cluster",
    )
    group.add_argument(
        "--stream", default="TCU_TELEMETRY", metavar="NAME", help="the stream (default: TCU_TELEMETRY)"
    )
    group.add_argument(
        "--stream-replicas",
        type=int,
        default=1,
        metavar="N",
        help="replicas of the stream and its buckets when they are created: 1 on one server, 3 in a cluster",
    )
    group.add_argument("--nats-creds", type=Path, metavar="PATH", help="NATS credentials file (JWT + seed)")
    group.add_argument("--nats-ca", type=Path, metavar="PEM", help="CA of the NATS servers' certificates")
    group.add_argument("--nats-cert", type=Path, metavar="PEM", help="client certificate towards NATS")
    group.add_argument("--nats-key", type=Path, metavar="PEM", help="the client certificate's private key")
    group.add_argument(
        "--publish-retry",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="retry one publish this long (a cluster failing over) before its stream ends (default: 10)",
    )


def _jetstream(args: argparse.Namespace) -> Any:
    from tcu.errors import ConfigError
    from tcu.ingest.config import JetStreamConfig, NatsTls

    if not args.nats:
        raise ConfigError("the JetStream sink needs at least one NATS server: give --nats URL", key="--nats")
    tls = None
    if args.nats_ca is not None:
        tls = NatsTls(ca=args.nats_ca, cert=args.nats_cert, key=args.nats_key)
    elif args.nats_cert is not None or args.nats_key is not None:
        raise ConfigError("--nats-cert and --nats-key need --nats-ca", key="--nats-ca")
    return JetStreamConfig(
        servers=tuple(args.nats),
        stream=args.stream,
        replicas=args.stream_replicas,
        credentials=args.nats_creds,
        tls=tls,
        publish_retry_s=args.publish_retry,
    )


def register(subparsers: Any) -> None:
    """Add the ``ingest`` subcommand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "ingest",
        help="run the cloud ingest server",
        description="Receive telemetry batches from vehicles over gRPC, store them once (dedup by"
        " vehicle, boot epoch and seq) in SQLite, and serve the Fleet API (Subscribe, Query, ListVehicles).",
        epilog=_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--listen",
        default="127.0.0.1:50051",
        metavar="HOST:PORT",
        help="address to listen on (port 0: any free)",
    )
    parser.add_argument(
        "--reuse-port",
        action="store_true",
        help="share the port with other processes (SO_REUSEPORT); without it a port in use is refused",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="N ingest processes on the one port (SO_REUSEPORT) and database, to use N cores; Fleet"
        " Subscribe, SendCommand and ListVehicles need 1 (default: 1; see tcu.ingest.workers)",
    )
    parser.add_argument(
        "--db",
        type=Path,
        metavar="PATH",
        help="SQLite database file (required); with --sink jetstream the archive's, read for Query and"
        " ListVehicles",
    )
    parser.add_argument(
        "--sink",
        choices=("sqlite", "jetstream"),
        default="sqlite",
        help="where batches go: the SQLite file (default) or a NATS JetStream stream (stateless replicas)",
    )
    parser.add_argument(
        "--port-file",
        type=Path,
        metavar="PATH",
        help="write the bound port (one line) to this file once listening",
    )
    parser.add_argument(
        "--sqlite-synchronous",
        choices=("FULL", "NORMAL"),
        default="FULL",
        help="FULL survives power loss, NORMAL only a process crash but commits faster (default: FULL)",
    )
    tls = parser.add_argument_group("security (mTLS is required unless --insecure)")
    tls.add_argument("--pki", type=Path, metavar="DIR", help="a development PKI made by 'tcu pki init DIR'")
    tls.add_argument("--tls-cert", type=Path, metavar="PEM", help="server certificate")
    tls.add_argument("--tls-key", type=Path, metavar="PEM", help="server private key")
    tls.add_argument(
        "--client-ca", type=Path, metavar="PEM", help="CA that vehicle and backend certificates chain to"
    )
    tls.add_argument(
        "--crl", type=Path, metavar="PEM", help="certificate revocation list (reloaded on change)"
    )
    tls.add_argument(
        "--insecure", action="store_true", help="plain TCP, no client authentication (local tests only)"
    )
    parser.add_argument(
        "--max-batches-per-s",
        type=float,
        default=200.0,
        metavar="N",
        help="per vehicle, before RESOURCE_EXHAUSTED with a retry-after (default: 200)",
    )
    parser.add_argument(
        "--max-connection-age",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="end connections after this long: vehicles reconnect, so their certificate is checked"
        " again and load rebalances; 0: never (default: 3600)",
    )
    limits = parser.add_argument_group("limits (what one vehicle or client can make the ingest hold)")
    for flag, key, kind, help_text in _LIMIT_FLAGS:
        limits.add_argument(
            flag,
            dest=key,
            type=kind,
            default=_DEFAULTS[key],
            metavar="N",
            help=f"{help_text} (default: {_DEFAULTS[key]})",
        )
    parser.add_argument(
        "--grace",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="drain deadline when stopping (default: 5)",
    )
    parser.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve Prometheus /metrics and /healthz here (e.g. 127.0.0.1:9109; default: off)",
    )
    bus = parser.add_argument_group("commands (Fleet.SendCommand)")
    bus.add_argument(
        "--commands",
        choices=("local", "jetstream"),
        help="jetstream: durable commands on the --nats servers, so any replica reaches the vehicle and"
        " a command for an offline vehicle waits until it connects or expires (docs/commands.md);"
        " local: only this process's streams, for the length of the call (default: jetstream with"
        " --sink jetstream, else local)",
    )
    bus.add_argument(
        "--commands-ack-wait",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long a command delivered by a replica that died waits before another replica"
        " delivers it again (default: 30)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="validate the TLS files and their dates, the database and the listen port, print a summary"
        " and exit: 1 with every problem listed",
    )
    _add_nats_flags(parser)
    parser.set_defaults(func=run)
    sub = parser.add_subparsers(title="commands", metavar="{quarantine,archive}")
    quarantine = sub.add_parser(
        "quarantine",
        help="list or export the batches kept in quarantine",
        description="List the batches the ingest kept in quarantine because of their own content"
        " (unknown signal id, column lengths, value types, limits, undecodable bytes), with the reason;"
        " with --export write each one's bytes as received (a tcu.api.v1.TelemetryBatch) to a file.",
    )
    quarantine.add_argument("--db", required=True, type=Path, metavar="PATH", help="the ingest's database")
    quarantine.add_argument("--vehicle", metavar="VIN", help="only this vehicle")
    quarantine.add_argument(
        "--export",
        type=Path,
        metavar="DIR",
        help="write DIR/<vehicle>/<boot_epoch>-<seq>.pb and DIR/quarantine.jsonl (one line per batch)",
    )
    quarantine.add_argument("--json", action="store_true", help="one JSON object per batch on stdout")
    quarantine.set_defaults(func=run_quarantine)
    archive = sub.add_parser(
        "archive",
        help="write the JetStream stream into the SQLite database (history for Fleet.Query)",
        description="Consume the JetStream sink's stream with a durable consumer and store every batch,"
        " quarantined batch and check-in in the SQLite database, with the SQLite sink's schema and dedup.",
        epilog=_ARCHIVE_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    archive.add_argument("--db", required=True, type=Path, metavar="PATH", help="the SQLite database")
    archive.add_argument(
        "--durable",
        default="tcu-archive",
        metavar="NAME",
        help="durable consumer name (default: tcu-archive)",
    )
    archive.add_argument(
        "--fetch-batch",
        type=int,
        default=256,
        metavar="N",
        help="messages per fetch and commit (default: 256)",
    )
    archive.add_argument(
        "--ack-wait",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="messages fetched by an archive that died unacked are delivered again after this long"
        " (the consumer's ack wait, set when it is created; default: 10)",
    )
    archive.add_argument(
        "--sqlite-synchronous",
        choices=("FULL", "NORMAL"),
        default="FULL",
        help="FULL survives power loss, NORMAL only a process crash (default: FULL)",
    )
    _add_nats_flags(archive)
    archive.set_defaults(func=run_archive)


def run_archive(args: argparse.Namespace) -> int:
    """Run the archive consumer until SIGINT or SIGTERM."""
    import signal

    from tcu.ingest.archive import Archive

    config = IngestConfig(
        db_path=args.db,
        sqlite_synchronous=args.sqlite_synchronous,
        insecure=True,  # the archive serves no port; the field is the gRPC server's
        jetstream=_jetstream(args),
    )
    archive = Archive(config, durable=args.durable, fetch_batch=args.fetch_batch, ack_wait_s=args.ack_wait)

    async def main() -> None:
        stop = asyncio.Event()
        ready = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)

        async def say_ready() -> None:
            await ready.wait()
            print(
                f"tcu ingest archive: consuming {args.stream} as {args.durable} into {args.db}",
                file=sys.stderr,
                flush=True,
            )

        announce = asyncio.create_task(say_ready())
        try:
            await archive.run(stop, on_ready=ready)
        finally:
            announce.cancel()

    asyncio.run(main())
    print(f"tcu ingest archive: stopped: {archive.stats}", file=sys.stderr)
    return 0


def run_quarantine(args: argparse.Namespace) -> int:
    """List (and export) quarantined batches; reads the database read-only, also while the ingest runs."""
    from tcu.errors import ConfigError, IngestError
    from tcu.ingest.store import read_quarantine

    if not args.db.is_file():
        raise ConfigError(f"no database at {args.db}", key="--db")
    try:
        conn = sqlite3.connect(f"{args.db.resolve().as_uri()}?mode=ro", uri=True)
        try:
            has_table = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'quarantine'"
            ).fetchone()
            batches = read_quarantine(conn, args.vehicle) if has_table else []
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise IngestError(f"{args.db}: cannot read the quarantine: {exc}") from exc
    lines: list[dict[str, Any]] = []
    for batch in batches:
        line: dict[str, Any] = {
            "vehicle_id": batch.vehicle_id,
            "boot_epoch": batch.boot_epoch,
            "seq": batch.seq,
            "received": datetime.datetime.fromtimestamp(batch.received_ns / 1e9, datetime.UTC).isoformat(),
            "bytes": len(batch.payload),
            "catalog_id": batch.catalog_id,
            "agent_version": batch.agent_version,
            "reason": batch.reason,
        }
        if args.export is not None:
            relative = Path(_safe(batch.vehicle_id)) / f"{batch.boot_epoch}-{batch.seq}.pb"
            try:
                (args.export / relative).parent.mkdir(parents=True, exist_ok=True)
                (args.export / relative).write_bytes(batch.payload)
            except OSError as exc:
                raise ConfigError(f"cannot write {args.export / relative}: {exc}", key="--export") from exc
            line["file"] = str(relative)
        lines.append(line)
    if args.export is not None:
        manifest = args.export / "quarantine.jsonl"
        try:
            args.export.mkdir(parents=True, exist_ok=True)
            manifest.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot write {manifest}: {exc}", key="--export") from exc
    for line in lines:
        if args.json:
            print(json.dumps(line))
        else:
            print(
                f"{line['vehicle_id']} {line['boot_epoch']}/{line['seq']} {line['received']}"
                f" {line['bytes']} B: {line['reason']}"
            )
    print(
        f"{len(lines)} quarantined batches" + (f", exported to {args.export}" if args.export else ""),
        file=sys.stderr,
    )
    return 0


def _safe(name: str) -> str:
    """A vehicle id as one path component (ids come from vehicles: no separators, no dot names)."""
    cleaned = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
    return cleaned or "_"


def _tls(args: argparse.Namespace) -> IngestTls | None:
    from tcu.errors import ConfigError

    explicit = (args.tls_cert, args.tls_key, args.client_ca)
    if args.pki is not None:
        if any(explicit):
            raise ConfigError("give either --pki or --tls-cert/--tls-key/--client-ca", key="--pki")
        from tcu.pki import DevPki

        pki = DevPki(args.pki)
        return IngestTls(cert=pki.server_cert, key=pki.server_key, client_ca=pki.ca_cert, crl=pki.crl)
    if any(explicit):
        if not all(explicit):
            raise ConfigError("--tls-cert, --tls-key and --client-ca go together", key="--tls-cert")
        return IngestTls(cert=args.tls_cert, key=args.tls_key, client_ca=args.client_ca, crl=args.crl)
    if not args.insecure:
        raise ConfigError(
            "mTLS is required: give --pki DIR (tcu pki init DIR) or --tls-cert/--tls-key/--client-ca, "
            "or --insecure for a local test",
            key="--pki",
        )
    return None


def _write_port_file(path: Path, port: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{port}\n", encoding="ascii")
    tmp.replace(path)


def _check(args: argparse.Namespace) -> int:
    from tcu.errors import TcuError
    from tcu.ingest.check import check_ingest

    tls, tls_error = None, None
    try:
        tls = _tls(args)
    except TcuError as exc:
        tls_error = str(exc)
    jetstream = None
    if args.sink == "jetstream":
        try:
            jetstream = _jetstream(args)
        except TcuError as exc:
            tls_error = f"{tls_error}; {exc}" if tls_error else str(exc)
    report = check_ingest(
        listen=args.listen,
        db_path=args.db,
        tls=tls,
        tls_error=tls_error,
        insecure=args.insecure,
        jetstream=jetstream,
    )
    for line in report.lines():
        print(line)
    print(report.summary("tcu ingest --check"))
    return 1 if report.problems else 0


def run(args: argparse.Namespace) -> int:
    from tcu.errors import ConfigError
    from tcu.ingest import serve

    if args.check:
        return _check(args)
    if args.db is None:
        raise ConfigError("the ingest needs a database: give --db PATH", key="--db")
    config = IngestConfig(
        listen=args.listen,
        reuse_port=args.reuse_port,
        db_path=args.db,
        sink=args.sink,
        jetstream=_jetstream(args) if args.sink == "jetstream" else None,
        sqlite_synchronous=args.sqlite_synchronous,
        grace_s=args.grace,
        tls=_tls(args),
        insecure=args.insecure,
        max_batches_per_s=args.max_batches_per_s,
        max_connection_age_s=args.max_connection_age or None,
        workers=args.workers,
        **{key: getattr(args, key) for _, key, _, _ in _LIMIT_FLAGS},
    )
    if config.workers > 1 and args.metrics_listen:
        raise ConfigError("--metrics-listen is not available with --workers above 1", key="--workers")
    if config.insecure:
        log.warning("insecure mode: no TLS, no client authentication; use only on a trusted local network")
    host = config.listen.rpartition(":")[0]

    def on_listening(port: int) -> None:
        if args.port_file is not None:
            try:
                _write_port_file(args.port_file, port)
            except OSError as exc:
                raise ConfigError(f"cannot write the port file: {exc}", key="--port-file") from exc
        print(
            f"tcu ingest: listening on {host}:{port} ("
            + (
                f"JetStream {config.jetstream.stream}, history from {config.db_path}"
                if config.jetstream is not None
                else f"database {config.db_path}"
            )
            + ")",
            file=sys.stderr,
            flush=True,
        )

    from tcu.sdnotify import Notifier, notify_settings

    commands = None
    if (args.commands or ("jetstream" if args.sink == "jetstream" else "local")) == "jetstream":
        from tcu.ingest.command_bus import CommandBusConfig, JetStreamCommandRouter

        commands = JetStreamCommandRouter(
            CommandBusConfig(
                nats=config.jetstream if config.jetstream is not None else _jetstream(args),
                name=f"tcu-ingest commands {config.listen}",
                ack_wait_s=args.commands_ack_wait,
            ),
            max_pending=config.max_pending_commands,
        )
    notifier = Notifier(notify_settings(os.environ))  # a no-op outside systemd (no $NOTIFY_SOCKET)
    if config.workers > 1:
        import functools

        from tcu.cli.main import configure_logging
        from tcu.ingest.workers import run_workers

        try:
            run_workers(
                config,
                on_listening=on_listening,
                notifier=notifier if notifier.enabled else None,
                setup=functools.partial(
                    configure_logging, args.log_level, args.debug, args.log_format
                ),
            )
        finally:
            notifier.close()
        return 0
    try:
        asyncio.run(
            serve(
                config,
                on_listening=on_listening,
                notifier=notifier if notifier.enabled else None,
                metrics_listen=args.metrics_listen,
                commands=commands,
            )
        )
    finally:
        notifier.close()
    return 0
