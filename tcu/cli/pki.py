"""``tcu pki``: manage the development PKI (CA, server, vehicle and backend certificates, CRL)."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from typing import Any

from tcu.pki import DevPki

_EPILOG = """\
A development PKI for tests, demos and small fleets; production deployments bring their
own CA. Private keys are written 0600 and never overwritten without --force.

examples:
  tcu pki init ./pki                                  CA, CRL, server cert (localhost, 127.0.0.1), signing key
  tcu pki init ./pki --server-dns ingest.example --server-ip 10.0.0.5
  tcu pki vehicle ./pki WDD2050461A000001              client cert CN=VIN, URI SAN urn:tcu:vehicle:VIN
  tcu pki backend ./pki acme                           client cert URI SAN urn:tcu:backend:acme
  tcu pki revoke ./pki WDD2050461A000001               add the vehicle's certificate to the CRL
  tcu pki show ./pki                                   list certificates, expiry and revocation
  tcu pki mosquitto ./pki ./broker --port 8884 --stations stations.toml   mosquitto.conf + ACL (V2N)
"""


def register(subparsers: Any) -> None:
    """Add ``tcu pki`` and its subcommands to the ``tcu`` parser."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "pki",
        help="manage the development PKI (CA, certificates, CRL, command-signing key)",
        description="Manage the development PKI: CA, ingest server, vehicle and backend certificates, CRL.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=lambda _args: _help(parser))
    sub = parser.add_subparsers(dest="pki_command", metavar="ACTION")

    p = sub.add_parser(
        "init",
        help="create the CA, an empty CRL, the server certificate and the command-signing key",
        epilog="example: tcu pki init ./pki --server-dns localhost --server-ip 127.0.0.1",
    )
    p.add_argument("directory", metavar="DIR", help="PKI directory")
    p.add_argument(
        "--server-dns",
        action="append",
        metavar="NAME",
        help="DNS name in the server certificate (repeatable; default: localhost)",
    )
    p.add_argument(
        "--server-ip",
        action="append",
        metavar="ADDR",
        help="IP address in the server certificate (repeatable; default: 127.0.0.1)",
    )
    p.add_argument(
        "--days", type=float, default=825, help="server certificate validity in days (default: 825)"
    )
    p.add_argument(
        "--force", action="store_true", help="replace an existing PKI (old certificates stop working)"
    )
    p.set_defaults(func=_init)

    p = sub.add_parser(
        "vehicle",
        help="issue a vehicle client certificate (identity: the VIN)",
        epilog="example: tcu pki vehicle ./pki WDD2050461A000001",
    )
    p.add_argument("directory", metavar="DIR", help="PKI directory")
    p.add_argument("vin", metavar="VIN", help="vehicle id (VIN), the certificate identity")
    p.add_argument("--days", type=float, default=365, help="validity in days (default: 365)")
    p.add_argument("--force", action="store_true", help="replace an existing key and certificate")
    p.set_defaults(func=_vehicle)

    p = sub.add_parser(
        "backend",
        help="issue an OEM backend client certificate (for the fleet API)",
        epilog="example: tcu pki backend ./pki acme",
    )
    p.add_argument("directory", metavar="DIR", help="PKI directory")
    p.add_argument("name", metavar="NAME", help="backend name, the certificate identity")
    p.add_argument("--days", type=float, default=365, help="validity in days (default: 365)")
    p.add_argument("--force", action="store_true", help="replace an existing key and certificate")
    p.set_defaults(func=_backend)

    p = sub.add_parser(
        "revoke",
        help="revoke a vehicle's (or with --backend a backend's) current certificate in the CRL",
        epilog="example: tcu pki revoke ./pki WDD2050461A000001",
    )
    p.add_argument("directory", metavar="DIR", help="PKI directory")
    p.add_argument("name", metavar="VIN", help="vehicle id (or backend name with --backend)")
    p.add_argument("--backend", action="store_true", help="NAME is a backend, not a vehicle")
    p.set_defaults(func=_revoke)

    p = sub.add_parser(
        "show",
        help="list certificates with serial, validity and revocation",
        epilog="example: tcu pki show ./pki",
    )
    p.add_argument("directory", metavar="DIR", help="PKI directory")
    p.set_defaults(func=_show)

    p = sub.add_parser(
        "mosquitto",
        help="write mosquitto.conf and an ACL (mTLS, identity as user name, per-vehicle topics)",
        epilog="example: tcu pki mosquitto ./pki ./broker --port 8884 --stations stations.toml; "
        "mosquitto -c broker/mosquitto.conf",
    )
    p.add_argument("directory", metavar="DIR", help="PKI directory")
    p.add_argument("out", metavar="OUT_DIR", help="where mosquitto.conf and acl are written")
    p.add_argument("--port", type=int, required=True, help="TLS listener port")
    p.add_argument("--bind", default="127.0.0.1", help="listener address (default: 127.0.0.1)")
    p.add_argument(
        "--user",
        default=None,
        help="user mosquitto switches to when started as root (default: mosquitto's own, 'mosquitto');"
        " the output folder and its copies of the certificates are handed to that user",
    )
    p.add_argument(
        "--stations",
        metavar="FILE",
        default=None,
        help="TOML binding identities to ITS station ids ([vehicles] VIN = 1001, [backends] name = 900001);"
        " only identities with a station id may publish",
    )
    p.add_argument("--prefix", default="v2x", help="V2N topic prefix (default: v2x)")
    p.set_defaults(func=_mosquitto)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _init(args: argparse.Namespace) -> int:
    pki = DevPki(args.directory)
    pki.init(
        server_dns=args.server_dns if args.server_dns is not None else ["localhost"],
        server_ips=args.server_ip if args.server_ip is not None else ["127.0.0.1"],
        valid_days=args.days,
        force=args.force,
    )
    print(f"CA certificate:       {pki.ca_cert}")
    print(f"CRL:                  {pki.crl}")
    print(f"server certificate:   {pki.server_cert} (key {pki.server_key})")
    print(f"command signing key:  {pki.command_signing_key} (verify key {pki.command_verify_key})")
    return 0


