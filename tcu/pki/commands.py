"""Signed vehicle commands: an Ed25519-signed JSON envelope, verified on the vehicle.

The backend signs with the command-signing key (:attr:`tcu.pki.DevPki.command_signing_key`);
vehicles hold only the public key. A command is accepted once, by its target vehicle,
inside its validity window. The TLS channel already authenticates the ingest; the
signature additionally proves the command came from the backend that holds the key,
whatever relayed it.

Wire format (UTF-8 JSON object, the exact key set below, nothing else)::

    {"command_id": "c-42", "expires_ns": 1700000300000000000, "issued_ns": 1700000000000000000,
     "kind": "campaign.start", "nonce": "<32 lowercase hex>", "payload": "<base64>",
     "sig": "<base64 of 64 bytes>", "target": "<VIN>", "v": 1}

The signature covers ``b"tcu-command-v1\\n"`` followed by the *canonical JSON* of every
field except ``sig``: keys sorted, no whitespace (``separators=(",", ":")``), ASCII
only (``ensure_ascii=True``), integers in decimal. The verifier re-creates those bytes
from the parsed values, so formatting of the received blob does not matter but every
value does. Checks run in this order and the first failure is the reason:

``malformed`` (size, JSON, keys, types, validity window) → ``bad_signature`` →
``wrong_target`` → ``not_yet_valid`` / ``expired`` (each with ``max_skew_s`` tolerance) →
``replayed`` / ``replay_store_full``.

A nonce is remembered until the command's expiry plus the skew tolerance, so a replay
is refused for exactly as long as the command could otherwise be accepted. The
:class:`NonceStore` is bounded: when it is full of unexpired nonces, new commands are
refused (``replay_store_full``) instead of forgetting a nonce. With a ``path`` it
appends each nonce to a file (fsync before the command is accepted), so a restart does
not re-open a replay window.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tcu.fsutil import write_atomic
from tcu.pki._errors import CommandRejected, CommandRejectReason, PkiError
from tcu.pki.identity import check_name

__all__ = [
    "COMMAND_FORMAT_VERSION",
    "Command",
    "CommandVerifier",
    "NonceStore",
    "load_signing_key",
    "load_verify_key",
    "sign_command",
]

log = logging.getLogger(__name__)

COMMAND_FORMAT_VERSION = 1
_DOMAIN = b"tcu-command-v1\n"
_KEYS = frozenset({"v", "command_id", "kind", "target", "issued_ns", "expires_ns", "nonce", "payload", "sig"})
_NONCE_RE = re.compile(r"[0-9a-f]{32}")
_TEXT_RE = re.compile(r"[\x21-\x7e]{1,128}")  # printable ASCII, no spaces
_NS_PER_S = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Command:
    """A verified command. ``payload`` is opaque bytes interpreted according to ``kind``."""

    command_id: str
    kind: str
    target: str
    issued_ns: int
    expires_ns: int
    nonce: str
    payload: bytes


def _canonical(fields: dict[str, Any]) -> bytes:
    return _DOMAIN + json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def load_signing_key(path: str | os.PathLike[str]) -> ed25519.Ed25519PrivateKey:
    """Load the Ed25519 command-signing key (PEM PKCS#8, unencrypted)."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as exc:
        raise PkiError(f"cannot read signing key: {exc.strerror}", path=os.fspath(path)) from exc
    except (ValueError, TypeError) as exc:
        raise PkiError("not an unencrypted PEM private key", path=os.fspath(path)) from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise PkiError("not an Ed25519 private key", path=os.fspath(path))
    return key


def load_verify_key(path: str | os.PathLike[str]) -> ed25519.Ed25519PublicKey:
    """Load the Ed25519 command-verify key (PEM SubjectPublicKeyInfo)."""
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except OSError as exc:
        raise PkiError(f"cannot read verify key: {exc.strerror}", path=os.fspath(path)) from exc
    except ValueError as exc:
        raise PkiError("not a PEM public key", path=os.fspath(path)) from exc
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise PkiError("not an Ed25519 public key", path=os.fspath(path))
    return key


def sign_command(
    key: ed25519.Ed25519PrivateKey,
    *,
    command_id: str,
    kind: str,
    target: str,
    payload: bytes = b"",
    ttl_s: float = 300.0,
    issued_ns: int | None = None,
    nonce: str | None = None,
    clock: Callable[[], int] = time.time_ns,
) -> bytes:
    """Sign a command for vehicle ``target``; returns the envelope bytes (see the module docstring).

    The command is valid from ``issued_ns`` (default: now) for ``ttl_s`` seconds.
    ``nonce`` defaults to 16 random bytes in hex; pass one only in tests.
    """
    if not _TEXT_RE.fullmatch(command_id) or not _TEXT_RE.fullmatch(kind):
        raise PkiError("command_id and kind must be 1-128 printable ASCII characters without spaces")
    check_name(target, what="target vehicle id")
    issued = clock() if issued_ns is None else issued_ns
    fields: dict[str, Any] = {
        "v": COMMAND_FORMAT_VERSION,
        "command_id": command_id,
        "kind": kind,
        "target": target,
        "issued_ns": issued,
        "expires_ns": issued + round(ttl_s * _NS_PER_S),
        "nonce": secrets.token_hex(16) if nonce is None else nonce,
        "payload": base64.b64encode(payload).decode("ascii"),
    }
    signature = key.sign(_canonical(fields))
    fields["sig"] = base64.b64encode(signature).decode("ascii")
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


class NonceStore:
    """Nonces of accepted commands, each remembered until a given time; bounded and optionally durable.

    ``capacity`` bounds the number of unexpired nonces; when it is reached,
    :meth:`remember` refuses (``replay_store_full``) rather than forget one. With
    ``path``, nonces are appended to that file and fsynced before :meth:`remember`
    returns, and loaded again (expired ones dropped) by the constructor; the file is
    rewritten atomically when it holds many expired lines. Thread-safe; file I/O is
    blocking (call from a worker thread when an event loop runs).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        capacity: int = 10_000,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        if capacity < 1:
            raise PkiError(f"nonce store capacity must be positive, got {capacity}")
        self.path = Path(path) if path is not None else None
        self.capacity = capacity
        self._clock = clock
        self._until: dict[str, int] = {}
        self._heap: list[tuple[int, str]] = []
        self._file_lines = 0
        self._lock = threading.Lock()
        if self.path is not None:
            self._load(self.path)

    def __len__(self) -> int:
        return len(self._until)

    def __contains__(self, nonce: object) -> bool:
        return nonce in self._until

    def _load(self, path: Path) -> None:
        try:
            text = path.read_text(encoding="ascii", errors="replace")
        except FileNotFoundError:
            return
        except OSError as exc:
            raise PkiError(f"cannot read nonce store: {exc.strerror}", path=str(path)) from exc
        now = self._clock()
        lines = text.split("\n")
        for number, line in enumerate(lines, start=1):
            parts = line.split(" ")
            if len(parts) != 2 or not _NONCE_RE.fullmatch(parts[0]) or not parts[1].isdigit():
                if line and number < len(lines):  # a torn last line after a crash is expected
                    log.warning("%s:%d: ignoring a malformed nonce line", path, number)
                continue
            until = int(parts[1])
            if until >= now and self._until.get(parts[0], -1) < until:
                self._until[parts[0]] = until
                heapq.heappush(self._heap, (until, parts[0]))
        self._file_lines = len(lines)
        if self._file_lines > 2 * len(self._until) + 1000:
            self._rewrite(path)

    def _prune(self, now_ns: int) -> None:
        while self._heap and self._heap[0][0] < now_ns:
            until, nonce = heapq.heappop(self._heap)
            if self._until.get(nonce) == until:
                del self._until[nonce]

    def _rewrite(self, path: Path) -> None:
        body = "".join(f"{n} {u}\n" for n, u in self._until.items()).encode("ascii")
        try:
            write_atomic(path, body, mode=0o600)
        except OSError as exc:
            raise PkiError(f"cannot rewrite nonce store: {exc.strerror}", path=str(path)) from exc
        self._file_lines = len(self._until)

    def _append(self, path: Path, nonce: str, until_ns: int) -> None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, f"{nonce} {until_ns}\n".encode("ascii"))
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise PkiError(f"cannot persist nonce: {exc.strerror}", path=str(path)) from exc
        self._file_lines += 1

    def remember(self, nonce: str, until_ns: int) -> bool:
        """Record ``nonce`` until ``until_ns``; ``False`` if it is already remembered (a replay).

        Raises :class:`CommandRejected` (``replay_store_full``) when the store is full of
        unexpired nonces, :class:`PkiError` when the file cannot be written (the nonce is
        then not remembered and the command must not run).
        """
        with self._lock:
            now = self._clock()
            self._prune(now)
            if nonce in self._until:
                return False
            if len(self._until) >= self.capacity:
                raise CommandRejected(
                    CommandRejectReason.REPLAY_STORE_FULL,
                    f"{len(self._until)} unexpired nonces remembered (capacity {self.capacity})",
                )
            if self.path is not None:
                self._append(self.path, nonce, until_ns)
            self._until[nonce] = until_ns
            heapq.heappush(self._heap, (until_ns, nonce))
            if self.path is not None and self._file_lines > 2 * len(self._until) + 1000:
                self._rewrite(self.path)
            return True


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


class CommandVerifier:
    """Verifies signed commands addressed to one vehicle.

    ``clock`` returns UTC epoch nanoseconds. ``max_skew_s`` tolerates a vehicle clock
    that is off in either direction; ``max_validity_s`` refuses (``malformed``)
    commands valid for longer, which also bounds how long nonces are kept;
    ``max_blob_bytes`` bounds the input before it is parsed.
    """

    def __init__(
        self,
        verify_key: ed25519.Ed25519PublicKey,
        vehicle_id: str,
        clock: Callable[[], int] = time.time_ns,
        nonce_store: NonceStore | None = None,
        *,
        max_skew_s: float = 30.0,
        max_validity_s: float = 86_400.0,
        max_blob_bytes: int = 65_536,
    ) -> None:
        self._key = verify_key
        self.vehicle_id = check_name(vehicle_id, what="vehicle id")
        self._clock = clock
        self._nonces = nonce_store if nonce_store is not None else NonceStore(clock=clock)
        self._skew_ns = round(max_skew_s * _NS_PER_S)
        self._max_validity_ns = round(max_validity_s * _NS_PER_S)
        self._max_blob_bytes = max_blob_bytes

    def verify(self, blob: bytes) -> Command:
        """Return the command in ``blob`` or raise :class:`CommandRejected` with the reason.

        Blocking when the nonce store has a file (one append and fsync per accepted command).
        """
        fields, signature, payload = self._parse(blob)
        command_id: str = fields["command_id"]
        try:
            self._key.verify(signature, _canonical(fields))
        except InvalidSignature:
            raise CommandRejected(
                CommandRejectReason.BAD_SIGNATURE, "signature does not verify", command_id=command_id
            ) from None
        command = Command(
            command_id=command_id,
            kind=fields["kind"],
            target=fields["target"],
            issued_ns=fields["issued_ns"],
            expires_ns=fields["expires_ns"],
            nonce=fields["nonce"],
            payload=payload,
        )
        if command.target != self.vehicle_id:
            raise CommandRejected(
                CommandRejectReason.WRONG_TARGET,
                f"addressed to {command.target!r}, this is {self.vehicle_id!r}",
                command_id=command_id,
            )
        now = self._clock()
        if command.issued_ns > now + self._skew_ns:
            raise CommandRejected(
                CommandRejectReason.NOT_YET_VALID,
                f"issued {(command.issued_ns - now) / _NS_PER_S:.3f} s in the future",
                command_id=command_id,
            )
        if now > command.expires_ns + self._skew_ns:
            raise CommandRejected(
                CommandRejectReason.EXPIRED,
                f"expired {(now - command.expires_ns) / _NS_PER_S:.3f} s ago",
                command_id=command_id,
            )
        try:
            fresh = self._nonces.remember(command.nonce, command.expires_ns + self._skew_ns)
        except CommandRejected as exc:
            raise CommandRejected(exc.reason, str(exc), command_id=command_id) from None
        if not fresh:
            raise CommandRejected(
                CommandRejectReason.REPLAYED, f"nonce {command.nonce} was seen before", command_id=command_id
            )
        return command

    def _parse(self, blob: bytes) -> tuple[dict[str, Any], bytes, bytes]:
        """Strictly parse ``blob``: (the signed fields, the signature, the payload)."""

        def bad(problem: str) -> CommandRejected:
            return CommandRejected(CommandRejectReason.MALFORMED, problem)

        if len(blob) > self._max_blob_bytes:
            raise bad(f"{len(blob)} bytes exceed the limit of {self._max_blob_bytes}")
        try:
            data = json.loads(
                blob.decode("utf-8"),
                object_pairs_hook=_reject_duplicate_keys,
                parse_constant=_reject_constant,
            )
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise bad(f"not a JSON command envelope: {exc}") from None
        if not isinstance(data, dict):
            raise bad("the envelope is not a JSON object")
        if set(data) != _KEYS:
            missing = sorted(_KEYS - set(data))
            extra = sorted(set(data) - _KEYS)
            raise bad(f"wrong keys: missing {missing}, unexpected {extra}")
        if type(data["v"]) is not int or data["v"] != COMMAND_FORMAT_VERSION:
            raise bad(f"unsupported version {data['v']!r}")
        for key in ("command_id", "kind"):
            if not isinstance(data[key], str) or not _TEXT_RE.fullmatch(data[key]):
                raise bad(f"{key} must be 1-128 printable ASCII characters without spaces")
        if not isinstance(data["target"], str) or not data["target"]:
            raise bad("target must be a non-empty string")
        for key in ("issued_ns", "expires_ns"):
            if type(data[key]) is not int or not 0 <= data[key] < 2**63:
                raise bad(f"{key} must be an integer in [0, 2**63)")
        if not isinstance(data["nonce"], str) or not _NONCE_RE.fullmatch(data["nonce"]):
            raise bad("nonce must be 32 lowercase hex digits")
        validity_ns = data["expires_ns"] - data["issued_ns"]
        if validity_ns <= 0:
            raise bad("expires_ns is not after issued_ns")
        if validity_ns > self._max_validity_ns:
            raise bad(
                f"valid for {validity_ns // _NS_PER_S} s, "
                f"more than the limit of {self._max_validity_ns // _NS_PER_S} s"
            )
        decoded: dict[str, bytes] = {}
        for key in ("payload", "sig"):
            if not isinstance(data[key], str):
                raise bad(f"{key} must be a base64 string")
            try:
                decoded[key] = base64.b64decode(data[key], validate=True)
            except (binascii.Error, ValueError) as exc:
                raise bad(f"{key} is not valid base64: {exc}") from None
            if base64.b64encode(decoded[key]).decode("ascii") != data[key]:
                raise bad(f"{key} is not canonical base64 (padding or unused bits)")
        if len(decoded["sig"]) != 64:
            raise bad("sig must be 64 bytes")
        del data["sig"]
        return data, decoded["sig"], decoded["payload"]
