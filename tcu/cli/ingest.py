"""``tcu ingest``: run the cloud ingest (gRPC Upload + Fleet API on an SQLite database)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any

from tcu.ingest.config import IngestTls

__all__ = ["register"]

log = logging.getLogger(__name__)

_EXAMPLE = """\
example:
  tcu pki init ./pki && tcu pki vehicle ./pki WTCUSIM0000000001
  tcu ingest --listen 0.0.0.0:50051 --db ./ingest.db --pki ./pki
  tcu ingest --listen 127.0.0.1:0 --db /tmp/ingest.db --port-file /tmp/ingest.port --insecure

mTLS is the default: vehicles and backends need a certificate from the client CA, and
every upload is bound to the vehicle id in the certificate.
It serves tcu.api.v1.Ingest, tcu.api.v1.Fleet, grpc.health.v1.Health and server reflection.
Stop it with SIGINT or SIGTERM: in-flight batches are acked, then the database is closed.
"""


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
    parser.add_argument("--db", required=True, type=Path, metavar="PATH", help="SQLite database file")
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
        metavar="SECONDS",
        help="end connections after this long so clients rebalance (default: never)",
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="drain deadline when stopping (default: 5)",
    )
    parser.set_defaults(func=run)


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


def run(args: argparse.Namespace) -> int:
    from tcu.errors import ConfigError
    from tcu.ingest import IngestConfig, serve

    config = IngestConfig(
        listen=args.listen,
        db_path=args.db,
        sqlite_synchronous=args.sqlite_synchronous,
        grace_s=args.grace,
        tls=_tls(args),
        insecure=args.insecure,
        max_batches_per_s=args.max_batches_per_s,
        max_connection_age_s=args.max_connection_age,
    )
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
            f"tcu ingest: listening on {host}:{port} (database {config.db_path})", file=sys.stderr, flush=True
        )

    asyncio.run(serve(config, on_listening=on_listening))
    return 0