def _vehicle(args: argparse.Namespace) -> int:
    cert, key = DevPki(args.directory).issue_vehicle(args.vin, valid_days=args.days, force=args.force)
    print(f"{cert}\n{key}")
    return 0


def _backend(args: argparse.Namespace) -> int:
    cert, key = DevPki(args.directory).issue_backend(args.name, valid_days=args.days, force=args.force)
    print(f"{cert}\n{key}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    pki = DevPki(args.directory)
    serial = pki.revoke_backend(args.name) if args.backend else pki.revoke_vehicle(args.name)
    print(f"revoked {'backend' if args.backend else 'vehicle'} {args.name} (serial {serial:x}) in {pki.crl}")
    return 0


def _show(args: argparse.Namespace) -> int:
    now = dt.datetime.now(dt.UTC)
    print(f"{'ROLE':8} {'NAME':24} {'SERIAL':16} {'NOT AFTER':20} STATE")
    for info in DevPki(args.directory).describe():
        state = "revoked" if info.revoked else "expired" if info.not_after < now else "valid"
        serial = f"{info.serial:x}"[:16]
        print(f"{info.role:8} {info.name:24} {serial:16} {info.not_after:%Y-%m-%d %H:%M:%S}  {state}")
    return 0


def _mosquitto(args: argparse.Namespace) -> int:
    from tcu.pki.mosquitto import load_station_map, write_mosquitto_config

    stations = load_station_map(args.stations) if args.stations is not None else None
    pki = DevPki(args.directory)
    conf, acl = write_mosquitto_config(
        pki,
        args.out,
        port=args.port,
        bind_address=args.bind,
        run_as_user=args.user,
        stations=stations,
        root=args.prefix,
    )
    print(f"{conf}\n{acl}")
    bound = set() if stations is None else {*stations.vehicles, *stations.backends}
    unbound = [n for n in [*pki.vehicles(), *pki.backends()] if n not in bound]
    if unbound:
        print(f"without a station id (may only read): {', '.join(unbound)}", file=sys.stderr)
    return 0
