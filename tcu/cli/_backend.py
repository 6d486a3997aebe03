"""Command-line options of an OEM backend client (watch, campaign push): target and mTLS material."""

from __future__ import annotations

import argparse
from pathlib import Path

import grpc

from tcu.errors import ConfigError

__all__ = ["add_backend_args", "open_backend_channel", "signing_key_path"]


def add_backend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default="127.0.0.1:50051", help="ingest address host:port")
    sec = p.add_argument_group("security (mTLS with a backend certificate unless --insecure)")
    sec.add_argument("--pki", type=Path, metavar="DIR", help="development PKI directory (tcu pki init DIR)")
    sec.add_argument(
        "--backend", default="tcu-demo", help="backend certificate name in --pki (default: tcu-demo)"
    )
    sec.add_argument("--ca", type=Path, help="CA certificate of the ingest (PEM)")
    sec.add_argument("--cert", type=Path, help="backend client certificate (PEM)")
    sec.add_argument("--key", type=Path, help="backend client key (PEM)")
    sec.add_argument("--insecure", action="store_true", help="plain TCP (an ingest started with --insecure)")


def open_backend_channel(args: argparse.Namespace) -> grpc.aio.Channel:
    """The channel to the ingest; call it inside the running event loop."""
    if args.insecure:
        return grpc.aio.insecure_channel(args.target)
    if args.pki is not None:
        from tcu.pki import DevPki

        pki = DevPki(args.pki)
        ca = pki.ca_cert
        cert, key = pki.backend(args.backend)
    elif args.ca and args.cert and args.key:
        ca, cert, key = args.ca, args.cert, args.key
    else:
        raise ConfigError("give --pki DIR, or --ca/--cert/--key, or --insecure", key="--pki")
    from tcu.pki import channel_credentials

    return grpc.aio.secure_channel(args.target, channel_credentials(ca, cert, key))


def signing_key_path(args: argparse.Namespace) -> Path:
    """The backend's command-signing key: --signing-key, else the one of --pki."""
    if getattr(args, "signing_key", None) is not None:
        path: Path = args.signing_key
        return path
    if args.pki is not None:
        from tcu.pki import DevPki

        return DevPki(args.pki).command_signing_key
    raise ConfigError("give --signing-key FILE or --pki DIR", key="--signing-key")
