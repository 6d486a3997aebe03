"""Durable commands over NATS JetStream: ``Fleet.SendCommand`` on any ingest replica reaches the
vehicle through whichever replica holds its Upload stream, also when the vehicle connects later.

Two streams (created by the first replica that starts; the same configuration on every one),
on subjects outside the JetStream sink's ``tcu.v1.>`` (two streams may not share a subject):

* ``TCU_COMMANDS``, subjects ``tcu.commands.v1.<VIN>``, work-queue retention: the commands
  waiting for their vehicle. A message is the ``VehicleCommand`` (the backend's signed envelope
  unchanged: replicas never re-sign, the vehicle verifies) with the headers ``Tcu-Command-Id``
  and ``Tcu-Expires-Ns`` (the envelope's ``expires_ns``, read, not verified) and
  ``Nats-Msg-Id`` = ``<VIN>/<command id>``, so a command sent again, to any replica, is queued
  once (the duplicate window is as long as a command can be valid).
* ``TCU_COMMAND_RESULTS``, subjects ``tcu.command-results.v1.<VIN>.<command id, base64url>``:
  per command a small register, at most two records, each published with
  ``Nats-Expected-Last-Subject-Sequence`` so that the first writer wins:

  - ``delivered`` (header ``Tcu-Record``): written by the replica that hands the command to
    the vehicle, *before* it does, only when the subject is empty;
  - the final outcome, a ``SendCommandResponse``: ``EXPIRED`` (only on an empty register, so
    never after a delivery), or ``EXECUTED`` / ``REJECTED`` / ``UNKNOWN`` (only after
    ``delivered``).

  So a command has exactly one outcome, whoever observes it first, and an expiry can never be
  reported for a command a vehicle may have run.

The replica that holds a vehicle's stream (:meth:`JetStreamCommandRouter.attach`) pulls that
vehicle's subject through a durable consumer ``cmd-<hex VIN>`` (created when the vehicle
connects, one message at a time, removed by JetStream after ``consumer_inactive_s`` without a
replica pulling), delivers on the vehicle's newest local stream and acks the message only
once the outcome is recorded. When the vehicle's last stream on the replica ends, its pull
stops and an unfinished delivery is nak'ed (redelivered at once to the next replica that
pulls); a replica that dies instead lets ``ack_wait_s`` run out. A command delivered twice in
this way is refused by the vehicle's nonce store (``replayed``): recorded as ``UNKNOWN`` ("the
vehicle accepted it on an earlier delivery whose answer was lost"), executed once.

The sender (:meth:`JetStreamCommandRouter.send`) subscribes to the command's register, queues
the command, and waits for the final record up to its call's timeout; at ``expires_ns``
without a delivery it records ``EXPIRED`` itself. When the call's timeout ends first the answer
is ``QUEUED`` (not delivered yet) or ``TIMEOUT`` (delivered, no answer yet): the command stays
in JetStream, and calling ``SendCommand`` again with the same vehicle and command id, on any
replica, returns the recorded outcome (kept ``results_max_age_s``) or waits again, without
queuing a second copy.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import nats
import nats.errors
import nats.js.errors
from google.protobuf.message import DecodeError
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from tcu.api.v1 import fleet_pb2 as fleet_pb
from tcu.api.v1 import ingest_pb2 as ingest_pb
from tcu.errors import ClosedResourceError, IngestError
from tcu.ingest.commands import (
    CommandInvalid,
    CommandOutcome,
    CommandRouter,
    CommandsExhausted,
    CommandState,
    CommandUnavailable,
    Link,
)
from tcu.ingest.config import JetStreamConfig
from tcu.ingest.jetstream import connect

__all__ = [
    "COMMANDS_STREAM",
    "RESULTS_STREAM",
    "CommandBusConfig",
    "CommandBusStats",
    "JetStreamCommandRouter",
    "command_subject",
    "consumer_name",
    "envelope_expires_ns",
    "result_subject",
]

log = logging.getLogger(__name__)

COMMANDS_STREAM = "TCU_COMMANDS"
RESULTS_STREAM = "TCU_COMMAND_RESULTS"
_COMMANDS_PREFIX = "tcu.commands.v1"
_RESULTS_PREFIX = "tcu.command-results.v1"
_RECORD = "Tcu-Record"
_DELIVERED = "delivered"
_FINAL = "final"
_EXPECT_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
_WRONG_LAST_SEQUENCE = 10071
_NS_PER_S = 1_000_000_000
_MAX_VALIDITY_S = 86_400.0
"""The longest a signed command can be valid (docs/commands.md): the queue's age and dedup window."""

