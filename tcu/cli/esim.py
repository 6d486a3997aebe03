"""``tcu esim``: eUICC profiles over the modem's AT port, audit-log verification, and
``tcu esim order``: a backend orders a vehicle's agent to enable a profile (signed command).

Composition root for :mod:`tcu.modem` (AT channel, APDU transport, modem quirks) and
:mod:`tcu.esim` (ISD-R session, profile manager, audit log).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tcu.cli._backend import add_command_args, send_signed_command
from tcu.errors import ConfigError, EsimError, InputError
from tcu.esim.audit import AuditLog, verify
from tcu.esim.es9 import Es9Config, parse_activation_code
from tcu.esim.lpa import Lpa, NotificationReport
from tcu.esim.manager import ProfileManager
from tcu.modem.apdu import AtApduTransport
from tcu.modem.at import AtChannel, AtConfig
from tcu.modem.device import Modem
from tcu.modem.profiles import PRESETS, modem_profile

__all__ = ["register"]

_EXAMPLE = """examples:
  tcu esim --port /dev/ttyUSB2 list
  tcu esim --port /dev/ttyUSB2 --modem-profile cfun-cycle enable 89490200001234567890
  tcu esim --port /dev/ttyUSB2 notifications --ack 3
  tcu esim --port /dev/ttyUSB2 --audit esim-audit.jsonl download 'LPA:1$smdp.example.com$MATCHING-ID' \
      --ca gsma-ci.pem --enable
  tcu esim --port /dev/ttyUSB2 notifications --deliver --ca gsma-ci.pem
  tcu esim audit verify /var/lib/tcu/esim-audit.jsonl
  tcu esim order WTCUSIM0000000001 89352010001234567802 --reason "maintenance" --pki ./pki
  tcu esim order-download WTCUSIM0000000001 'LPA:1$smdp.example.com$MATCHING-ID' --pki ./pki
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "esim",
        help="list, enable, disable and delete eUICC profiles through the modem",
        description="Manage eUICC profiles (SGP.22 ES10 over AT+CCHO/CGLA or AT+CSIM) and verify audit logs.",
        epilog=_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--port", help="modem AT port, e.g. /dev/ttyUSB2")
    parser.add_argument(
        "--modem-profile", default="generic", help=f"modem quirks preset: {', '.join(sorted(PRESETS))}"
    )
    parser.add_argument("--timeout-s", type=float, default=None, help="AT command and APDU timeout (s)")
    parser.add_argument("--audit", metavar="FILE", help="append every ES10 call to this hash-chained log")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("info", help="EID, eUICC versions and the enabled profile")
    actions.add_parser("list", help="installed profiles")
    for name in ("enable", "disable", "delete"):
        sub = actions.add_parser(name, help=f"{name} the profile with this ICCID")
        sub.add_argument("iccid")
    nick = actions.add_parser("nickname", help="set a profile's nickname")
    nick.add_argument("iccid")
    nick.add_argument("name")
    notes = actions.add_parser("notifications", help="pending notifications (or acknowledge one)")
    notes.add_argument("--ack", type=int, metavar="SEQ", help="remove notification SEQ (NotificationSent)")
    notes.add_argument(
        "--deliver",
        action="store_true",
        help="send every pending notification to its SM-DP+ (ES9+ handleNotification, needs --ca) and "
        "remove each from the card once delivered",
    )
    _add_es9_args(notes, required=False)
    download = actions.add_parser(
        "download",
        help="download a profile from an SM-DP+ (activation code) and install it",
        description="Download and install the profile an activation code names (SGP.22: ES9+ over HTTPS to "
        "the SM-DP+, ES10b to the card), then deliver the card's pending notifications (the install "
        "result first) and remove each once delivered. A failure cancels the session on the card and "
        "at the SM-DP+ where the protocol allows it; every step goes to the --audit log.",
        epilog="Example: tcu esim --port /dev/ttyUSB2 --audit a.jsonl download "
        "'LPA:1$smdp.example.com$MATCHING-ID' --ca gsma-ci.pem --enable",
    )
    download.add_argument(
        "activation_code", metavar="ACTIVATION_CODE", help="LPA:1$<SM-DP+ address>$<matching id>"
    )
    download.add_argument("--confirmation-code", help="the confirmation code, if the SM-DP+ requires one")
    download.add_argument("--enable", action="store_true", help="enable the new profile once installed")
    _add_es9_args(download, required=True)
    audit = actions.add_parser("audit", help="audit-log tools")
    audit_actions = audit.add_subparsers(dest="audit_action", metavar="AUDIT_ACTION", required=True)
    check = audit_actions.add_parser("verify", help="check the hash chain of an audit log")
    check.add_argument("file")
    order = actions.add_parser(
        "order",
        help="order a vehicle to enable a profile (signed command esim.enable) and wait for its answer",
        description="Sign an esim.enable command with the backend's command key and send it through the "
        "ingest's Fleet.SendCommand. The vehicle's agent verifies it, enables the profile between two "
        "polls of its roaming loop and answers once the outcome is known: registered on it, rolled back "
        "(no registration within the policy's attach_deadline_s) or failed (the card's result code). "
        "--port is not used.",
        epilog="Example: tcu esim order WTCUSIM0000000001 89352010001234567802 --reason test --pki ./pki",
    )
    order.add_argument("vehicle", help="vehicle id (VIN)")
    order.add_argument(
        "order_iccid", metavar="ICCID", help="profile to enable: 18-20 digits (a final F allowed)"
    )
    order.add_argument("--reason", default="", help="why (audited on the vehicle; at most 200 characters)")
    add_command_args(order, timeout_s=300.0)
    order_dl = actions.add_parser(
        "order-download",
        help="order a vehicle to download a profile and enable it (signed command esim.download)",
        description="Sign an esim.download command with the backend's command key and send it through the "
        "ingest's Fleet.SendCommand. The vehicle's agent verifies it, downloads the profile the activation "
        "code names from the SM-DP+ (its [connectivity] smdp_ca must be set), enables it like an "
        "esim.enable order and answers once the outcome is known. --port is not used.",
        epilog="Example: tcu esim order-download WTCUSIM0000000001 'LPA:1$smdp.example.com$MATCHING-ID' "
        "--pki ./pki",
    )
    order_dl.add_argument("vehicle", help="vehicle id (VIN)")
    order_dl.add_argument(
        "order_code", metavar="ACTIVATION_CODE", help="LPA:1$<SM-DP+ address>$<matching id>"
    )
    order_dl.add_argument("--reason", default="", help="why (audited on the vehicle; at most 200 characters)")
    add_command_args(order_dl, timeout_s=600.0)
    parser.set_defaults(func=run)


