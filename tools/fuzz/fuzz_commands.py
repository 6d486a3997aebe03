"""Fuzz target ``commands``: :meth:`tcu.pki.commands.CommandVerifier.verify` on mutated
signed command envelopes.

A fixed Ed25519 key (derived from a constant seed) signs the seed envelopes; the verifier
runs with a fixed clock inside their validity window and an in-memory nonce store. The
first input byte picks a mode: even values verify the rest as received (almost all
mutations stop at ``malformed`` or ``bad_signature``); odd values first re-sign the rest
when it parses as a JSON object (fields kept as they are, ``sig`` replaced), so mutated
values reach the checks after the signature (target, validity window, nonce store).
Contract: only :class:`tcu.pki.CommandRejected` escapes.
"""

from __future__ import annotations

import base64
import contextlib
import json
from functools import cache

from cryptography.hazmat.primitives.asymmetric import ed25519

from tcu.pki import CommandRejected
from tcu.pki.commands import CommandVerifier, NonceStore, sign_command

__all__ = ["NAME", "NOW_NS", "VEHICLE_ID", "one_input", "seeds"]

NAME = "commands"
VEHICLE_ID = "VIN0001"
NOW_NS = 1_700_000_000_000_000_000
_KEY = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
_DOMAIN = b"tcu-command-v1\n"


@cache
def seeds() -> list[bytes]:
    """Valid envelopes (both modes), one for another vehicle and one already expired."""
    envelopes = [
        sign_command(
            _KEY,
            command_id="c-1",
            kind="campaign.start",
            target=VEHICLE_ID,
            payload=b"\x01\x02",
            issued_ns=NOW_NS,
            nonce="0" * 32,
        ),
        sign_command(
            _KEY,
            command_id="c-2",
            kind="profile.enable",
            target=VEHICLE_ID,
            payload=b'{"iccid":"8900"}',
            issued_ns=NOW_NS - 10**9,
            nonce="ab" * 16,
            ttl_s=60.0,
        ),
        sign_command(
            _KEY, command_id="c-3", kind="campaign.stop", target="VIN0002", issued_ns=NOW_NS, nonce="cd" * 16
        ),
        sign_command(
            _KEY,
            command_id="c-4",
            kind="campaign.stop",
            target=VEHICLE_ID,
            issued_ns=NOW_NS - 10**12,
            nonce="ef" * 16,
        ),
    ]
    return [bytes([mode]) + blob for blob in envelopes for mode in (0, 1)]


def _resign(blob: bytes) -> bytes:
    """``blob`` with a valid signature over its fields, if it is a JSON object; else as is."""
    try:
        fields = json.loads(blob.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return blob
    if not isinstance(fields, dict):
        return blob
    fields.pop("sig", None)
    try:
        canonical = (
            _DOMAIN + json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
        )
    except (TypeError, ValueError):  # e.g. NaN is not allowed, mixed key types
        return blob
    fields["sig"] = base64.b64encode(_KEY.sign(canonical)).decode("ascii")
    try:
        return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    except (TypeError, ValueError):
        return blob


def one_input(data: bytes) -> None:
    if not data:
        return
    blob = _resign(data[1:]) if data[0] & 1 else data[1:]
    verifier = CommandVerifier(
        _KEY.public_key(),
        VEHICLE_ID,
        clock=lambda: NOW_NS,
        nonce_store=NonceStore(capacity=1, clock=lambda: NOW_NS),
    )
    for _ in range(2):  # the second time it is a replay (or the store is full)
        with contextlib.suppress(CommandRejected):
            verifier.verify(blob)
