"""Commands to vehicles: which Upload streams are open, and which commands wait for a result.

:class:`CommandRouter` is shared by the Upload servicer and ``Fleet.SendCommand``:

* every open Upload stream :meth:`~CommandRouter.attach`\\ es a :class:`Link` (its
  outgoing queue) under its vehicle id; a vehicle is *connected* while it has one;
* :meth:`~CommandRouter.send` registers the command as pending, waits (up to the
  timeout) for a link of the vehicle, puts the ``VehicleCommand`` on the newest link
  and waits (up to the same deadline) for the vehicle's ``CommandResult``, which the
  stream hands to :meth:`~CommandRouter.resolve`;
* a result is matched by (vehicle id of the stream it came on, command id), so a
  vehicle can only answer its own commands; an unknown id is logged and ignored.

Bounds: at most ``max_pending`` commands per vehicle wait at once (waiting for a
stream or for a result); one more raises :class:`CommandsExhausted`
(RESOURCE_EXHAUSTED). A link's queue is therefore bounded by the stream's pipeline
depth (acks) plus ``max_pending`` (commands). A command whose stream ends before
the vehicle answered is not resent: its sender gets TIMEOUT at the deadline.

:class:`CommandPath` is the seam both routers fill: this in-process one (the default; a
command lives only as long as its SendCommand call) and the JetStream one of
:mod:`tcu.ingest.command_bus` (durable: a command waits in JetStream for its vehicle on
any replica, until it expires).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Protocol

from tcu.api.v1 import ingest_pb2 as ingest_pb
from tcu.errors import ClosedResourceError, IngestError

__all__ = [
    "CommandConflict",
    "CommandInvalid",
    "CommandOutcome",
    "CommandPath",
    "CommandRouter",
    "CommandState",
    "CommandUnavailable",
    "CommandsExhausted",
    "Link",
]

log = logging.getLogger(__name__)


class CommandsExhausted(IngestError):
    """Too many commands wait for this vehicle already (the message names the bound)."""


class CommandConflict(IngestError):
    """A command with this id is already pending for this vehicle."""


class CommandInvalid(IngestError):
    """The command cannot be routed as sent (INVALID_ARGUMENT; the message says what is wrong)."""


class CommandUnavailable(IngestError):
    """The command store cannot be reached now (UNAVAILABLE; the cause is in ``__cause__``)."""


class CommandState(enum.Enum):
    """How a command ended (``CommandStatus`` on the wire)."""

    EXECUTED = "executed"
    REJECTED = "rejected"
    NOT_CONNECTED = "not_connected"
    TIMEOUT = "timeout"
    EXPIRED = "expired"
    """Durable commands: expired before any delivery; the vehicle never received it."""
    QUEUED = "queued"
    """Durable commands: not delivered within the call's timeout; it still waits for the vehicle."""
    UNKNOWN = "unknown"
    """Durable commands: delivered, but the vehicle's answer was lost; it ran at most once."""


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    state: CommandState
    reason: str = ""


@dataclass(eq=False, slots=True)
class Link:
    """One open Upload stream of a vehicle: the router hands it commands through ``deliver``.

    ``deliver`` must not block; the Upload servicer puts the response on the stream's
    single outgoing queue (its acks go there too, so both leave in the order queued).
    """

    vehicle_id: str
    deliver: Callable[[ingest_pb.UploadResponse], None]
    opened: int = 0
    """Order of attachment (the newest link has the largest)."""


@dataclass(eq=False, slots=True)
class _Pending:
    future: asyncio.Future[CommandOutcome] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class CommandPath(Protocol):
    """What the Upload servicer and ``Fleet.SendCommand`` need of a command router."""

    def attach(self, link: Link) -> AbstractContextManager[Link]: ...

    def connected(self, vehicle_id: str) -> bool: ...

    def connected_vehicles(self) -> frozenset[str]: ...

    async def send(
        self, command: ingest_pb.VehicleCommand, vehicle_id: str, timeout_s: float
    ) -> CommandOutcome: ...

    def resolve(self, vehicle_id: str, result: ingest_pb.CommandResult) -> bool: ...

    async def start(self) -> None: ...

    def close(self) -> None: ...

    async def aclose(self) -> None: ...