def _add_es9_args(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument(
        "--ca",
        metavar="PEM",
        required=required,
        help="CA file the SM-DP+'s TLS certificate must chain to (the GSMA CI or the TLS CA)",
    )
    parser.add_argument(
        "--connect",
        metavar="HOST:PORT",
        help="connect here instead of the SM-DP+ address (TLS still verifies that address); for tests",
    )
    parser.add_argument("--es9-timeout-s", type=float, default=30.0, help="timeout of one ES9+ call (s)")


def es9_config(args: argparse.Namespace) -> Es9Config:
    """The ES9+ settings of ``--ca``, ``--connect`` and ``--es9-timeout-s``."""
    if not args.ca:
        raise ConfigError("--ca is required to reach an SM-DP+", key="--ca")
    connect_to = None
    if args.connect:
        host, _, port = args.connect.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"expected HOST:PORT, got {args.connect!r}", key="--connect")
        connect_to = (host.strip("[]"), int(port))
    return Es9Config(ca_file=Path(args.ca), connect_to=connect_to, timeout_s=args.es9_timeout_s)


def order_payload(iccid: str, reason: str = "") -> bytes:
    """The ``esim.enable`` payload, checked as the vehicle will check it (:class:`InputError`)."""
    from tcu.agent.connectivity import parse_esim_order

    payload = iccid.encode("utf-8") + (b"\n" + reason.encode("utf-8") if reason else b"")
    parse_esim_order(payload)
    return payload


def download_payload(code: str, reason: str = "") -> bytes:
    """The ``esim.download`` payload, checked as the vehicle will check it (:class:`InputError`)."""
    from tcu.agent.commands import parse_download_order

    payload = code.encode("utf-8") + (b"\n" + reason.encode("utf-8") if reason else b"")
    parse_download_order(payload)
    return payload


def run_order_download(args: argparse.Namespace) -> int:
    try:
        payload = download_payload(args.order_code, args.reason)
    except InputError as exc:
        raise InputError(f"esim order-download: {exc}") from exc
    status, reason = asyncio.run(
        send_signed_command(args, kind="esim.download", payload=payload, id_prefix="esim-download")
    )
    print(f"{args.vehicle}: {status}{(': ' + reason) if reason else ''}")
    return 0 if status == "EXECUTED" else 1


def run_order(args: argparse.Namespace) -> int:
    try:
        payload = order_payload(args.order_iccid, args.reason)
    except InputError as exc:
        raise InputError(f"esim order: {exc}") from exc
    status, reason = asyncio.run(
        send_signed_command(args, kind="esim.enable", payload=payload, id_prefix="esim-order")
    )
    print(f"{args.vehicle}: {status}{(': ' + reason) if reason else ''}")
    return 0 if status == "EXECUTED" else 1


