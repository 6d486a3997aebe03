"""Backend-signed commands arriving on the Upload stream: verify, then act, then answer.

Verification (``tcu.pki.commands``): signature with the backend's key, expiry,
target vehicle, and a nonce never seen before (kept on disk in ``[commands]
nonce_store``, by default ``<spool>/nonces`` or ``<state directory>/nonces``, so a
restart does not reopen replay; ``nonce_store = "memory"`` forgets them and warns). Only
then does the command's ``kind`` decide what happens; every command gets a
``CommandResult`` with the reason when it is refused (``<code>: <detail>``; the code is
the verifier's reason, ``envelope_mismatch``, ``unknown_kind``, ``invalid_payload``, or
one an action raises with :class:`CommandRefused`). An action may also return a note
that goes into the reason of an executed command.

Kinds:

* ``campaigns.replace`` (payload: a campaign TOML file; the whole set is checked first
  and the running set is kept when it is bad).
* ``esim.enable`` (payload: the ICCID of the profile to enable as ASCII, 18-20 digits,
  optionally ending in ``F``, at most 20 characters; optionally followed by a newline
  and the backend's reason, UTF-8, at most 200 printable characters). Registered only
  with ``[connectivity]``; without it the answer is ``unavailable: esim.enable: no
  connectivity configured``. The order is carried out by the connectivity source
  between two polls and supervised like a policy switch; the result is sent once the
  outcome is known: executed (enabled and registered), ``rolled_back: ...`` (no
  registration within the policy's ``attach_deadline_s``), ``failed: ...`` (the card
  refused, with its result code) or ``busy: ...`` (another order is still pending).
* ``esim.download`` (payload: an activation code ``LPA:1$<SM-DP+ address>$<matching id>`` as
  ASCII, at most 255 characters, optionally followed by a newline and a reason as above).
  Registered with ``[connectivity]``; without ``smdp_ca`` there the answer is ``unavailable``.
  The connectivity source downloads the profile from the SM-DP+ (ES9+, then ES10b to the card,
  every step audited), then enables it exactly as an ``esim.enable`` order; the answers are
  those of ``esim.enable``, and ``failed: download failed at <step>: ...`` when the download
  itself fails (the card is left as it was).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tcu.api.v1 import ingest_pb2 as ingest_pb
from tcu.config import CommandSettings
from tcu.errors import ConfigError, InputError, SecurityError, TcuError
from tcu.pki import CommandRejected, CommandVerifier, NonceStore, load_verify_key

__all__ = [
    "CommandHandler",
    "CommandRefused",
    "DownloadOrder",
    "EsimOrder",
    "parse_download_order",
    "parse_esim_order",
]

log = logging.getLogger(__name__)

Action = Callable[[bytes, str], Awaitable[str | None]]
"""``action(payload, command_id)``: carries out a verified command; returns an optional note
for the result, raises :class:`~tcu.errors.InputError` for a bad payload and
:class:`CommandRefused` when it does not (or could not) act."""


class CommandRefused(TcuError):
    """A verified command was not carried out; the result's reason is ``<code>: <detail>``."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def _nonce_store(where: Path | Literal["memory"], clock: Callable[[], int]) -> NonceStore:
    """The store of accepted nonces: a file (its directory created), or memory with a warning."""
    if where == "memory":
        log.warning(
            'commands: nonce_store = "memory": nonces of accepted commands are forgotten when the agent'
            " restarts, so a captured command can be replayed after a restart"
        )
        return NonceStore(clock=clock)
    try:
        where.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the directory of the nonce store {where}: {exc.strerror}",
            key="commands.nonce_store",
        ) from exc
    store = NonceStore(where, clock=clock)
    log.info("commands: nonces of accepted commands are kept in %s (%d unexpired)", where, len(store))
    return store