class CommandRouter:
    """Connected vehicles and pending commands (one per ingest server, used on its event loop)."""

    def __init__(self, *, max_pending: int = 16) -> None:
        if max_pending < 1:
            raise IngestError(f"max_pending must be at least 1, got {max_pending}")
        self._max_pending = max_pending
        self._links: dict[str, list[Link]] = {}
        self._arrivals: dict[str, asyncio.Event] = {}
        self._pending: dict[str, dict[str, _Pending]] = {}
        self._opened = 0
        self._closed = False

    # -- streams -------------------------------------------------------------------------------

    @contextmanager
    def attach(self, link: Link) -> Iterator[Link]:
        """Register an open stream for its vehicle until the ``with`` block ends."""
        self._opened += 1
        link.opened = self._opened
        links = self._links.setdefault(link.vehicle_id, [])
        links.append(link)
        arrival = self._arrivals.pop(link.vehicle_id, None)
        if arrival is not None:
            arrival.set()
        try:
            yield link
        finally:
            links.remove(link)
            if not links:
                self._links.pop(link.vehicle_id, None)

    def connected(self, vehicle_id: str) -> bool:
        """True while the vehicle has an open Upload stream."""
        return vehicle_id in self._links

    def connected_vehicles(self) -> frozenset[str]:
        return frozenset(self._links)

    def pending(self, vehicle_id: str) -> int:
        """Commands of the vehicle waiting for a stream or a result."""
        return len(self._pending.get(vehicle_id, ()))

    # -- commands ------------------------------------------------------------------------------

    async def send(
        self, command: ingest_pb.VehicleCommand, vehicle_id: str, timeout_s: float
    ) -> CommandOutcome:
        """Deliver ``command`` to the vehicle's newest stream and wait for its result.

        Raises :class:`CommandsExhausted`, :class:`CommandConflict`, or
        :class:`~tcu.errors.ClosedResourceError` once the router is closed.
        """
        if self._closed:
            raise ClosedResourceError("the ingest is shutting down; no commands are delivered")
        waiting = self._pending.setdefault(vehicle_id, {})
        if command.command_id in waiting:
            raise CommandConflict(
                f"command {command.command_id!r} for vehicle {vehicle_id!r} is already pending"
            )
        if len(waiting) >= self._max_pending:
            raise CommandsExhausted(
                f"vehicle {vehicle_id!r} has {len(waiting)} commands pending, the most allowed"
                f" (max_pending_commands={self._max_pending}); retry when they are answered"
            )
        entry = _Pending()
        waiting[command.command_id] = entry
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            link = await self._wait_for_link(vehicle_id, deadline)
            if link is None:
                return CommandOutcome(
                    CommandState.NOT_CONNECTED,
                    f"vehicle {vehicle_id!r} had no open Upload stream within {timeout_s:g} s",
                )
            link.deliver(ingest_pb.UploadResponse(command=command))
            log.info(
                "command %s (%s) delivered to vehicle %s (stream #%d)",
                command.command_id,
                command.kind,
                vehicle_id,
                link.opened,
            )
            try:
                return await asyncio.wait_for(asyncio.shield(entry.future), max(0.0, deadline - loop.time()))
            except TimeoutError:
                return CommandOutcome(
                    CommandState.TIMEOUT,
                    f"vehicle {vehicle_id!r} did not answer command {command.command_id!r}"
                    f" within {timeout_s:g} s",
                )
        finally:
            waiting.pop(command.command_id, None)
            if not waiting and self._pending.get(vehicle_id) is waiting:
                del self._pending[vehicle_id]

    async def _wait_for_link(self, vehicle_id: str, deadline: float) -> Link | None:
        loop = asyncio.get_running_loop()
        while True:
            links = self._links.get(vehicle_id)
            if links:
                return links[-1]
            if self._closed:
                raise ClosedResourceError("the ingest is shutting down; no commands are delivered")
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            arrival = self._arrivals.setdefault(vehicle_id, asyncio.Event())
            try:
                await asyncio.wait_for(arrival.wait(), remaining)
            except TimeoutError:
                # Every waiter has a pending entry: when this is the vehicle's only one, nobody
                # else waits on the event, so drop it (the map stays bounded by waiting vehicles).
                if len(self._pending.get(vehicle_id, ())) <= 1:
                    self._arrivals.pop(vehicle_id, None)
                return None

    def resolve(self, vehicle_id: str, result: ingest_pb.CommandResult) -> bool:
        """Hand a vehicle's CommandResult to its waiting sender; False (logged) when none waits."""
        entry = self._pending.get(vehicle_id, {}).get(result.command_id)
        if entry is None or entry.future.done():
            log.warning(
                "vehicle %s answered command %r, which is not pending (late, unknown or answered); ignored",
                vehicle_id,
                result.command_id,
            )
            return False
        state = CommandState.EXECUTED if result.executed else CommandState.REJECTED
        entry.future.set_result(CommandOutcome(state, result.reason))
        return True

    async def start(self) -> None:
        """Nothing to open: the in-process router holds everything in memory."""

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        """Fail waiting senders with ClosedResourceError and deliver nothing more. Idempotent."""
        self._closed = True
        for arrival in self._arrivals.values():
            arrival.set()
        self._arrivals.clear()
        for waiting in self._pending.values():
            for entry in waiting.values():
                if not entry.future.done():
                    entry.future.set_exception(ClosedResourceError("the ingest is shutting down"))
