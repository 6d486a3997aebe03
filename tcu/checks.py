"""Checks shared by ``tcu agent --check`` and ``tcu ingest --check``: each records what it found
in a :class:`CheckReport` (``ok``, ``warnings``, ``problems``) instead of stopping at the first."""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from tcu.errors import TcuError

__all__ = [
    "CheckReport",
    "check_certificate",
    "check_listen",
    "check_private_key",
    "check_target",
    "check_writable_dir",
]

EXPIRY_WARNING_DAYS = 30


@dataclass
class CheckReport:
    ok: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return (
            [f"ok: {line}" for line in self.ok]
            + [f"warning: {line}" for line in self.warnings]
            + [f"problem: {line}" for line in self.problems]
        )

    def summary(self, what: str) -> str:
        if self.problems:
            return f"{what}: {len(self.problems)} problem(s), {len(self.warnings)} warning(s)"
        return f"{what}: OK ({len(self.ok)} checks, {len(self.warnings)} warning(s))"


def check_certificate(
    path: Path, what: str, report: CheckReport, now: datetime.datetime | None = None
) -> None:
    from tcu.pki.ca import load_certificate

    try:
        cert = load_certificate(path)
    except TcuError as exc:
        report.problems.append(f"{what}: {exc}")
        return
    now = now or datetime.datetime.now(datetime.UTC)
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    dates = f"valid {start:%Y-%m-%d} to {end:%Y-%m-%d}"
    if now < start:
        report.problems.append(f"{what}: {path}: not valid yet ({dates})")
    elif now > end:
        report.problems.append(f"{what}: {path}: expired ({dates})")
    elif end - now < datetime.timedelta(days=EXPIRY_WARNING_DAYS):
        report.warnings.append(f"{what}: {path}: expires in {(end - now).days} days ({dates})")
        report.ok.append(f"{what}: {path}: {cert.subject.rfc4514_string()}, {dates}")
    else:
        report.ok.append(f"{what}: {path}: {cert.subject.rfc4514_string()}, {dates}")


def check_private_key(path: Path, what: str, report: CheckReport) -> None:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        report.problems.append(f"{what}: {path}: cannot read: {exc.strerror}")
    except (ValueError, TypeError) as exc:
        report.problems.append(f"{what}: {path}: not an unencrypted PEM private key: {exc}")
    else:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            report.warnings.append(f"{what}: {path}: readable by others (mode {mode:o}); use 0600")
        report.ok.append(f"{what}: {path}: loads")


def check_writable_dir(path: Path, what: str, report: CheckReport) -> None:
    """``path`` is a writable directory, or could be created (its nearest existing parent is writable)."""
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        report.problems.append(f"{what}: {path}: {probe} is not a directory")
    elif not os.access(probe, os.W_OK | os.X_OK):
        report.problems.append(f"{what}: {path}: {probe} is not writable by this user (uid {os.geteuid()})")
    else:
        report.ok.append(
            f"{what}: {path} is writable" + ("" if probe == path else f" (to be created in {probe})")
        )


def check_target(target: str, what: str, report: CheckReport) -> None:
    host, sep, port = target.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not host:
        report.problems.append(f"{what}: expected host:port, got {target!r}")
        return
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        report.problems.append(f"{what}: {target}: the name does not resolve: {exc}")
        return
    report.ok.append(f"{what}: {target} resolves to {', '.join(sorted({str(i[4][0]) for i in infos}))}")


def check_listen(listen: str, report: CheckReport, *, key: str = "--listen") -> None:
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        report.problems.append(f"{key}: expected host:port, got {listen!r}")
        return
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as exc:
        report.problems.append(f"{key}: {listen}: the host does not resolve: {exc}")
        return
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds it
        try:
            sock.bind(address)
        except OSError as exc:
            report.problems.append(f"{key}: cannot bind {listen}: {exc.strerror}")
            return
    report.ok.append(f"{key}: {listen} is free to bind")
