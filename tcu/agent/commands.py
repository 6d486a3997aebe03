"""Backend-signed commands arriving on the Upload stream: verify, then act, then answer.

Verification (``tcu.pki.commands``): signature with the backend's key, expiry,
target vehicle, and a nonce never seen before (kept on disk when
``[commands] nonce_store`` is set, so a restart does not reopen replay). Only
then does the command's ``kind`` decide what happens; every command gets a
``CommandResult`` with the reason when it is refused.

Kinds: ``campaigns.replace`` (payload: a campaign TOML file; the whole set is
checked first and the running set is kept when it is bad).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from tcu.api.v1 import ingest_pb2 as ingest_pb
from tcu.config import CommandSettings
from tcu.errors import InputError, SecurityError
from tcu.pki import CommandRejected, CommandVerifier, NonceStore, load_verify_key

__all__ = ["CommandHandler"]

log = logging.getLogger(__name__)

Action = Callable[[bytes, str], Awaitable[None]]


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
            NonceStore(settings.nonce_store, clock=clock),
            max_skew_s=settings.max_skew_s,
        )
        self._send = send
        self._actions: dict[str, Action] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.executed = 0
        self.rejected = 0

    def register(self, kind: str, action: Action) -> None:
        self._actions[kind] = action

    def on_command(self, command: ingest_pb.VehicleCommand) -> None:
        """Called by the uplink for each command; handling runs as a task."""
        task = asyncio.create_task(self._handle(command), name=f"tcu.agent.command[{command.command_id}]")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, command: ingest_pb.VehicleCommand) -> None:
        reason = ""
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
            elif action is None:
                reason = f"unknown_kind: {verified.kind}"
            else:
                await action(verified.payload, verified.command_id)
        except CommandRejected as exc:
            reason = exc.reason.value
            log.warning("security: command %s (%s) rejected: %s", command.command_id, command.kind, exc)
        except InputError as exc:
            reason = f"invalid_payload: {exc}"
            log.warning("command %s (%s) refused: %s", command.command_id, command.kind, exc)
        if reason:
            self.rejected += 1
        else:
            self.executed += 1
            log.info("command %s (%s) executed", command.command_id, command.kind)
        self._send(
            ingest_pb.UploadRequest(
                command_result=ingest_pb.CommandResult(
                    command_id=command.command_id, executed=not reason, reason=reason
                )
            )
        )