_STATE_OF = {
    fleet_pb.COMMAND_STATUS_EXECUTED: CommandState.EXECUTED,
    fleet_pb.COMMAND_STATUS_REJECTED: CommandState.REJECTED,
    fleet_pb.COMMAND_STATUS_EXPIRED: CommandState.EXPIRED,
    fleet_pb.COMMAND_STATUS_UNKNOWN: CommandState.UNKNOWN,
}
_STATUS_OF = {state: status for status, state in _STATE_OF.items()}


@dataclass(frozen=True, kw_only=True, slots=True)
class CommandBusConfig:
    """Where and how durable commands are kept (``tcu ingest --commands jetstream``)."""

    nats: JetStreamConfig
    """The NATS servers, credentials and TLS (those of the JetStream sink, ``--nats``); its
    ``replicas`` are the command streams' too (3 on a 3-node cluster, 1 on a single server)."""
    name: str = "tcu-ingest commands"
    """This replica's connection name (the NATS monitor and the log show it)."""
    ack_wait_s: float = 30.0
    """How long a delivery may go unacknowledged before JetStream hands the command to the next
    replica that pulls (the delay after a replica dies; a live replica extends it while it waits)."""
    answer_timeout_s: float = 600.0
    """After the command's expiry (plus the vehicle's 30 s skew), how long a delivering replica
    waits for the vehicle's answer before it records ``UNKNOWN``."""
    max_skew_s: float = 30.0
    """The vehicle's clock tolerance (``[commands] max_skew_s``): it may accept until expiry + this."""
    results_max_age_s: float = 7 * 86_400.0
    """How long outcomes stay retrievable (by sending the same command again)."""
    consumer_inactive_s: float = _MAX_VALIDITY_S + 3600.0
    """A vehicle's consumer is removed after this long without a replica pulling it."""
    max_queued: int = 100_000
    """Commands waiting in JetStream for all vehicles; one more is refused (RESOURCE_EXHAUSTED)."""
    request_timeout_s: float = 5.0
    """One JetStream request (publish, read of a register)."""

    def __post_init__(self) -> None:
        if self.max_queued < 1:
            raise IngestError("command bus: max_queued must be at least 1")
        for key in (
            "ack_wait_s",
            "answer_timeout_s",
            "results_max_age_s",
            "consumer_inactive_s",
            "request_timeout_s",
        ):
            if getattr(self, key) <= 0:
                raise IngestError(f"command bus: {key} must be positive, got {getattr(self, key)}")


@dataclass(slots=True)
class CommandBusStats:
    """Counters of one replica's command bus (also in the log)."""

    queued: int = 0
    """Commands this replica published (a duplicate of a queued one is not counted)."""
    duplicates: int = 0
    """SendCommand calls for a command already queued or finished (answered from JetStream)."""
    delivered: int = 0
    redelivered: int = 0
    """Deliveries of a command that had been delivered before (a replica died or a stream ended)."""
    outcomes: dict[str, int] = field(default_factory=dict)
    """Final records this replica wrote, by state name."""
    lost_races: int = 0
    """Records this replica tried to write after another writer (the other one counts)."""
    bus_errors: int = 0
    """JetStream requests that failed (logged each)."""
    malformed: int = 0
    """Messages on a vehicle's command subject that were not a queued command (removed, logged)."""


