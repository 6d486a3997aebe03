"""Stream batches to the ingest over one bidirectional gRPC ``Upload`` stream.

The uplink sends ``Hello`` and then every unacked batch of the outbox in
sequence order, at most ``window`` batches ahead of the last ack. Acks carry
the highest contiguous durable sequence; everything up to it leaves the
outbox. When the stream breaks (network, ingest restart, ``max_connection_age``)
it reconnects with jittered exponential backoff and resends what is still
unacked; the ingest deduplicates by (vehicle, boot epoch, seq), so a batch that
was stored but whose ack was lost is stored once.

Each attempt is bounded: the channel must be connected within ``connect_timeout_s``
and the stream does not wait for readiness (``wait_for_ready=False``), so an
unreachable ingest fails the attempt with gRPC's reason (``UNAVAILABLE: failed to
connect to all addresses; ... Connection refused``, or ``no connection within 10 s``)
instead of waiting silently. The log says each change of state once: ``connecting
to``, ``connected to``, ``cannot connect to ...: <reason>; retrying in <delay>`` (again
only when the reason changes, with a reminder every 10 minutes while it stays down),
``stream to ... ended: <reason>; reconnecting in <delay>``.

A batch the ingest cannot accept because of its own content is kept there in
quarantine and still acked (so it leaves the outbox); the ack lists it in
``quarantined``. The uplink logs each one at ERROR with its boot epoch, seq and
the ingest's reason and counts it (``UplinkStats.quarantined``): the data is not
lost, but someone has to look at it.

Batches travel as the bytes the outbox holds: the ``UploadRequest`` envelope is
written around them by hand (field 2, length-delimited) and the batch identity
(boot epoch, seq) appended, so a batch is never parsed again inside the agent.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from tcu.api.v1 import ingest_pb2 as ingest_pb
from tcu.config import UplinkConfig
from tcu.errors import ConfigError
from tcu.uplink.outbox import Outbox, OutboxReadError
from tcu.wire import wrap_batch

__all__ = ["Uplink", "UplinkStats", "channel_options", "open_channel", "wrap_batch"]

log = logging.getLogger(__name__)

UPLOAD_METHOD = "/tcu.api.v1.Ingest/Upload"

REMINDER_S = 600.0
"""While the ingest stays unreachable for the same reason, a WARNING says so again this often."""


@dataclass(slots=True)
class UplinkStats:
    connects: int = 0
    disconnects: int = 0
    batches_sent: int = 0
    batches_resent: int = 0
    batches_acked: int = 0
    duplicates: int = 0
    acked_seq: int = 0
    connected: bool = False
    last_error: str = ""
    throttled: int = 0
    retry_after_waits: int = 0
    last_retry_after_s: float = 0.0
    credit: int = 0
    backoff_attempt: int = 0
    """Failed sessions in a row behind the last reconnect delay (1 after a stream that made progress)."""
    quarantined: int = 0
    """Reports of a batch kept in quarantine at the ingest (malformed content; a resent one again)."""
    last_quarantine: str = ""
    """``<boot_epoch>/<seq>: <reason>`` of the latest one."""
    silent_streams: int = 0
    """Streams given up because batches were sent and nothing came back for ``ack_timeout_s``."""


def channel_options(config: UplinkConfig) -> list[tuple[str, int | str]]:
    """Keepalive for cellular links: ping every ``keepalive_s`` even when idle.

    Each attempt opens a new channel, and the uplink's own backoff decides when the next
    one happens; gRPC's reconnect backoff inside a channel (by default growing to 120 s)
    follows the uplink's ``backoff_initial_s``/``backoff_max_s`` too.
    """
    options: list[tuple[str, int | str]] = [
        ("grpc.initial_reconnect_backoff_ms", max(100, int(config.backoff_initial_s * 1000))),
        ("grpc.max_reconnect_backoff_ms", max(100, int(config.backoff_max_s * 1000))),
        ("grpc.keepalive_time_ms", int(config.keepalive_s * 1000)),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # Each attempt's channel its own connection: from gRPC's global subchannel pool a new
        # channel would get the previous one's TCP connection, dead on a silent link.
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.max_receive_message_length", 16 * 1024 * 1024),
        ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ]
    if config.tls is not None and config.tls.server_name:
        options.append(("grpc.ssl_target_name_override", config.tls.server_name))
    return options


def open_channel(config: UplinkConfig) -> grpc.aio.Channel:
    if config.tls is None:
        if not config.insecure:
            raise ConfigError("mTLS material is required unless insecure = true", key="uplink.tls")
        return grpc.aio.insecure_channel(config.target, options=channel_options(config))
    try:
        creds = grpc.ssl_channel_credentials(
            root_certificates=config.tls.ca_cert.read_bytes(),
            private_key=config.tls.key.read_bytes(),
            certificate_chain=config.tls.cert.read_bytes(),
        )
    except OSError as exc:
        raise ConfigError(f"cannot read TLS file {exc.filename}: {exc.strerror}", key="uplink.tls") from exc
    return grpc.aio.secure_channel(config.target, creds, options=channel_options(config))


def _retry_after_s(exc: grpc.aio.AioRpcError) -> float | None:
    metadata: Any = exc.trailing_metadata() or ()
    for item in metadata:
        key, value = item[0], item[1]
        if key == "retry-after-ms":
            try:
                return max(0.0, int(value) / 1000)
            except (TypeError, ValueError):
                return None
    return None


def _identity(b: bytes) -> bytes:
    return b


class Uplink:
    """Keeps one Upload stream open and the outbox draining."""

    def __init__(
        self,
        config: UplinkConfig,
        *,
        hello: ingest_pb.Hello,
        outbox: Outbox,
        window: int = 64,
        on_command: Callable[[ingest_pb.VehicleCommand], None] | None = None,
        checkin: Callable[[], ingest_pb.CheckIn | None] | None = None,
        on_ack: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.stats = UplinkStats()
        self._hello = ingest_pb.UploadRequest(hello=hello).SerializeToString()
        self._outbox = outbox
        self._window = window
        self._on_command = on_command
        self._checkin = checkin
        self._on_ack = on_ack
        # Messages other than batches (command results, check-ins), sent before the next batch.
        # Bounded: a result for a stream that died is useless to the backend after its timeout.
        self._control: collections.deque[bytes] = collections.deque(maxlen=256)
        self._wake = asyncio.Event()
        self._acked = asyncio.Event()
        self._highest_sent = 0
        self._stream_sent = 0  # highest seq sent on the open stream
        self._waiting_since: float | None = None
        """Loop time since which a batch sent on the open stream waits and nothing was received."""
        # A spool reopened after a restart was acked up to some seq by an earlier process: the
        # in-flight window counts from there (from 0 it would wait forever for an ack).
        self.stats.acked_seq = outbox.acked_seq

    def set_hello(self, hello: ingest_pb.Hello) -> None:
        """Use this Hello from the next stream on (the open stream keeps the one it sent)."""
        self._hello = ingest_pb.UploadRequest(hello=hello).SerializeToString()

    def notify(self) -> None:
        """Tell the uplink that the outbox has a new batch."""
        self._wake.set()

    def send(self, message: ingest_pb.UploadRequest) -> None:
        """Queue a non-batch message (command result, check-in) for the current or next stream."""
        self._control.append(message.SerializeToString())
        self._wake.set()

    async def wait_acked(self) -> None:
        """Wait for the next ack (used for backpressure when the outbox is full)."""
        self._acked.clear()
        await self._acked.wait()

    async def wait_drained(self, timeout_s: float) -> bool:
        """Wait until every batch is acked; False when the deadline passed first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._outbox.unacked():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self.wait_acked(), timeout=min(remaining, 0.5))
            except TimeoutError:
                continue
        return True

    async def run(self) -> None:
        """Connect, stream, reconnect with backoff; runs until cancelled."""
        attempt = 0
        loop = asyncio.get_running_loop()
        failures = 0  # failed attempts to connect since the last stream was open
        down_since = reminded = loop.time()
        last_reason = ""
        while True:
            retry_after_s: float | None = None
            acked_before = self.stats.batches_acked
            was_connected = False
            reason = ""
            try:
                await self._session(announce=failures == 0)
            except grpc.aio.AioRpcError as exc:
                reason = f"{exc.code().name}: {exc.details()}"
                if exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:
                    retry_after_s = _retry_after_s(exc)
                    self.stats.throttled += 1
            except ConnectionError as exc:
                reason = str(exc)
            except OutboxReadError as exc:  # e.g. an I/O error reading the spool: retry later
                reason = f"cannot read unacked batches: {exc}"
                log.error("uplink: cannot read unacked batches: %s", exc)
            finally:
                was_connected = self.stats.connected
                if self.stats.connected:
                    self.stats.disconnects += 1
                self.stats.connected = False
            self.stats.last_error = reason
            if self.stats.batches_acked > acked_before:  # the stream made progress: start the backoff over
                attempt = 0
            attempt += 1
            self.stats.backoff_attempt = attempt
            cap = min(self.config.backoff_max_s, self.config.backoff_initial_s * 2 ** min(attempt, 16))
            delay = random.uniform(self.config.backoff_initial_s, max(cap, self.config.backoff_initial_s))
            if retry_after_s is not None:
                delay = retry_after_s  # the ingest said when it will take more; honour it exactly
                self.stats.retry_after_waits += 1
                self.stats.last_retry_after_s = retry_after_s
            target = self.config.target
            now = loop.time()
            if was_connected:
                failures = 0
                down_since = reminded = now
                log.warning("uplink: stream to %s ended: %s; reconnecting in %.2f s", target, reason, delay)
            else:
                failures += 1
                if failures == 1:
                    down_since = reminded = now
                if failures == 1 or reason != last_reason:
                    log.warning(
                        "uplink: cannot connect to %s: %s; retrying in %.2f s"
                        " (attempt %d, backoff up to %g s)",
                        target,
                        reason,
                        delay,
                        failures,
                        self.config.backoff_max_s,
                    )
                elif now - reminded >= REMINDER_S:
                    reminded = now
                    log.warning(
                        "uplink: still cannot connect to %s after %d attempts over %.0f s: %s;"
                        " retrying in %.2f s",
                        target,
                        failures,
                        now - down_since,
                        reason,
                        delay,
                    )
                else:
                    log.debug(
                        "uplink: attempt %d to %s failed: %s; retrying in %.2f s",
                        failures,
                        target,
                        reason,
                        delay,
                    )
            last_reason = reason
            await asyncio.sleep(delay)

    async def _wait_connected(self, channel: grpc.aio.Channel) -> None:
        """Until the channel is connected or has failed (the call then fails at once with gRPC's reason).

        :class:`ConnectionError` when neither happened within ``connect_timeout_s`` (a
        target that drops packets, a TLS handshake that hangs).
        """
        final = (
            grpc.ChannelConnectivity.READY,
            grpc.ChannelConnectivity.TRANSIENT_FAILURE,
            grpc.ChannelConnectivity.SHUTDOWN,
        )

        async def until() -> None:
            state = channel.get_state(try_to_connect=True)
            while state not in final:
                await channel.wait_for_state_change(state)
                state = channel.get_state(try_to_connect=True)

        try:
            await asyncio.wait_for(until(), timeout=self.config.connect_timeout_s)
        except TimeoutError:
            raise ConnectionError(f"no connection within {self.config.connect_timeout_s:g} s") from None

    async def _session(self, *, announce: bool = True) -> None:
        """One Upload stream; ``announce``: log "connecting" at INFO (else DEBUG: a retry)."""
        log.log(logging.INFO if announce else logging.DEBUG, "uplink: connecting to %s", self.config.target)
        channel = open_channel(self.config)
        try:
            await self._wait_connected(channel)
            call = channel.stream_stream(
                UPLOAD_METHOD,
                request_serializer=_identity,
                response_deserializer=ingest_pb.UploadResponse.FromString,
            )(None, wait_for_ready=False)  # None: requests go through write()
            await call.write(self._hello)
            checkin = self._checkin() if self._checkin is not None else None
            if checkin is not None:
                await call.write(ingest_pb.UploadRequest(checkin=checkin).SerializeToString())
            self.stats.connects += 1
            self.stats.connected = True
            log.info(
                "uplink: connected to %s: stream open (%d batches unacked)",
                self.config.target,
                self._outbox.unacked(),
            )
            self._stream_sent, self._waiting_since = 0, None
            reader = asyncio.create_task(self._read_acks(call), name="tcu.uplink.acks")
            writer = asyncio.create_task(self._write_batches(call), name="tcu.uplink.writer")
            tasks = {reader, writer}
            if self.config.ack_timeout_s > 0:
                tasks.add(asyncio.create_task(self._watch_acks(), name="tcu.uplink.ack-watchdog"))
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                if reader not in done:
                    # A failed write says little; the reader receives the server's status. Wait for it.
                    done2, _ = await asyncio.wait({reader}, timeout=2.0)
                    done = done | done2
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                call.cancel()
            for task in sorted(done, key=lambda t: t is not reader):  # the reader's error first
                error = None if task.cancelled() else task.exception()
                if error is not None:
                    raise error
            # The reader only returns when the server ended the stream.
            raise ConnectionError("ingest closed the upload stream")
        finally:
            await channel.close(grace=None)

    def _in_flight_limit(self) -> int:
        """Batches sent beyond the last ack: our window, or less when the ingest's credit says so."""
        credit = self.stats.credit
        return min(self._window, credit) if credit > 0 else self._window

    async def _watch_acks(self) -> None:
        """End a stream on which batches were sent and nothing came back for ``ack_timeout_s``.

        A cellular link that goes silent closes nothing: the stream looks open, the writes
        fill the windows, and gRPC's keepalive ended it only about 104 s after the link went
        silent (``ping timeout``; measured with ``tools/bench/wakeup.py --mode blackhole``).
        Without this the agent would wait on a dead stream long after the link is back.
        """
        loop = asyncio.get_running_loop()
        timeout_s = self.config.ack_timeout_s
        while True:
            await asyncio.sleep(min(1.0, timeout_s / 4))
            since = self._waiting_since
            if since is not None and loop.time() - since > timeout_s:
                self.stats.silent_streams += 1
                raise ConnectionError(
                    f"no answer within {timeout_s:g} s for batches up to seq {self._stream_sent}"
                    f" (acked {self.stats.acked_seq}): the link is silent"
                )

    async def _read_acks(self, call: grpc.aio.StreamStreamCall) -> None:  # type: ignore[type-arg]
        loop = asyncio.get_running_loop()
        async for response in call:
            # Something came back: wait from now for the rest, or not at all when all is acked.
            self._waiting_since = None
            if response.HasField("ack"):
                ack = response.ack
                if ack.duplicate:
                    self.stats.duplicates += 1
                self.stats.credit = ack.credit
                for kept in ack.quarantined:
                    self.stats.quarantined += 1
                    self.stats.last_quarantine = f"{ack.boot_epoch}/{kept.seq}: {kept.reason}"
                    log.error(
                        "uplink: batch %d/%d is malformed; the ingest keeps it in quarantine%s: %s",
                        ack.boot_epoch,
                        kept.seq,
                        " (reported again for a resend)" if ack.duplicate else "",
                        kept.reason,
                    )
                removed = self._outbox.ack(ack.acked_seq)
                self.stats.batches_acked += removed
                self.stats.acked_seq = max(self.stats.acked_seq, ack.acked_seq)
                if self._stream_sent > self.stats.acked_seq:
                    self._waiting_since = loop.time()
                self._acked.set()
                if self._on_ack is not None:
                    self._on_ack()
            elif response.HasField("command"):
                command = response.command
                if self._on_command is not None:
                    self._on_command(command)
                    continue
                log.warning(
                    "uplink: command %s (%s) refused: this agent takes no commands",
                    command.command_id,
                    command.kind,
                )
                result = ingest_pb.CommandResult(
                    command_id=command.command_id, executed=False, reason="commands_disabled"
                )
                self.send(ingest_pb.UploadRequest(command_result=result))

    async def _write_batches(self, call: grpc.aio.StreamStreamCall) -> None:  # type: ignore[type-arg]
        sent_this_stream = 0
        while True:
            self._wake.clear()
            while self._control:
                await call.write(self._control[0])
                self._control.popleft()
            for seq, payload in self._outbox.pending(after_seq=sent_this_stream):
                while seq - self.stats.acked_seq > self._in_flight_limit():
                    await self.wait_acked()
                await call.write(wrap_batch(payload, boot_epoch=self._outbox.boot_epoch, seq=seq))
                sent_this_stream = self._stream_sent = seq
                if self._waiting_since is None and seq > self.stats.acked_seq:
                    self._waiting_since = asyncio.get_running_loop().time()
                self.stats.batches_sent += 1
                if seq <= self._highest_sent:
                    self.stats.batches_resent += 1
                self._highest_sent = max(self._highest_sent, seq)
            await self._wake.wait()
