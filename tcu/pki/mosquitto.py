"""Mosquitto (MQTT broker) configuration for the V2N channel: TLS with client certificates and ACLs.

Clients authenticate with the same certificates as on gRPC (:mod:`tcu.pki.identity`):
``require_certificate true`` refuses clients without one, ``use_identity_as_username
true`` makes the certificate's CN (the VIN, or the backend name) the MQTT user name,
``crlfile`` refuses revoked certificates, and the ACL file gives each identity its
topics. A client whose user name has no ACL entry may do nothing.

Topic scheme (:mod:`tcu.v2x.tiles`; ``<prefix>`` is ``v2x`` by default)::

    <prefix>/<msgtype>/<station>/<q1>/<q2>/.../<qn>     msgtype cam or denm, one level per quadkey digit

A message's originator is named by its ITS station id, not by the VIN (the VIN is personal
data and must not be broadcast). A :class:`StationMap` binds each certificate identity to the
one station id it may publish under; the ACL then gives::

    user <VIN>          topic write <prefix>/cam/<station>/#   and   <prefix>/denm/<station>/#
                        topic read  <prefix>/#
    user <backend>      topic write <prefix>/denm/<station>/#  (road-operator warnings)
                        topic read  <prefix>/#

An identity without a station id may only read. A vehicle can therefore neither impersonate
another station nor forge a backend warning; Mosquitto drops a denied PUBLISH silently (the
publisher is not told; the broker logs ``Denied PUBLISH``). Two identities with one station id
are refused. This is what the broker's ACL gives instead of ETSI TS 103 097 message signing,
which is not done: a receiver trusts the broker, not the message.

When Mosquitto is started as root it drops privileges to ``run_as_user`` (its default
``mosquitto``) *before* it opens the ACL file, the certificates and its persistence file.
:func:`write_mosquitto_config` therefore copies the server certificate, key, CA and CRL into
the output folder and, when run as root, hands that folder and the copies to that user (the
key stays 0600). Persistence (``persistence true``, ``<out>/data/``) keeps persistent sessions
and their QoS 1 messages across a broker restart.

Generating a configuration is pure; :func:`write_mosquitto_config` writes the files
for a :class:`~tcu.pki.DevPki` (revoked vehicles are left out of the ACL).
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import ssl
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tcu.pki._errors import PkiError
from tcu.pki.ca import DevPki, load_certificate
from tcu.pki.identity import check_name
from tcu.tomlutil import parse_toml

__all__ = [
    "MosquittoConfig",
    "StationMap",
    "load_station_map",
    "mqtt_tls_context",
    "render_acl",
    "render_mosquitto_conf",
    "write_mosquitto_config",
]

_MAX_STATION_ID = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class StationMap:
    """Which ITS station id each certificate identity (VIN or backend name) publishes under."""

    vehicles: Mapping[str, int] = field(default_factory=dict)
    backends: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        seen: dict[int, str] = {}
        for kind, table in (("vehicle", self.vehicles), ("backend", self.backends)):
            for name, station in table.items():
                check_name(name, what=f"{kind} id")
                if (
                    isinstance(station, bool)
                    or not isinstance(station, int)
                    or not 0 <= station <= _MAX_STATION_ID
                ):
                    raise PkiError(
                        f"{kind} {name}: station id {station!r} is not an integer in 0..{_MAX_STATION_ID}"
                    )
                if station in seen:
                    raise PkiError(f"station id {station} is given to both {seen[station]} and {name}")
                seen[station] = name


def load_station_map(path: str | os.PathLike[str]) -> StationMap:
    """Read a TOML file ``[vehicles] VIN = station`` and ``[backends] name = station``."""
    where = os.fspath(path)
    try:
        with open(where, "rb") as file:
            text = file.read().decode("utf-8")
    except OSError as exc:
        raise PkiError(f"cannot read the station map: {exc.strerror}", path=where) from exc
    except UnicodeDecodeError as exc:
        raise PkiError(f"not valid TOML: {exc}", path=where) from exc
    doc = parse_toml(text, lambda detail, _line: PkiError(f"not valid TOML: {detail}", path=where))
    unknown = set(doc) - {"vehicles", "backends"}
    if unknown:
        raise PkiError(f"unknown tables {sorted(unknown)} (expected [vehicles] and [backends])", path=where)
    tables: dict[str, dict[str, int]] = {}
    for key in ("vehicles", "backends"):
        table = doc.get(key, {})
        if not isinstance(table, dict):
            raise PkiError(f"{key} must be a table", path=where)
        tables[key] = table
    try:
        return StationMap(vehicles=tables["vehicles"], backends=tables["backends"])
    except PkiError as exc:
        raise PkiError(str(exc), path=where) from exc


@dataclass(frozen=True, slots=True)
class MosquittoConfig:
    """One TLS listener of a Mosquitto broker.

    ``run_as_user`` is Mosquitto's ``user`` option: when started as root it switches to
    that user (default ``mosquitto``), which must be able to read the key file.
    """

    port: int
    cafile: Path
    certfile: Path
    keyfile: Path
    acl_file: Path
    crlfile: Path | None = None
    bind_address: str = "127.0.0.1"
    run_as_user: str | None = None
    log_types: Sequence[str] = ("error", "warning", "notice", "information")
    persistence_dir: Path | None = None


def _value(text: str | os.PathLike[str], what: str) -> str:
    value = os.fspath(text)
    if not value or any(c in value for c in "\r\n\0"):
        raise PkiError(f"invalid {what} for mosquitto.conf: {value!r}")
    return value


def render_mosquitto_conf(config: MosquittoConfig) -> str:
    """The text of a ``mosquitto.conf`` for Mosquitto 2.x with one mTLS listener."""
    if not 0 < config.port < 65536:
        raise PkiError(f"invalid listener port {config.port}")
    lines = [
        "# Generated by tcu.pki.mosquitto: mutual TLS, identity from the certificate CN, per-identity ACL.",
        "per_listener_settings false",
        "allow_anonymous false",
        *(
            [
                "persistence true",
                "persistence_location "
                + _value(str(config.persistence_dir).rstrip("/") + "/", "persistence location"),
                "autosave_interval 60",
            ]
            if config.persistence_dir is not None
            else ["persistence false"]
        ),
        "max_queued_messages 1000",
        "log_dest stderr",
        *(f"log_type {_value(t, 'log type')}" for t in config.log_types),
        "connection_messages true",
    ]
    if config.run_as_user is not None:
        lines.append(f"user {_value(config.run_as_user, 'user')}")
    lines += [
        f"acl_file {_value(config.acl_file, 'acl_file')}",
        "",
        f"listener {config.port} {_value(config.bind_address, 'bind address')}",
        f"cafile {_value(config.cafile, 'cafile')}",
        f"certfile {_value(config.certfile, 'certfile')}",
        f"keyfile {_value(config.keyfile, 'keyfile')}",
    ]
    if config.crlfile is not None:
        lines.append(f"crlfile {_value(config.crlfile, 'crlfile')}")
    lines += ["require_certificate true", "use_identity_as_username true", ""]
    return "\n".join(lines)


def render_acl(
    vehicles: Iterable[str],
    backends: Iterable[str] = (),
    *,
    stations: StationMap | None = None,
    root: str = "v2x",
) -> str:
    """The text of a Mosquitto ACL file giving each vehicle and backend its topics.

    ``root`` is the topic prefix (one or more levels). Identities without a station id in
    ``stations`` may only read.
    """
    for level in root.split("/"):
        check_name(level, what="topic root")
    stations = stations or StationMap()
    lines = ["# Generated by tcu.pki.mosquitto. Identities without an entry may do nothing.", ""]
    for vin in sorted(set(vehicles)):
        check_name(vin, what="vehicle id")
        lines.append(f"user {vin}")
        station = stations.vehicles.get(vin)
        if station is not None:
            lines += [f"topic write {root}/cam/{station}/#", f"topic write {root}/denm/{station}/#"]
        lines += [f"topic read {root}/#", ""]
    for name in sorted(set(backends)):
        check_name(name, what="backend name")
        lines.append(f"user {name}")
        station = stations.backends.get(name)
        if station is not None:
            lines.append(f"topic write {root}/denm/{station}/#")
        lines += [f"topic read {root}/#", ""]
    return "\n".join(lines)


def _broker_user(run_as_user: str | None) -> pwd.struct_passwd | None:
    """The account Mosquitto will run as when started by us as root (None: no switch happens)."""
    if os.geteuid() != 0:
        return None
    name = run_as_user or "mosquitto"  # Mosquitto 2's default when started as root
    try:
        account = pwd.getpwnam(name)
    except KeyError as exc:
        raise PkiError(
            f"mosquitto would switch to user {name!r}, which does not exist (pass run_as_user / --user)"
        ) from exc
    return None if account.pw_uid == 0 else account


def _check_reachable(directory: Path, account: pwd.struct_passwd) -> None:
    """Refuse an output folder the broker's user could not even reach (a 0700 parent of root's)."""
    groups = {account.pw_gid, *(g.gr_gid for g in grp.getgrall() if account.pw_name in g.gr_mem)}
    for parent in [*reversed(directory.parents)]:
        st = parent.stat()
        if st.st_uid == account.pw_uid:
            ok = bool(st.st_mode & stat.S_IXUSR)
        elif st.st_gid in groups:
            ok = bool(st.st_mode & stat.S_IXGRP)
        else:
            ok = bool(st.st_mode & stat.S_IXOTH)
        if not ok:
            raise PkiError(
                f"mosquitto drops to user {account.pw_name!r} and could not reach {directory}: "
                f"{parent} is mode {stat.S_IMODE(st.st_mode):o}; write the broker files elsewhere "
                "or run the broker as that folder's owner (--user)"
            )


def _give(path: Path, account: pwd.struct_passwd | None) -> None:
    if account is not None:
        os.chown(path, account.pw_uid, account.pw_gid)


def write_mosquitto_config(
    pki: DevPki,
    out_dir: str | os.PathLike[str],
    *,
    port: int,
    bind_address: str = "127.0.0.1",
    run_as_user: str | None = None,
    log_types: Sequence[str] = ("error", "warning", "notice", "information"),
    root: str = "v2x",
    stations: StationMap | None = None,
) -> tuple[Path, Path]:
    """Write ``mosquitto.conf`` and ``acl`` for ``pki`` into ``out_dir``; returns both paths.

    The broker uses copies (in ``<out>/tls/``) of the PKI's server certificate, key, CA and
    CRL, readable by the user Mosquitto runs as (see the module docstring); vehicles and
    backends whose current certificate is revoked get no ACL entry; ``stations`` binds
    identities to the station ids they may publish under. Paths in the configuration are
    absolute. After issuing or revoking certificates, rerun it and send the broker SIGHUP:
    Mosquitto 2.0.11 then applies the new ACL and CRL to new connections (tested; what
    happens to a revoked client's open connection is not tested here).
    """
    out = Path(out_dir).resolve()
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    account = _broker_user(run_as_user)
    if account is not None:
        _check_reachable(out, account)
    revoked = pki.revoked_serials()

    def current(names: list[str], paths: Iterable[Path]) -> list[str]:
        return [
            n for n, p in zip(names, paths, strict=True) if load_certificate(p).serial_number not in revoked
        ]

    vehicles = pki.vehicles()
    backends = pki.backends()
    acl = out / "acl"
    conf = out / "mosquitto.conf"
    tls_dir = out / "tls"
    data_dir = out / "data"
    for folder in (tls_dir, data_dir):
        folder.mkdir(mode=0o700, exist_ok=True)
    copies = {}
    for label, source in (
        ("ca.pem", pki.ca_cert),
        ("server.pem", pki.server_cert),
        ("server.key", pki.server_key),
        ("crl.pem", pki.crl),
    ):
        target = tls_dir / label
        tmp = target.with_suffix(target.suffix + ".tmp")
        shutil.copyfile(source, tmp)
        os.chmod(tmp, 0o600 if label.endswith(".key") else 0o644)
        _give(tmp, account)
        os.replace(tmp, target)  # a reload (SIGHUP) never sees a half-written file
        copies[label] = target
    acl_tmp = out / "acl.tmp"
    acl_tmp.write_text(
        render_acl(
            current(vehicles, (pki.vehicle(v)[0] for v in vehicles)),
            current(backends, (pki.backend(b)[0] for b in backends)),
            stations=stations,
            root=root,
        )
    )
    os.chmod(acl_tmp, 0o644)
    os.replace(acl_tmp, acl)
    conf.write_text(
        render_mosquitto_conf(
            MosquittoConfig(
                port=port,
                cafile=copies["ca.pem"],
                certfile=copies["server.pem"],
                keyfile=copies["server.key"],
                crlfile=copies["crl.pem"],
                acl_file=acl,
                bind_address=bind_address,
                run_as_user=run_as_user,
                log_types=log_types,
                persistence_dir=data_dir,
            )
        )
    )
    for path in (out, tls_dir, data_dir, acl, conf):
        _give(path, account)
    return conf, acl


def mqtt_tls_context(
    ca_path: str | os.PathLike[str],
    cert_path: str | os.PathLike[str] | None = None,
    key_path: str | os.PathLike[str] | None = None,
) -> ssl.SSLContext:
    """A client TLS context (TLS 1.2+, host name checked) for ``aiomqtt.Client(tls_context=...)``."""
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=os.fspath(ca_path))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if cert_path is not None:
            context.load_cert_chain(
                os.fspath(cert_path), os.fspath(key_path) if key_path is not None else None
            )
    except (OSError, ssl.SSLError) as exc:
        raise PkiError(
            f"cannot build the MQTT TLS context: {exc}", path=os.fspath(cert_path or ca_path)
        ) from exc
    return context
