"""Command-line options of an OEM backend client (watch, campaign push, esim order): target and mTLS
material, and sending a signed command through ``Fleet.SendCommand``."""

from __future__ import annotations

import argparse
import uuid
from pathlib import Path

import grpc

from tcu.errors import ConfigError, TcuError

__all__ = [
    "add_backend_args",
    "add_command_args",
    "open_backend_channel",
    "send_signed_command",
    "signing_key_path",
]


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


def add_command_args(p: argparse.ArgumentParser, *, timeout_s: float = 30.0) -> None:
    """Backend options (:func:`add_backend_args`) plus signing key, validity and wait of a command."""
    add_backend_args(p)
    p.add_argument("--signing-key", type=Path, help="backend command-signing key (default: the one in --pki)")
    p.add_argument("--ttl", type=float, default=300.0, help="seconds the command stays valid (default 300)")
    p.add_argument(
        "--timeout",
        type=float,
        default=timeout_s,
        help=f"seconds to wait for the vehicle's answer (default {timeout_s:g})",
    )
    p.add_argument(
        "--command-id",
        metavar="ID",
        help="the command's id (default: a new one); on an ingest with durable commands, sending"
        " again with the id of a QUEUED or TIMEOUT answer returns that command's outcome",
    )


async def send_signed_command(
    args: argparse.Namespace, *, kind: str, payload: bytes, id_prefix: str
) -> tuple[str, str]:
    """Sign a ``kind`` command for ``args.vehicle``, send it, wait; returns (status, reason).

    ``status`` is the ``CommandStatus`` name without its prefix (``EXECUTED``, ``REJECTED``,
    ``NOT_CONNECTED``, ``TIMEOUT``, and with durable commands ``EXPIRED``, ``QUEUED``,
    ``UNKNOWN``); ``reason`` is the vehicle's (or the ingest's) reason, for ``QUEUED`` and
    ``TIMEOUT`` followed by the ``--command-id`` to ask again with.
    """
    from tcu.api.v1 import fleet_pb2 as fleet_pb
    from tcu.api.v1 import fleet_pb2_grpc as fleet_grpc
    from tcu.pki import load_signing_key, sign_command

    command_id = getattr(args, "command_id", None) or f"{id_prefix}-{uuid.uuid4().hex[:12]}"
    blob = sign_command(
        load_signing_key(signing_key_path(args)),
        command_id=command_id,
        kind=kind,
        target=args.vehicle,
        payload=payload,
        ttl_s=args.ttl,
    )
    request = fleet_pb.SendCommandRequest(
        vehicle_id=args.vehicle,
        command_id=command_id,
        kind=kind,
        signed_command=blob,
        timeout_ms=int(args.timeout * 1000),
    )
    async with open_backend_channel(args) as channel:
        try:
            reply = await fleet_grpc.FleetStub(channel).SendCommand(request, timeout=args.timeout + 10)
        except grpc.aio.AioRpcError as exc:
            raise TcuError(
                f"SendCommand to {args.target} failed: {exc.code().name}: {exc.details()}"
            ) from exc
    status = fleet_pb.CommandStatus.Name(reply.status).removeprefix("COMMAND_STATUS_")
    reason = reply.reason
    if status in ("QUEUED", "TIMEOUT"):  # the command goes on: say how to ask for its outcome
        reason = f"{reason} [ask again: --command-id {command_id}]"
    return status, reason
