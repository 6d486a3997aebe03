"""``tcu v2x``: decode V2N payloads, publish a road-operator DENM into a tile, watch tiles live."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tcu.errors import ConfigError, InputError

_EPILOG = """\
examples:
  mosquitto_sub ... -t 'v2x/#' -F '%t %x' | tcu v2x decode -     one JSON object per message
  tcu v2x decode denm.uper                                      a binary payload from a file
  echo 0102000000... | tcu v2x decode - --raw                   the full ASN.1 tree
  tcu v2x publish --broker 127.0.0.1:8883 --pki ./pki --backend road-operator --station 900001 \\
      --cause roadworks --lat 49.1500 --lon 6.1700 --validity-s 3600
  tcu v2x publish ... --station 900001 --seq 17 --cancel --lat 49.15 --lon 6.17   end event #17
  tcu v2x watch --broker 127.0.0.1:8883 --pki ./pki --backend road-operator --lat 49.15 --lon 6.17
"""

CAUSES = {
    "accident": (2, 0),
    "roadworks": (3, 0),
    "adhesion": (6, 0),
    "surface": (9, 0),
    "stationary": (94, 0),
    "eebl": (99, 1),
}
_HEX = re.compile(r"^[0-9a-fA-F\s]+$")


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "v2x",
        help="V2N tools: decode CAM/DENM payloads, publish a road warning, watch tiles",
        description="ETSI CAM and DENM over MQTT on quadkey tiles (see README, V2N).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="v2x_command", metavar="ACTION")
    parser.set_defaults(func=lambda _args: _help(parser))

    p = sub.add_parser(
        "decode",
        help="UPER payloads (file or stdin; binary, hex, or mosquitto_sub -F '%%t %%x' lines) to JSON",
        epilog="example: tcu v2x decode denm.uper; mosquitto_sub ... -F '%t %x' | tcu v2x decode -",
    )
    p.add_argument("file", metavar="FILE", help="payload file, or - for stdin")
    p.add_argument(
        "--format",
        choices=("auto", "hex", "binary"),
        default="auto",
        help="hex: one payload per line, optionally after a topic and a space (default: auto)",
    )
    p.add_argument("--raw", action="store_true", help="print the full ASN.1 tree instead of the summary")
    p.add_argument("--prefix", default="v2x", help="topic prefix for topics on the lines (default: v2x)")
    p.set_defaults(func=_decode)

    p = sub.add_parser(
        "publish",
        help="publish a road-operator DENM (or its cancellation) into the tile of a position",
        epilog="example: tcu v2x publish --broker 127.0.0.1:8883 --pki ./pki --backend road-operator "
        "--station 900001 --cause roadworks --lat 49.15 --lon 6.17",
    )
    _broker_args(p)
    p.add_argument("--station", type=int, required=True, help="ITS station id the ACL gives this identity")
    p.add_argument("--cause", default="roadworks", help=f"{', '.join(CAUSES)} or a cause code number")
    p.add_argument("--sub-cause", type=int, default=None, help="sub-cause code (default: the cause's)")
    p.add_argument("--lat", type=float, required=True, help="event latitude (degrees)")
    p.add_argument("--lon", type=float, required=True, help="event longitude (degrees)")
    p.add_argument("--heading", type=float, default=None, help="traffic direction concerned (degrees)")
    p.add_argument("--relevance-m", type=float, default=1000.0, help="relevance distance (default 1000 m)")
    p.add_argument("--validity-s", type=int, default=600, help="validity in seconds (default 600)")
    p.add_argument(
        "--direction",
        default="allTrafficDirections",
        choices=("allTrafficDirections", "upstreamTraffic", "downstreamTraffic", "oppositeTraffic"),
        help="relevance traffic direction (default allTrafficDirections)",
    )
    p.add_argument("--seq", type=int, default=None, help="sequence number of the actionId (default: clock)")
    p.add_argument("--cancel", action="store_true", help="send the termination of event --seq")
    p.add_argument("--level", type=int, default=18, help="publish tile level (default 18)")
    p.set_defaults(func=_publish)

    p = sub.add_parser(
        "watch",
        help="subscribe to the tiles around a position (or given quadkeys) and print what arrives",
        epilog="example: tcu v2x watch --broker 127.0.0.1:8883 --pki ./pki --backend road-operator "
        "--lat 49.15 --lon 6.17 --json",
    )
    _broker_args(p)
    p.add_argument("--lat", type=float, help="centre latitude: its tile and the 8 around it")
    p.add_argument("--lon", type=float, help="centre longitude")
    p.add_argument("--level", type=int, default=14, help="subscription tile level (default 14)")
    p.add_argument("--tile", action="append", default=[], help="a quadkey to watch (repeatable)")
    p.add_argument("--types", default="cam,denm", help="message types (default cam,denm)")
    p.add_argument("--json", action="store_true", help="one JSON object per message")
    p.add_argument("--count", type=int, default=0, help="stop after this many messages (default: Ctrl-C)")
    p.set_defaults(func=_watch)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _broker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--broker", default="127.0.0.1:8883", help="MQTT broker host:port (default 127.0.0.1:8883)"
    )
    p.add_argument("--prefix", default="v2x", help="topic prefix (default v2x)")
    sec = p.add_argument_group("security (mTLS with a certificate of the PKI)")
    sec.add_argument("--pki", type=Path, metavar="DIR", help="development PKI directory (tcu pki init DIR)")
    sec.add_argument("--backend", default=None, help="backend certificate name in --pki")
    sec.add_argument(
        "--vehicle", default=None, help="vehicle certificate (VIN) in --pki, instead of --backend"
    )
    sec.add_argument("--ca", type=Path, help="CA certificate of the broker (PEM)")
    sec.add_argument("--cert", type=Path, help="client certificate (PEM)")
    sec.add_argument("--key", type=Path, help="client key (PEM)")


def _client_config(args: argparse.Namespace, **kw: Any) -> Any:
    from tcu.v2x.client import V2xClientConfig

    host, sep, port = args.broker.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"must be host:port, got {args.broker!r}", key="--broker")
    if args.pki is not None:
        from tcu.pki import DevPki

        pki = DevPki(args.pki)
        ca = pki.ca_cert
        if args.vehicle is not None:
            cert, key = pki.vehicle(args.vehicle)
            who = args.vehicle
        elif args.backend is not None:
            cert, key = pki.backend(args.backend)
            who = args.backend
        else:
            raise ConfigError(
                "with --pki, name the certificate: --backend NAME or --vehicle VIN", key="--pki"
            )
    elif args.ca and args.cert and args.key:
        ca, cert, key, who = args.ca, args.cert, args.key, "tcu-v2x"
    else:
        raise ConfigError("give --pki DIR with --backend/--vehicle, or --ca/--cert/--key", key="--pki")
    try:
        return V2xClientConfig(
            host=host,
            port=int(port),
            client_id=f"{who}-cli",
            ca_file=ca,
            cert_file=cert,
            key_file=key,
            prefix=args.prefix,
            reconnect_max_s=2.0,
            **kw,
        )
    except ValueError as exc:
        raise ConfigError(str(exc), key="--level") from exc


# ------------------------------------------------------------------ decode


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, frozenset | set):
        return sorted(_jsonable(v) for v in value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def message_json(message: Any) -> dict[str, Any]:
    """A CAM or DENM as a JSON-able dict (``type`` first)."""
    from tcu.v2x.messages import Cam

    out: dict[str, Any] = {"type": "CAM" if isinstance(message, Cam) else "DENM"}
    out.update(_jsonable(dataclasses.asdict(message)))
    return out


def _payloads(data: bytes, fmt: str, where: str) -> list[tuple[int | None, str | None, bytes | None, str]]:
    """``(line, topic, payload, problem)`` for each payload in ``data``."""
    text: str | None = None
    if fmt != "binary":
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            text = None
    lines = text.splitlines() if text is not None else []
    is_hex = fmt == "hex" or (
        fmt == "auto"
        and text is not None
        and any(line.strip() for line in lines)
        and all(_HEX.match(line.rsplit(" ", 1)[-1]) for line in lines if line.strip())
    )
    if not is_hex:
        if fmt == "hex":
            return [(None, None, None, "not hex text")]
        return [(None, None, data, "")]
    out: list[tuple[int | None, str | None, bytes | None, str]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        topic, _, hexpart = line.strip().rpartition(" ")
        try:
            out.append((number, topic or None, bytes.fromhex(hexpart), ""))
        except ValueError as exc:
            out.append((number, topic or None, None, f"not hex: {exc}"))
    return out


def _decode(args: argparse.Namespace) -> int:
    from tcu.v2x.errors import V2xError
    from tcu.v2x.messages import decode_any, decode_raw
    from tcu.v2x.tiles import parse_topic

    where = "-" if args.file == "-" else args.file
    if args.file == "-":
        data = sys.stdin.buffer.read()
    else:
        try:
            data = Path(args.file).read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read: {exc.strerror}", path=args.file) from exc
    failed = 0
    for line, topic, payload, problem in _payloads(data, args.format, where):
        place = f"{where}:{line}" if line is not None else where
        if payload is None:
            print(f"{place}: {problem}", file=sys.stderr)
            failed += 1
            continue
        try:
            if args.raw:
                version, kind, tree = decode_raw(payload)
                out: dict[str, Any] = {"type": kind, "protocol_version": version, "asn1": _jsonable(tree)}
            else:
                out = message_json(decode_any(payload))
            if topic is not None:
                parsed = parse_topic(args.prefix, topic)
                out = {"topic": topic, "quadkey": parsed.quadkey, **out}
        except V2xError as exc:
            print(f"{place}: {exc.reason}: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(json.dumps(out))
    return 1 if failed else 0


# ------------------------------------------------------------------ publish


def _cause(text: str, sub: int | None) -> tuple[int, int]:
    if text in CAUSES:
        cause, default_sub = CAUSES[text]
    elif text.isdigit():
        cause, default_sub = int(text), 0
    else:
        raise ConfigError(f"unknown cause {text!r} (one of {', '.join(CAUSES)} or a number)", key="--cause")
    return cause, default_sub if sub is None else sub


def _publish(args: argparse.Namespace) -> int:
    from tcu.v2x.client import V2xClient
    from tcu.v2x.errors import V2xError
    from tcu.v2x.messages import ActionId, Denm, StationPosition, encode_denm, its_time_ms

    cause, sub = _cause(args.cause, args.sub_cause)
    if args.cancel and args.seq is None:
        raise ConfigError("--cancel needs the --seq of the event to end", key="--seq")
    seq = args.seq if args.seq is not None else int(time.time()) % 65536
    now = its_time_ms(time.time_ns())
    denm = Denm(
        station_id=args.station,
        action_id=ActionId(args.station, seq),
        detection_time_ms=now,
        reference_time_ms=now,
        event_position=StationPosition(args.lat, args.lon),
        station_type=15,  # roadSideUnit: a road operator's central station
        termination="isCancellation" if args.cancel else None,
        relevance_distance_m=args.relevance_m,
        relevance_traffic_direction=args.direction,
        validity_s=args.validity_s,
        cause_code=None if args.cancel else cause,
        sub_cause_code=sub,
        information_quality=5,
        event_heading_deg=args.heading,
    )
    try:
        payload = encode_denm(denm)
    except V2xError as exc:
        raise ConfigError(str(exc), key="--lat") from exc
    client = V2xClient(_client_config(args, publish_level=args.level, subscribe_level=min(14, args.level)))

    async def run() -> int:
        async with asyncio.TaskGroup() as tg:
            client.start(tg, name="tcu.cli.v2x.publish")
            try:
                await client.wait_connected(10.0)
            except TimeoutError:
                client.stop()
                print(
                    f"tcu v2x publish: error: no connection to {args.broker}: {client.last_error}",
                    file=sys.stderr,
                )
                return 1
            client.publish_denm(denm)
            client.stop()
        return 0 if client.counters["denm_published"] == 1 else 1

    rc = asyncio.run(run())
    if rc == 0:
        topic = client.topic_of("denm", args.station, args.lat, args.lon)
        kind = "cancellation of" if args.cancel else "DENM"
        print(f"published {kind} {args.station}#{seq} (cause {cause}/{sub}) on {topic}")
        print(payload.hex())
        if not args.cancel:
            print(
                f"end it with: tcu v2x publish ... --station {args.station} --seq {seq} --cancel",
                file=sys.stderr,
            )
        print(
            "note: the broker drops a PUBLISH its ACL refuses without telling the publisher; "
            "check with tcu v2x watch",
            file=sys.stderr,
        )
    return rc


# ------------------------------------------------------------------ watch


def _line(received: Any) -> str:
    from tcu.v2x.messages import Cam

    m = received.message
    when = datetime.fromtimestamp(received.received_ns / 1e9, UTC).strftime("%H:%M:%S.%f")[:-3]
    pos = m.position if isinstance(m, Cam) else m.event_position
    where = f"{pos.latitude_deg:.6f},{pos.longitude_deg:.6f}"
    if isinstance(m, Cam):
        speed = "-" if m.speed_mps is None else f"{m.speed_mps * 3.6:.0f} km/h"
        heading = "-" if m.heading_deg is None else f"{m.heading_deg:.0f}°"
        return f"{when} CAM  station {m.station_id} at {where} {speed} heading {heading}"
    what = f"end ({m.termination})" if m.termination else f"cause {m.cause_code}/{m.sub_cause_code}"
    relevance = "-" if m.relevance_distance_m is None else f"{m.relevance_distance_m:g} m"
    return (
        f"{when} DENM station {m.station_id} #{m.action_id.sequence_number} {what} at {where} "
        f"validity {m.validity_s} s relevance {relevance} tile {received.topic.quadkey}"
    )


def _watch(args: argparse.Namespace) -> int:
    from tcu.v2x.client import Received, V2xClient
    from tcu.v2x.tiles import filters_for

    types = tuple(t.strip() for t in args.types.split(",") if t.strip())
    if not types or any(t not in ("cam", "denm") for t in types):
        raise ConfigError("must be cam, denm or cam,denm", key="--types")
    fixed = filters_for(args.prefix, args.tile, types) if args.tile else []
    if not fixed and (args.lat is None or args.lon is None):
        raise ConfigError("give --lat and --lon, or --tile QUADKEY", key="--lat")
    seen = 0
    done = asyncio.Event()

    def show(received: Received) -> None:
        nonlocal seen
        if args.json:
            out: dict[str, Any] = {"quadkey": received.topic.quadkey, "received_ns": received.received_ns}
            out.update(message_json(received.message))
            print(json.dumps(out), flush=True)
        else:
            print(_line(received), flush=True)
        seen += 1
        if args.count and seen >= args.count:
            done.set()

    client = V2xClient(
        _client_config(
            args,
            subscribe_level=args.level,
            publish_level=max(args.level, 18),
            subscribe_types=types,
            fixed_filters=tuple(fixed),
        ),
        on_message=show,
    )
    if args.lat is not None and args.lon is not None:
        client.set_position(args.lat, args.lon)

    async def run() -> None:
        async with asyncio.TaskGroup() as tg:
            client.start(tg, name="tcu.cli.v2x.watch")
            try:
                await done.wait()
            finally:
                client.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    bad = {k: v for k, v in client.counters.items() if k.startswith("rx_bad_")}
    if bad:
        print(f"dropped: {bad}", file=sys.stderr)
    return 0