def command_subject(vehicle_id: str) -> str:
    return f"{_COMMANDS_PREFIX}.{vehicle_id}"


def result_subject(vehicle_id: str, command_id: str) -> str:
    """The command's register; the id is base64url (a command id may hold ``.``, ``*`` or ``>``)."""
    token = base64.urlsafe_b64encode(command_id.encode("ascii")).decode("ascii").rstrip("=")
    return f"{_RESULTS_PREFIX}.{vehicle_id}.{token}"


def consumer_name(vehicle_id: str) -> str:
    """The vehicle's durable consumer (a VIN may hold ``.``, which a consumer name may not)."""
    return f"cmd-{vehicle_id.encode('ascii').hex()}"


def envelope_expires_ns(envelope: bytes) -> int:
    """The ``expires_ns`` of a signed envelope, read without verifying (the vehicle verifies).

    Raises :class:`~tcu.ingest.commands.CommandInvalid` when it cannot be read: such an
    envelope would be refused by the vehicle as ``malformed``, and a durable command needs it.
    """
    try:
        fields = json.loads(envelope)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CommandInvalid(f"signed_command is not a JSON envelope: {exc}") from exc
    expires = fields.get("expires_ns") if isinstance(fields, dict) else None
    if type(expires) is not int or not 0 <= expires < 2**63:
        raise CommandInvalid("signed_command has no integer expires_ns (docs/commands.md)")
    return expires


@dataclass(frozen=True, slots=True)
class _Register:
    """What the command's register holds: nothing, ``delivered`` (at ``seq``), or a final outcome."""

    seq: int = 0
    delivered: bool = False
    final: CommandOutcome | None = None


def _outcome_of(data: bytes) -> CommandOutcome:
    response = fleet_pb.SendCommandResponse.FromString(data)
    return CommandOutcome(_STATE_OF.get(response.status, CommandState.UNKNOWN), response.reason)