def run(args: argparse.Namespace) -> int:
    if args.action == "order":
        return run_order(args)
    if args.action == "order-download":
        return run_order_download(args)
    if args.action == "audit":
        count = verify(args.file)
        print(f"{args.file}: {count} entries, hash chain intact")
        return 0
    if not args.port:
        raise ConfigError("--port is required for this action", key="--port")
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    profile = modem_profile(args.modem_profile)
    if args.timeout_s is not None:
        profile = dataclasses.replace(
            profile, command_timeout_s=args.timeout_s, apdu_timeout_s=args.timeout_s
        )
    async with AtChannel(AtConfig(port=args.port, command_timeout_s=profile.command_timeout_s)) as channel:
        modem = Modem(channel, profile)
        manager = ProfileManager(
            AtApduTransport(channel, profile),
            audit=AuditLog(args.audit) if args.audit else None,
            refresh=profile.refresh_flag,
            after_switch=modem.after_profile_switch,
        )
        handler: Callable[[ProfileManager, argparse.Namespace], Awaitable[None]] = _HANDLERS[args.action]
        await handler(manager, args)
    return 0


def _lpa(manager: ProfileManager, args: argparse.Namespace) -> Lpa:
    return Lpa(manager.transport, es9_config(args), audit=manager.audit)


async def _download(manager: ProfileManager, args: argparse.Namespace) -> None:
    code = parse_activation_code(args.activation_code)
    lpa = _lpa(manager, args)
    result = await lpa.download(code, confirmation_code=args.confirmation_code)
    print(f"installed {result.iccid} from {result.smdp_address} (transaction {result.transaction_id})")
    _print_report(result.notifications)
    if args.enable:
        await manager.enable(result.iccid)
        print(f"enabled {result.iccid}")
        # the enable made notifications too (disable of the old profile, enable of the new one)
        _print_report(await lpa.deliver_notifications())


def _print_report(report: NotificationReport) -> None:
    for seq in report.delivered:
        print(f"notification {seq} delivered and removed")
    for seq in report.pending:
        print(f"notification {seq} NOT delivered (kept on the card, see the log)")


async def _info(manager: ProfileManager, args: argparse.Namespace) -> None:
    eid = await manager.eid()
    info = await manager.euicc_info()
    enabled = await manager.enabled()
    print(f"EID:       {eid}")
    print(f"SGP.22:    {info.svn}")
    print(f"firmware:  {info.firmware_version}")
    print(f"SAS:       {info.sas_accreditation_number}")
    print(f"enabled:   {enabled.iccid if enabled else 'none'}")


async def _list(manager: ProfileManager, args: argparse.Namespace) -> None:
    print(f"{'ICCID':<20}  {'STATE':<8}  {'CLASS':<12}  {'PROVIDER':<16}  {'NAME':<20}  NICKNAME")
    for p in await manager.profiles():
        print(
            f"{p.iccid or '?':<20}  {p.state.name if p.state is not None else '?':<8}  "
            f"{p.profile_class.name if p.profile_class is not None else '?':<12}  "
            f"{p.service_provider or '':<16}  {p.profile_name or '':<20}  {p.nickname or ''}"
        )


async def _enable(manager: ProfileManager, args: argparse.Namespace) -> None:
    await manager.enable(args.iccid)
    print(f"enabled {args.iccid}")


async def _disable(manager: ProfileManager, args: argparse.Namespace) -> None:
    await manager.disable(args.iccid)
    print(f"disabled {args.iccid}")


async def _delete(manager: ProfileManager, args: argparse.Namespace) -> None:
    await manager.delete(args.iccid)
    print(f"deleted {args.iccid}")


async def _nickname(manager: ProfileManager, args: argparse.Namespace) -> None:
    await manager.set_nickname(args.iccid, args.name)
    print(f"nickname of {args.iccid} set to {args.name!r}")


async def _notifications(manager: ProfileManager, args: argparse.Namespace) -> None:
    if args.deliver:
        report = await _lpa(manager, args).deliver_notifications()
        _print_report(report)
        if report.pending:
            raise EsimError(f"{len(report.pending)} notification(s) not delivered: {list(report.pending)}")
        return
    if args.ack is not None:
        await manager.acknowledge(args.ack)
        print(f"notification {args.ack} removed")
        return
    for n in await manager.notifications():
        print(f"{n.seq:>5}  {n.event.name:<8}  {n.iccid or '':<20}  {n.address}")


_HANDLERS: dict[str, Callable[[ProfileManager, argparse.Namespace], Awaitable[None]]] = {
    "info": _info,
    "list": _list,
    "enable": _enable,
    "disable": _disable,
    "delete": _delete,
    "nickname": _nickname,
    "notifications": _notifications,
    "download": _download,
}
