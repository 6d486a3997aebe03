"""``tcu ingest --check``: validate what the ingest would use, without starting it; every problem listed.

TLS files (server certificate, key, client CA, CRL) and their validity dates, the database
(an existing one opens read-only with the schema this ingest understands, a new one can
be created), and the listen address (the port is free to bind on this host).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tcu.checks import CheckReport, check_certificate, check_listen, check_private_key, check_writable_dir
from tcu.ingest.config import IngestTls, JetStreamConfig

__all__ = ["check_ingest"]


def check_database(path: Path, report: CheckReport) -> None:
    from tcu.ingest.store.schema import SCHEMA_VERSION as _SCHEMA_VERSION

    if not path.exists():
        check_writable_dir(path.parent, "--db (a new database)", report)
        return
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        report.problems.append(f"--db: {path}: not a database this ingest can open: {exc}")
        return
    if row is None or row[0] != _SCHEMA_VERSION:
        report.problems.append(
            f"--db: {path}: schema_version {row and row[0]!r}, this ingest understands {_SCHEMA_VERSION!r}"
        )
        return
    check_writable_dir(path.parent, "--db (WAL and journal files)", report)
    report.ok.append(f"--db: {path}: schema {_SCHEMA_VERSION}")


def check_jetstream(config: JetStreamConfig, report: CheckReport) -> None:
    """The NATS servers answer, JetStream is enabled, and the stream exists (or will be created)."""
    import asyncio

    async def probe() -> None:
        import nats.js.errors

        from tcu.errors import IngestError
        from tcu.ingest.jetstream import NATS_ERRORS, connect, where

        try:
            client = await connect(config, name="tcu-ingest-check")
        except IngestError as exc:
            report.problems.append(f"--nats: {exc}")
            return
        try:
            js = client.jetstream(timeout=config.publish_timeout_s)
            try:
                info = await js.stream_info(config.stream)
            except nats.js.errors.NotFoundError:
                report.ok.append(
                    f"--nats: {where(client)}: JetStream answers; stream {config.stream} will be"
                    f" created with {config.replicas} replicas"
                )
                return
            except NATS_ERRORS as exc:
                report.problems.append(f"--nats: JetStream on {where(client)}: {type(exc).__name__}: {exc}")
                return
            line = (
                f"--nats: {where(client)}: stream {config.stream}, {info.state.messages} messages,"
                f" {info.config.num_replicas} replicas"
            )
            if info.config.num_replicas != config.replicas:
                report.warnings.append(f"{line} (--stream-replicas {config.replicas} is not applied to it)")
            else:
                report.ok.append(line)
        finally:
            await client.close()

    asyncio.run(probe())


def check_ingest(
    *,
    listen: str,
    db_path: Path | None,
    tls: IngestTls | None,
    tls_error: str | None,
    insecure: bool,
    jetstream: JetStreamConfig | None = None,
) -> CheckReport:
    report = CheckReport()
    if jetstream is not None:
        check_jetstream(jetstream, report)
    if tls_error is not None:
        report.problems.append(tls_error)
    if tls is not None:
        check_certificate(tls.cert, "--tls-cert", report)
        check_private_key(tls.key, "--tls-key", report)
        check_certificate(tls.client_ca, "--client-ca", report)
        if tls.crl is not None:
            from tcu.errors import TcuError
            from tcu.pki.ca import load_crl

            try:
                load_crl(tls.crl)
                report.ok.append(f"--crl: {tls.crl}: loads")
            except TcuError as exc:
                report.problems.append(f"--crl: {exc}")
    elif insecure:
        report.warnings.append("--insecure: no TLS, no client authentication (local tests only)")
    if db_path is None:
        report.problems.append("--db: the ingest needs a database: give --db PATH")
    else:
        check_database(db_path, report)
    check_listen(listen, report)
    return report