class CommandHandler:
    def __init__(
        self,
        settings: CommandSettings,
        vehicle_id: str,
        send: Callable[[ingest_pb.UploadRequest], None],
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        try:
            key = load_verify_key(settings.verify_key)
        except SecurityError as exc:
            raise SecurityError(f"commands.verify_key: {exc}") from exc
        self._verifier = CommandVerifier(
            key,
            vehicle_id,
            clock,
            _nonce_store(settings.nonce_store, clock),
            max_skew_s=settings.max_skew_s,
        )
        self._send = send
        self._actions: dict[str, Action] = {}
        self._unavailable: dict[str, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.executed = 0
        self.rejected = 0

    def register(self, kind: str, action: Action) -> None:
        self._actions[kind] = action

    def unavailable(self, kind: str, why: str) -> None:
        """Answer verified commands of ``kind`` with ``unavailable: <kind>: <why>``."""
        self._unavailable[kind] = why

    def on_command(self, command: ingest_pb.VehicleCommand) -> None:
        """Called by the uplink for each command; handling runs as a task."""
        task = asyncio.create_task(self._handle(command), name=f"tcu.agent.command[{command.command_id}]")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, command: ingest_pb.VehicleCommand) -> None:
        reason = ""
        note: str | None = None
        try:
            # Nonce bookkeeping may fsync: off the event loop.
            verified = await asyncio.to_thread(self._verifier.verify, command.payload)
            action = self._actions.get(verified.kind)
            if verified.command_id != command.command_id or verified.kind != command.kind:
                # The unsigned envelope fields must say what the signed ones say.
                reason = "envelope_mismatch"
                log.warning(
                    "security: command %s: envelope does not match its signed content", command.command_id
                )
            elif verified.kind in self._unavailable:
                reason = f"unavailable: {verified.kind}: {self._unavailable[verified.kind]}"
            elif action is None:
                reason = f"unknown_kind: {verified.kind}"
            else:
                note = await action(verified.payload, verified.command_id)
        except CommandRejected as exc:
            reason = exc.reason.value
            log.warning("security: command %s (%s) rejected: %s", command.command_id, command.kind, exc)
        except InputError as exc:
            reason = f"invalid_payload: {exc}"
            log.warning("command %s (%s) refused: %s", command.command_id, command.kind, exc)
        except CommandRefused as exc:
            reason = str(exc)
            log.warning("command %s (%s) not carried out: %s", command.command_id, command.kind, exc)
        executed = not reason
        if executed:
            self.executed += 1
            log.info(
                "command %s (%s) executed%s", command.command_id, command.kind, f": {note}" if note else ""
            )
        else:
            self.rejected += 1
        self._send(
            ingest_pb.UploadRequest(
                command_result=ingest_pb.CommandResult(
                    command_id=command.command_id, executed=executed, reason=reason or note or ""
                )
            )
        )


# --- the esim.enable order payload ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class EsimOrder:
    """The checked payload of an ``esim.enable`` command."""

    iccid: str
    """Digits only (a trailing ``F`` filler is removed)."""
    reason: str = ""


_ICCID_RE = re.compile(r"[0-9]{18,20}F?")
_MAX_ORDER_REASON = 200


def parse_esim_order(payload: bytes) -> EsimOrder:
    """``ICCID`` or ``ICCID\\nreason``; :class:`InputError` says what is wrong.

    The ICCID is 18-20 ASCII digits, optionally ending in ``F`` (BCD filler), at most 20
    characters; the reason is UTF-8, at most 200 characters, no control characters.
    """
    head, newline, tail = payload.partition(b"\n")
    try:
        iccid = head.decode("ascii")
    except UnicodeDecodeError:
        raise InputError(f"ICCID {head[:40]!r} is not ASCII") from None
    if not _ICCID_RE.fullmatch(iccid) or len(iccid) > 20:
        raise InputError(f"ICCID {iccid[:40]!r} must be 18-20 digits, optionally ending in F (at most 20)")
    try:
        reason = tail.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"reason is not UTF-8: {exc}") from exc
    if newline and not reason:
        raise InputError("empty reason after the ICCID")
    if len(reason) > _MAX_ORDER_REASON:
        raise InputError(f"reason has {len(reason)} characters, more than {_MAX_ORDER_REASON}")
    if any(not ch.isprintable() for ch in reason):
        raise InputError("reason contains control characters")
    return EsimOrder(iccid.removesuffix("F"), reason)


# --- the esim.download order payload -------------------------------------------------


@dataclass(frozen=True, slots=True)
class DownloadOrder:
    """The checked payload of an ``esim.download`` command."""

    activation_code: str
    reason: str = ""


def parse_download_order(payload: bytes) -> DownloadOrder:
    """``ACTIVATION_CODE`` or ``ACTIVATION_CODE\\nreason``; :class:`InputError` says what is wrong.

    The activation code is ASCII ``LPA:1$<SM-DP+ address>$<matching id>`` (SGP.22 4.1), at most
    255 characters; the reason as for ``esim.enable``.
    """
    from tcu.esim.es9 import parse_activation_code

    head, newline, tail = payload.partition(b"\n")
    try:
        code = head.decode("ascii")
    except UnicodeDecodeError:
        raise InputError(f"activation code {head[:40]!r} is not ASCII") from None
    if len(code) > 255:
        raise InputError(f"activation code has {len(code)} characters, more than 255")
    parse_activation_code(code)
    reason = parse_esim_order(b"0" * 18 + newline + tail).reason if newline else ""
    return DownloadOrder(code, reason)
