"""``tcu send``: send CAN frames written in can-utils ``cansend`` syntax onto any python-can bus.

Syntax (as ``cansend``)::

    <id>#<data>          classic frame; <id> is 3 hex digits (11-bit) or 8 (29-bit),
                         <data> 0-8 bytes as hex pairs, optionally separated by '.'
    <id>#R[<len>]        remote frame, with an optional length 0-8
    <id>##<flags><data>  CAN FD frame: <flags> one hex digit (1: bit rate switch, 2: error
                         state indicator), <data> 0-64 bytes; a length that is no FD
                         length is padded with zero bytes to the next one, as cansend does
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from typing import Any

from tcu.errors import InputError, TcuError

__all__ = ["CanFrame", "parse_frame", "register"]

_FD_LENGTHS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64)
_HEX_RE = re.compile(r"[0-9A-Fa-f]*")


@dataclass(frozen=True, slots=True)
class CanFrame:
    arbitration_id: int
    extended: bool
    data: bytes
    remote: bool = False
    dlc: int = 0
    fd: bool = False
    bitrate_switch: bool = False
    error_state_indicator: bool = False


def parse_frame(text: str) -> CanFrame:
    """One frame in cansend syntax; :class:`InputError` says what is wrong."""

    def bad(problem: str) -> InputError:
        return InputError(f"frame {text!r}: {problem} (want <id>#<data>, <id>#R, <id>##<flags><data>)")

    ident, sep, rest = text.partition("#")
    if not sep:
        raise bad("no '#'")
    if len(ident) not in (3, 8) or not _HEX_RE.fullmatch(ident):
        raise bad(f"the id {ident!r} must be 3 hex digits (11-bit) or 8 (29-bit)")
    arbitration_id = int(ident, 16)
    extended = len(ident) == 8
    if not extended and arbitration_id > 0x7FF:
        raise bad(f"11-bit id 0x{arbitration_id:03X} is above 0x7FF")
    if extended and arbitration_id > 0x1FFFFFFF:
        raise bad(f"29-bit id 0x{arbitration_id:08X} is above 0x1FFFFFFF")
    if rest.startswith("#"):  # CAN FD
        flags_text, payload = rest[1:2], rest[2:]
        if not flags_text or not _HEX_RE.fullmatch(flags_text):
            raise bad("an FD frame needs one hex flags digit after '##'")
        flags = int(flags_text, 16)
        if flags & ~0x07:
            raise bad(f"FD flags {flags_text} has unknown bits (1: BRS, 2: ESI)")
        data = _data(payload, 64, bad)
        length = next(n for n in _FD_LENGTHS if n >= len(data))
        data = data.ljust(length, b"\x00")
        return CanFrame(
            arbitration_id,
            extended,
            data,
            dlc=length,
            fd=True,
            bitrate_switch=bool(flags & 0x01),
            error_state_indicator=bool(flags & 0x02),
        )
    if rest[:1] in ("R", "r"):
        length_text = rest[1:]
        if length_text and (not length_text.isdigit() or int(length_text) > 8):
            raise bad(f"remote frame length {length_text!r} must be 0-8")
        return CanFrame(arbitration_id, extended, b"", remote=True, dlc=int(length_text or 0))
    if "_" in rest:
        raise bad("the _<dlc> suffix (len8_dlc) is not supported")
    data = _data(rest, 8, bad)
    return CanFrame(arbitration_id, extended, data, dlc=len(data))


def _data(text: str, limit: int, bad: Any) -> bytes:
    digits = text.replace(".", "")
    if not _HEX_RE.fullmatch(digits) or len(digits) % 2:
        raise bad(f"data {text!r} must be pairs of hex digits, optionally separated by '.'")
    data = bytes.fromhex(digits)
    if len(data) > limit:
        raise bad(f"{len(data)} data bytes, more than {limit}")
    return data


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "send",
        help="send CAN frames in cansend syntax (123#DEADBEEF, 1F334455#11.22, 123#R, 123##1<data>)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Examples: tcu send 123#DEADBEEF (SocketCAN can0); "
        "tcu send --interface socketcand --channel can0 -o host=127.0.0.1 -o port=29536 0A0#1027000000000000",
    )
    p.add_argument("frame", nargs="+", type=_frame_arg, help="frame(s) in cansend syntax, sent in order")
    bus_arguments(p)
    p.add_argument("--verbose", "-v", action="store_true", help="print each frame as it is sent")
    p.set_defaults(func=run)


def bus_arguments(p: argparse.ArgumentParser) -> None:
    """The bus options of the CAN tools (``tcu send``, ``tcu record``, ``tcu play``)."""
    p.add_argument("--interface", "-i", default="socketcan", help="python-can interface (default: socketcan)")
    p.add_argument("--channel", "-c", default="can0", help="bus channel (default: can0)")
    p.add_argument("--bitrate", type=int, help="bit rate, for interfaces that set it")
    p.add_argument(
        "--option",
        "-o",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="more python-can bus arguments (integers and true/false are converted; repeatable)",
    )


def _frame_arg(text: str) -> CanFrame:
    try:
        return parse_frame(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise InputError(f"--option {text!r}: want KEY=VALUE")
    if value.lower() in ("true", "false"):
        return key, value.lower() == "true"
    try:
        return key, int(value, 0)
    except ValueError:
        return key, value


def run(args: argparse.Namespace) -> int:
    import can

    frames: list[CanFrame] = args.frame
    options = dict(_option(o) for o in args.option)
    if args.bitrate is not None:
        options["bitrate"] = args.bitrate
    if any(f.fd for f in frames):
        options.setdefault("fd", True)
    where = f"{args.interface} {args.channel}"
    try:
        bus = can.Bus(interface=args.interface, channel=args.channel, **options)
    except (can.CanError, OSError, ValueError, ImportError) as exc:
        raise TcuError(f"cannot open the bus {where}: {exc}") from exc
    try:
        for frame in frames:
            message = can.Message(
                arbitration_id=frame.arbitration_id,
                is_extended_id=frame.extended,
                data=frame.data,
                dlc=frame.dlc,
                is_remote_frame=frame.remote,
                is_fd=frame.fd,
                bitrate_switch=frame.bitrate_switch,
                error_state_indicator=frame.error_state_indicator,
            )
            try:
                bus.send(message, timeout=5)
            except (can.CanError, OSError) as exc:
                raise TcuError(f"cannot send {_show(frame)} on {where}: {exc}") from exc
            if args.verbose:
                print(f"{where}  {_show(frame)}")
    finally:
        bus.shutdown()
    return 0


def _show(frame: CanFrame) -> str:
    ident = f"{frame.arbitration_id:08X}" if frame.extended else f"{frame.arbitration_id:03X}"
    if frame.remote:
        return f"{ident}#R{frame.dlc or ''}"
    if frame.fd:
        flags = (1 if frame.bitrate_switch else 0) | (2 if frame.error_state_indicator else 0)
        return f"{ident}##{flags:X}{frame.data.hex().upper()}"
    return f"{ident}#{frame.data.hex().upper()}"