class JetStreamCommandRouter:
    """The durable :class:`~tcu.ingest.commands.CommandPath` (see the module docstring).

    Local streams and the wait for a vehicle's answer are those of an in-process
    :class:`~tcu.ingest.commands.CommandRouter`; JetStream carries commands between replicas
    and keeps them and their outcomes.
    """

    def __init__(
        self,
        config: CommandBusConfig,
        *,
        max_pending: int = 16,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._config = config
        self._clock = clock
        self._max_pending = max_pending
        self._local = CommandRouter(max_pending=max_pending)
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._pumps: dict[str, asyncio.Task[None]] = {}
        self._senders: dict[str, int] = {}
        self._closed = False
        self.stats = CommandBusStats()

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to NATS and make sure both streams exist."""
        config = self._config
        self._nc = await connect(config.nats, name=config.name)  # IngestError when none answers
        self._js = self._nc.jetstream(timeout=config.request_timeout_s)
        age_s = _MAX_VALIDITY_S + 3600.0  # the same on every replica, whatever its settings
        await self._ensure_stream(
            StreamConfig(
                name=COMMANDS_STREAM,
                subjects=[f"{_COMMANDS_PREFIX}.>"],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
                num_replicas=config.nats.replicas,
                max_age=age_s,
                duplicate_window=age_s,
                max_msgs=config.max_queued,
                discard=DiscardPolicy.NEW,
            )
        )
        await self._ensure_stream(
            StreamConfig(
                name=RESULTS_STREAM,
                subjects=[f"{_RESULTS_PREFIX}.>"],
                retention=RetentionPolicy.LIMITS,
                storage=StorageType.FILE,
                num_replicas=config.nats.replicas,
                max_age=config.results_max_age_s,
            )
        )
        log.info(
            "command bus: durable commands on JetStream %s (streams %s, %s; replicas %d)",
            ",".join(config.nats.servers),
            COMMANDS_STREAM,
            RESULTS_STREAM,
            config.nats.replicas,
        )

    async def _ensure_stream(self, stream: StreamConfig) -> None:
        js = self._jetstream()
        for attempt in range(20):  # a cluster elects its meta leader for a moment after it starts
            try:
                await js.add_stream(stream)
                return
            except nats.js.errors.BadRequestError as exc:
                if exc.err_code == 10058:  # the name is in use with another configuration: keep it
                    log.warning("command bus: stream %s exists with another configuration; kept", stream.name)
                    return
                raise IngestError(f"command bus: cannot create stream {stream.name}: {exc}") from exc
            except (nats.errors.Error, TimeoutError) as exc:
                if attempt == 19:
                    raise IngestError(f"command bus: cannot create stream {stream.name}: {exc}") from exc
                await asyncio.sleep(0.5)

    def close(self) -> None:
        """Fail waiting senders, stop pulling (JetStream keeps every unfinished command). Idempotent."""
        self._closed = True
        self._local.close()
        for pump in self._pumps.values():
            pump.cancel()

    async def aclose(self) -> None:
        self.close()
        pumps = list(self._pumps.values())
        await asyncio.gather(*pumps, return_exceptions=True)
        if self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await self._nc.drain()
        self._nc = None

    def _jetstream(self) -> JetStreamContext:
        if self._js is None:
            raise ClosedResourceError("the command bus is not started")
        return self._js

    # -- streams (CommandPath) -----------------------------------------------------------------

    @contextlib.contextmanager
    def attach(self, link: Link) -> Iterator[Link]:
        """Register a local stream; while the vehicle has one here, this replica pulls its commands."""
        vehicle_id = link.vehicle_id
        with self._local.attach(link):
            if vehicle_id not in self._pumps and not self._closed:
                pump = asyncio.create_task(
                    self._pump(vehicle_id), name=f"tcu.ingest.commands.pull[{vehicle_id}]"
                )
                pump.add_done_callback(self._pump_ended)
                self._pumps[vehicle_id] = pump
            try:
                yield link
            finally:
                if not self._local.connected(vehicle_id):
                    ended = self._pumps.pop(vehicle_id, None)
                    if ended is not None:
                        ended.cancel()

    def _pump_ended(self, pump: asyncio.Task[None]) -> None:
        if not pump.cancelled() and pump.exception() is not None:  # a bug: loud, never silent
            self.stats.bus_errors += 1
            log.error(
                "command bus: %s ended: %r", pump.get_name(), pump.exception(), exc_info=pump.exception()
            )

    def connected(self, vehicle_id: str) -> bool:
        """True while the vehicle has an Upload stream on *this* replica."""
        return self._local.connected(vehicle_id)

    def connected_vehicles(self) -> frozenset[str]:
        return self._local.connected_vehicles()

    def resolve(self, vehicle_id: str, result: ingest_pb.CommandResult) -> bool:
        return self._local.resolve(vehicle_id, result)

    # -- the register --------------------------------------------------------------------------

    async def _register(self, vehicle_id: str, command_id: str) -> _Register:
        js = self._jetstream()
        try:
            last = await js.get_last_msg(RESULTS_STREAM, result_subject(vehicle_id, command_id))
        except nats.js.errors.NotFoundError:
            return _Register()
        except (nats.errors.Error, TimeoutError) as exc:
            self.stats.bus_errors += 1
            raise CommandUnavailable(
                f"command bus: cannot read the outcome of {command_id!r}: {exc}"
            ) from exc
        headers = last.headers or {}
        if headers.get(_RECORD) == _DELIVERED:
            return _Register(seq=last.seq or 0, delivered=True)
        return _Register(seq=last.seq or 0, delivered=True, final=_outcome_of(last.data or b""))

    async def _write(
        self, vehicle_id: str, command_id: str, after_seq: int, outcome: CommandOutcome | None
    ) -> int | None:
        """Append ``delivered`` (outcome None) or the final outcome if the register's last record is
        still ``after_seq`` (0: empty). Returns the new record's sequence, or None when another
        writer came first."""
        js = self._jetstream()
        headers = {_EXPECT_SUBJECT_SEQ: str(after_seq), _RECORD: _DELIVERED if outcome is None else _FINAL}
        data = b""
        if outcome is not None:
            data = fleet_pb.SendCommandResponse(
                command_id=command_id, status=_STATUS_OF[outcome.state], reason=outcome.reason
            ).SerializeToString()
        try:
            ack = await js.publish(result_subject(vehicle_id, command_id), data, headers=headers)
        except nats.js.errors.APIError as exc:
            if exc.err_code == _WRONG_LAST_SEQUENCE:
                self.stats.lost_races += 1
                return None
            self.stats.bus_errors += 1
            raise CommandUnavailable(f"command bus: cannot record {command_id!r}: {exc}") from exc
        except (nats.errors.Error, TimeoutError) as exc:
            self.stats.bus_errors += 1
            raise CommandUnavailable(f"command bus: cannot record {command_id!r}: {exc}") from exc
        if outcome is not None:
            name = outcome.state.name
            self.stats.outcomes[name] = self.stats.outcomes.get(name, 0) + 1
            log.info(
                "command %s for vehicle %s: %s recorded%s",
                command_id,
                vehicle_id,
                name,
                f" ({outcome.reason})" if outcome.reason else "",
            )
        return int(ack.seq)

    async def _expire(self, vehicle_id: str, command_id: str, expires_ns: int) -> CommandOutcome | None:
        """Record EXPIRED on an empty register; the outcome that holds, or None when it was delivered."""
        outcome = CommandOutcome(
            CommandState.EXPIRED,
            f"expires_ns {expires_ns} passed before vehicle {vehicle_id!r} received it; never delivered",
        )
        if await self._write(vehicle_id, command_id, 0, outcome) is not None:
            return outcome
        return (await self._register(vehicle_id, command_id)).final

    # -- sending (any replica) -----------------------------------------------------------------

    async def send(
        self, command: ingest_pb.VehicleCommand, vehicle_id: str, timeout_s: float
    ) -> CommandOutcome:
        """Queue ``command`` in JetStream (once) and wait up to ``timeout_s`` for its outcome."""
        if self._closed:
            raise ClosedResourceError("the ingest is shutting down; no commands are sent")
        expires_ns = envelope_expires_ns(command.payload)
        waiting = self._senders.get(vehicle_id, 0)
        if waiting >= self._max_pending:
            raise CommandsExhausted(
                f"vehicle {vehicle_id!r} has {waiting} SendCommand calls waiting on this replica, the most"
                f" allowed (max_pending_commands={self._max_pending}); retry when they are answered"
            )
        self._senders[vehicle_id] = waiting + 1
        try:
            return await self._send(command, vehicle_id, timeout_s, expires_ns)
        finally:
            left = self._senders[vehicle_id] - 1
            if left:
                self._senders[vehicle_id] = left
            else:
                del self._senders[vehicle_id]

    async def _send(
        self, command: ingest_pb.VehicleCommand, vehicle_id: str, timeout_s: float, expires_ns: int
    ) -> CommandOutcome:
        assert self._nc is not None
        command_id = command.command_id
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            sub = await self._nc.subscribe(result_subject(vehicle_id, command_id))
        except nats.errors.Error as exc:
            raise CommandUnavailable(f"command bus: {exc}") from exc
        queued = False
        try:
            while True:
                try:
                    register = await self._register(vehicle_id, command_id)
                    if register.final is not None:
                        if not queued:
                            self.stats.duplicates += 1
                        return register.final
                    if not register.delivered:
                        if self._clock() >= expires_ns:
                            outcome = await self._expire(vehicle_id, command_id, expires_ns)
                            if outcome is not None:
                                return outcome
                        elif not queued:
                            await self._queue(command, vehicle_id, expires_ns)
                            queued = True
                    return await self._await_outcome(sub, vehicle_id, command_id, expires_ns, deadline)
                except CommandUnavailable as exc:
                    # A cluster electing a stream leader answers nothing for a few seconds: the
                    # call goes on until its own deadline (queuing again is deduplicated).
                    if self._closed or loop.time() + 0.5 >= deadline:
                        raise
                    log.warning("%s; retrying until the call's deadline", exc)
                    await asyncio.sleep(0.5)
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def _queue(self, command: ingest_pb.VehicleCommand, vehicle_id: str, expires_ns: int) -> None:
        js = self._jetstream()
        headers = {
            "Nats-Msg-Id": f"{vehicle_id}/{command.command_id}",
            "Tcu-Command-Id": command.command_id,
            "Tcu-Expires-Ns": str(expires_ns),
        }
        try:
            ack = await js.publish(command_subject(vehicle_id), command.SerializeToString(), headers=headers)
        except nats.js.errors.APIError as exc:
            self.stats.bus_errors += 1
            if "maximum messages" in (exc.description or ""):
                raise CommandsExhausted(
                    f"command bus: {self._config.max_queued} commands wait in JetStream already"
                    " (max_queued); retry later"
                ) from exc
            raise CommandUnavailable(
                f"command bus: cannot queue command {command.command_id!r}: {exc}"
            ) from exc
        except (nats.errors.Error, TimeoutError) as exc:
            self.stats.bus_errors += 1
            raise CommandUnavailable(
                f"command bus: cannot queue command {command.command_id!r}: {exc}"
            ) from exc
        if ack.duplicate:
            self.stats.duplicates += 1
            log.info(
                "command %s for vehicle %s is queued already (sent again)", command.command_id, vehicle_id
            )
        else:
            self.stats.queued += 1
            log.info(
                "command %s (%s) for vehicle %s queued in JetStream (seq %d) until %d",
                command.command_id,
                command.kind,
                vehicle_id,
                ack.seq,
                expires_ns,
            )

    async def _await_outcome(
        self, sub: Any, vehicle_id: str, command_id: str, expires_ns: int, deadline: float
    ) -> CommandOutcome:
        loop = asyncio.get_running_loop()
        delivered = False
        while True:
            if self._closed:  # the command stays queued; sending it again gets its outcome
                raise ClosedResourceError("the ingest is shutting down")
            register = await self._register(vehicle_id, command_id)
            if register.final is not None:
                return register.final
            delivered = register.delivered
            now_ns = self._clock()
            if not delivered and now_ns >= expires_ns:
                outcome = await self._expire(vehicle_id, command_id, expires_ns)
                if outcome is not None:
                    return outcome
                continue
            lost_after_ns = expires_ns + int(
                (self._config.max_skew_s + self._config.answer_timeout_s) * _NS_PER_S
            )
            if delivered and now_ns >= lost_after_ns:
                outcome = CommandOutcome(
                    CommandState.UNKNOWN,
                    "delivered, but no answer reached JetStream before the vehicle's last chance to run it"
                    " had passed; it ran at most once",
                )
                if await self._write(vehicle_id, command_id, register.seq, outcome) is not None:
                    return outcome
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            wake_s = (lost_after_ns if delivered else expires_ns) - now_ns
            with contextlib.suppress(nats.errors.TimeoutError):
                await sub.next_msg(timeout=max(0.001, min(remaining, wake_s / _NS_PER_S, 1.0)))
        if delivered:
            return CommandOutcome(
                CommandState.TIMEOUT,
                f"delivered to vehicle {vehicle_id!r}, no answer yet; its outcome will be kept:"
                " send the same command again to get it",
            )
        return CommandOutcome(
            CommandState.QUEUED,
            f"vehicle {vehicle_id!r} has not taken it yet; it waits in JetStream until expires_ns"
            f" {expires_ns}: send the same command again to get its outcome",
        )

    # -- delivering (the replica that holds the vehicle's stream) ------------------------------

    async def _pump(self, vehicle_id: str) -> None:
        """Pull the vehicle's commands one at a time while it has a stream here."""
        config = self._config
        backoff_s = 0.2
        while not self._closed:
            try:
                sub = await self._pull_subscription(vehicle_id)
            except (nats.errors.Error, TimeoutError, CommandUnavailable) as exc:
                self.stats.bus_errors += 1
                log.warning(
                    "command bus: cannot pull the commands of %s (retry in %.1f s): %s",
                    vehicle_id,
                    backoff_s,
                    exc,
                )
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 5.0)
                continue
            backoff_s = 0.2
            try:
                while True:
                    try:
                        msgs = await sub.fetch(1, timeout=max(1.0, config.ack_wait_s / 2))
                    except nats.errors.TimeoutError:
                        continue
                    for msg in msgs:
                        await self._deliver(vehicle_id, msg)
            except ClosedResourceError:
                return
            except (nats.errors.Error, CommandUnavailable, TimeoutError) as exc:
                self.stats.bus_errors += 1
                log.warning("command bus: pulling the commands of %s failed (retrying): %s", vehicle_id, exc)
                await asyncio.sleep(backoff_s)
            except Exception:  # a bug must not end the vehicle's commands silently: loud, and go on
                self.stats.bus_errors += 1
                log.exception("command bus: pulling the commands of %s failed (retrying)", vehicle_id)
                await asyncio.sleep(backoff_s)
            finally:
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()

    async def _pull_subscription(self, vehicle_id: str) -> JetStreamContext.PullSubscription:
        js = self._jetstream()
        name = consumer_name(vehicle_id)
        try:
            await self._add_consumer(js, name, vehicle_id)
        except nats.js.errors.BadRequestError as exc:
            # A consumer of this name with another configuration (a replica started with other
            # settings): use it as it is, and say so.
            await js.consumer_info(COMMANDS_STREAM, name)
            log.warning("command bus: consumer %s of %s kept as it is: %s", name, vehicle_id, exc)
        return await js.pull_subscribe_bind(durable=name, stream=COMMANDS_STREAM)

    async def _add_consumer(self, js: JetStreamContext, name: str, vehicle_id: str) -> None:
        config = self._config
        await js.add_consumer(
            COMMANDS_STREAM,
            ConsumerConfig(
                durable_name=name,
                name=name,
                description=f"commands of vehicle {vehicle_id}",
                filter_subject=command_subject(vehicle_id),
                deliver_policy=DeliverPolicy.ALL,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=config.ack_wait_s,
                max_deliver=-1,
                max_ack_pending=1,
                inactive_threshold=config.consumer_inactive_s,
            ),
        )

    async def _deliver(self, vehicle_id: str, msg: Msg) -> None:
        """One command message: finish it from its register, or deliver it and record the outcome."""
        headers = msg.headers or {}
        try:
            command = ingest_pb.VehicleCommand.FromString(msg.data)
            expires_ns = int(headers["Tcu-Expires-Ns"])
        except (DecodeError, KeyError, ValueError) as exc:
            self.stats.malformed += 1
            log.error(
                "command bus: a message on %s is not a queued command (%s: %s); removed (term)",
                msg.subject,
                type(exc).__name__,
                exc,
            )
            await msg.term()
            return
        command_id = command.command_id
        keepalive = asyncio.create_task(self._keep_alive(msg), name=f"tcu.ingest.commands.ack[{command_id}]")
        try:
            while True:
                register = await self._register(vehicle_id, command_id)
                if register.final is not None:
                    log.info(
                        "command %s for %s has its outcome already (%s); removed from the queue",
                        command_id,
                        vehicle_id,
                        register.final.state.name,
                    )
                    await msg.ack()
                    return
                if register.delivered:
                    seq, redelivery = register.seq, True
                    break
                if self._clock() >= expires_ns:
                    await self._expire(vehicle_id, command_id, expires_ns)
                    await msg.ack()
                    return
                marked = await self._write(vehicle_id, command_id, 0, None)
                if marked is not None:
                    seq, redelivery = marked, False
                    break
            if redelivery:
                self.stats.redelivered += 1
                if self._clock() > expires_ns + int(self._config.max_skew_s * _NS_PER_S):
                    # The vehicle would refuse it as expired, which would hide an earlier run.
                    outcome = CommandOutcome(
                        CommandState.UNKNOWN,
                        "delivered before its expiry, but that delivery's answer was lost, and the"
                        " vehicle can no longer run it: it ran at most once",
                    )
                    await self._record_final(vehicle_id, command_id, seq, outcome)
                    await msg.ack()
                    return
                log.warning(
                    "command %s for vehicle %s was delivered before without a recorded answer (a replica"
                    " died or the stream ended); delivering it again: the vehicle refuses a second run",
                    command_id,
                    vehicle_id,
                )
            self.stats.delivered += 1
            wait_s = (expires_ns - self._clock()) / _NS_PER_S + self._config.max_skew_s
            wait_s = max(wait_s, 0.0) + self._config.answer_timeout_s
            try:
                outcome = await self._local.send(command, vehicle_id, wait_s)
            except CommandsExhausted as exc:  # the vehicle's local bound: try again later
                log.warning("command %s for %s: %s; redelivered later", command_id, vehicle_id, exc)
                await msg.nak(delay=1.0)
                return
            if outcome.state is CommandState.NOT_CONNECTED:
                await msg.nak()
                return
            if outcome.state is CommandState.TIMEOUT:
                outcome = CommandOutcome(
                    CommandState.UNKNOWN,
                    f"delivered, but vehicle {vehicle_id!r} did not answer: {outcome.reason}",
                )
            elif (
                redelivery
                and outcome.state is CommandState.REJECTED
                and outcome.reason.startswith("replayed")
            ):
                outcome = CommandOutcome(
                    CommandState.UNKNOWN,
                    "the vehicle accepted this command on an earlier delivery whose answer was lost, and"
                    f" refused this redelivery ({outcome.reason}): it ran once; its own result is unknown",
                )
            elif (
                redelivery and outcome.state is CommandState.REJECTED and outcome.reason.startswith("expired")
            ):
                outcome = CommandOutcome(
                    CommandState.UNKNOWN,
                    f"the vehicle refused this redelivery ({outcome.reason}); an earlier delivery whose"
                    " answer was lost may have run it: it ran at most once",
                )
            await self._record_final(vehicle_id, command_id, seq, outcome)
            await msg.ack()
        except asyncio.CancelledError:
            # The vehicle's last stream here ended, or the ingest stops: hand it on at once.
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await asyncio.shield(msg.nak())
            raise
        finally:
            keepalive.cancel()

    async def _record_final(
        self, vehicle_id: str, command_id: str, seq: int, outcome: CommandOutcome
    ) -> None:
        """Write the vehicle's outcome, retrying through a JetStream failover: once the vehicle has
        answered, a lost write would turn its answer into UNKNOWN on the redelivery."""
        for attempt in range(20):
            try:
                await self._write(vehicle_id, command_id, seq, outcome)
                return
            except CommandUnavailable as exc:
                if attempt == 19:
                    log.error(
                        "command %s for %s: outcome %s not recorded (%s); the redelivery will say UNKNOWN",
                        command_id,
                        vehicle_id,
                        outcome.state.name,
                        exc,
                    )
                    raise
                await asyncio.sleep(0.5)

    async def _keep_alive(self, msg: Msg) -> None:
        """Tell JetStream the delivery is in progress, so it is not handed to another replica."""
        while True:
            await asyncio.sleep(self._config.ack_wait_s / 3)
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await msg.in_progress()
