"""The V2N MQTT client: aiomqtt (MQTT v5) publishing CAMs/DENMs into tiles and receiving from around.

It runs as one named task in the caller's ``TaskGroup`` (:meth:`V2xClient.start`); each
connection runs its reader and writer as named child tasks, so a broken connection ends
both and the supervisor reconnects with jittered exponential backoff.

* **QoS 1** for everything; **MQTT v5 Message Expiry Interval**: a DENM's remaining validity
  (so the broker never delivers it after the event expired), a CAM's ``cam_expiry_s``.
* **Persistent session**: ``clean_start`` False and a Session Expiry Interval under one client
  id per client object (``<client_id>-<random>``, :attr:`V2xClient.session_id`), so the
  subscriptions and QoS 1 messages for this vehicle wait at the broker across outages of the
  link or of the broker (with its persistence). A restarted agent starts a new session, so no
  tile subscription of an earlier run lingers; the old one expires after ``session_expiry_s``.
  Subscriptions are re-sent on every connect anyway.
* **Never late**: a DENM whose validity has ended by the time it would be sent is dropped
  (``denm_expired_unsent``), also one that waited in the queue through an outage.
* **Bounded outgoing queue** (``queue_size``): a CAM is state, so at most one CAM waits (a new
  one replaces the queued one: ``cam_superseded``); when the queue is full the oldest CAM goes
  first (``cam_dropped``), and only when no CAM is left the oldest DENM (``denm_dropped``,
  logged at WARNING). Up to ``max_inflight`` publishes await their PUBACK at once (a cellular
  round trip does not cap the rate); one that fails with the connection is put back at the
  head. The incoming queue is bounded too (``max_queued_incoming``; aiomqtt logs a drop).
* **Bad input** (topics of the wrong shape, oversize or malformed UPER, unknown types,
  impossible values) is counted per reason in :attr:`V2xClient.counters` (``rx_bad_<reason>``)
  and logged rate-limited (:class:`tcu.logutil.RateLimitedLog`); it never stops the client.
* **Tiles**: :meth:`V2xClient.set_position` moves the 3x3 subscription block
  (:class:`~tcu.v2x.tiles.TileSubscriptions`, with hysteresis); the subscriptions follow.

It imports no other adapter; the agent wires it (:mod:`tcu.agent.v2x`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import secrets
import ssl
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tcu.logutil import RateLimitedLog
from tcu.v2x.errors import V2xDecodeError, V2xError, V2xTopicError
from tcu.v2x.messages import (
    MAX_PAYLOAD_BYTES,
    Cam,
    Denm,
    decode_any,
    encode_cam,
    encode_denm,
    unix_ns_from_its,
)
from tcu.v2x.tiles import (
    MESSAGE_TYPES,
    ParsedTopic,
    TileSubscriptions,
    check_prefix,
    filters_for,
    parse_topic,
    quadkey,
    topic_for,
)

__all__ = ["Received", "V2xClient", "V2xClientConfig", "tls_context"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class V2xClientConfig:
    """Connection and tile settings; the TLS files are paths (mTLS when cert and key are given)."""

    host: str
    port: int
    client_id: str
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    prefix: str = "v2x"
    publish_level: int = 18
    subscribe_level: int = 14
    subscribe_types: tuple[str, ...] = ("denm",)
    fixed_filters: tuple[str, ...] = ()
    tile_margin_m: float = 50.0
    session_expiry_s: int = 300
    keepalive_s: int = 30
    connect_timeout_s: float = 10.0
    queue_size: int = 256
    cam_expiry_s: int = 1
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    drain_timeout_s: float = 2.0
    max_inflight: int = 16
    max_queued_incoming: int = 4096

    def __post_init__(self) -> None:
        check_prefix(self.prefix)
        if not 0 < self.port < 65536:
            raise ValueError(f"broker port {self.port} outside 1..65535")
        if not 1 <= self.subscribe_level <= self.publish_level <= 23:
            raise ValueError("need 1 <= subscribe_level <= publish_level <= 23")
        if any(t not in MESSAGE_TYPES for t in self.subscribe_types):
            raise ValueError(f"subscribe_types must be among {MESSAGE_TYPES}")
        if self.queue_size < 2:
            raise ValueError("queue_size must be at least 2")
        if self.max_inflight < 1 or self.max_queued_incoming < 1:
            raise ValueError("max_inflight and max_queued_incoming must be positive")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")


def tls_context(config: V2xClientConfig) -> ssl.SSLContext | None:
    """The client TLS context (TLS 1.2+, broker name checked), or None without a CA file."""
    if config.ca_file is None:
        return None
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=os.fspath(config.ca_file))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if config.cert_file is not None:
            context.load_cert_chain(
                os.fspath(config.cert_file), None if config.key_file is None else os.fspath(config.key_file)
            )
    except (OSError, ssl.SSLError) as exc:
        raise V2xError(
            f"cannot build the V2N TLS context from {config.cert_file or config.ca_file}: {exc}", reason="tls"
        ) from exc
    return context


@dataclass(frozen=True, slots=True)
class Received:
    """A decoded message from the broker: its topic, content and local receive time (Unix ns)."""

    topic: ParsedTopic
    message: Cam | Denm
    received_ns: int
    payload: bytes


_EXPIRY_CACHE = 1024  # distinct Message Expiry Intervals kept (seconds; DENM validity is at most hours)


@dataclass(slots=True)
class _Item:
    kind: str  # "cam" or "denm"
    topic: str
    payload: bytes
    expires_ns: int | None  # Unix ns after which it must not be sent (DENMs)
    source_ns: int | None  # the triggering frame's source time, for latency


@dataclass(slots=True)
class _Latency:
    samples: deque[int] = field(default_factory=lambda: deque(maxlen=4096))

    def add(self, value_ns: int) -> None:
        self.samples.append(value_ns)

    def summary(self) -> dict[str, float]:
        if not self.samples:
            return {}
        ordered = sorted(self.samples)

        def q(p: float) -> float:
            return ordered[min(len(ordered) - 1, int(p * len(ordered)))] / 1e6

        return {"n": float(len(ordered)), "p50_ms": q(0.5), "p99_ms": q(0.99), "max_ms": ordered[-1] / 1e6}


class V2xClient:
    """See the module docstring. ``on_message`` is called on the event loop for each decoded message."""

    def __init__(
        self,
        config: V2xClientConfig,
        *,
        on_message: Callable[[Received], None] | None = None,
        wall_ns: Callable[[], int] = time.time_ns,
        client_factory: Callable[..., aiomqtt.Client] = aiomqtt.Client,
    ) -> None:
        self.config = config
        self.on_message = on_message
        self._wall_ns = wall_ns
        self._properties_cache: dict[int, Properties] = {}
        self._client_factory = client_factory
        self._tls = tls_context(config)
        self._queue: deque[_Item] = deque()
        self._wake = asyncio.Event()
        self._subs_changed = asyncio.Event()
        self._stopping = asyncio.Event()
        self.connected = asyncio.Event()
        self.tiles = TileSubscriptions(level=config.subscribe_level, margin_m=config.tile_margin_m)
        self._broker_filters: set[str] = set()
        self.counters: Counter[str] = Counter()
        self.publish_latency = {"cam": _Latency(), "denm": _Latency()}
        """Source time of the triggering frame → PUBACK, per message type (only for source times given)."""
        self._ratelog = RateLimitedLog(log, burst=5, interval_s=60.0)
        self._task: asyncio.Task[None] | None = None
        # One MQTT session per client object: resumed on every reconnect, never inherited by a
        # later run (whose subscriptions would differ); the broker expires the old one.
        self.session_id = f"{config.client_id}-{secrets.token_hex(4)}"
        self.last_error: str | None = None

    # ------------------------------------------------------------ public API

    def start(self, tg: asyncio.TaskGroup, *, name: str = "tcu.v2x") -> asyncio.Task[None]:
        """Run the client as task ``name`` in ``tg`` until :meth:`stop`."""
        self._task = tg.create_task(self.run(), name=name)
        return self._task

    @contextlib.asynccontextmanager
    async def running(self, tg: asyncio.TaskGroup, *, name: str = "tcu.v2x") -> AsyncIterator[V2xClient]:
        """``async with client.running(tg):`` start in ``tg``; on exit stop and wait for the drain."""
        task = self.start(tg, name=name)
        try:
            yield self
        finally:
            self.stop()
            await asyncio.wait([task], timeout=self.config.drain_timeout_s + self.config.connect_timeout_s)

    def stop(self) -> None:
        """Ask the client to drain its queue (at most ``drain_timeout_s``) and disconnect."""
        self._stopping.set()
        self._wake.set()

    async def wait_connected(self, timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            await self.connected.wait()

    @property
    def queued(self) -> int:
        return len(self._queue)

    def wanted_filters(self) -> list[str]:
        return sorted(
            {
                *self.config.fixed_filters,
                *filters_for(self.config.prefix, self.tiles.tiles, self.config.subscribe_types),
            }
        )

    def set_position(self, latitude_deg: float, longitude_deg: float) -> bool:
        """Move the subscription block; True when the tiles changed."""
        added, removed = self.tiles.update(latitude_deg, longitude_deg)
        if added or removed:
            self._subs_changed.set()
            return True
        return False

    def topic_of(self, kind: str, station_id: int, latitude_deg: float, longitude_deg: float) -> str:
        key = quadkey(latitude_deg, longitude_deg, self.config.publish_level)
        return topic_for(self.config.prefix, kind, station_id, key)

    def publish_cam(self, cam: Cam, *, source_ns: int | None = None) -> None:
        """Queue a CAM (replacing a CAM still waiting)."""
        topic = self.topic_of("cam", cam.station_id, cam.position.latitude_deg, cam.position.longitude_deg)
        for i, item in enumerate(self._queue):
            if item.kind == "cam":
                del self._queue[i]
                self.counters["cam_superseded"] += 1
                break
        self._put(_Item("cam", topic, encode_cam(cam), None, source_ns))

    def publish_denm(self, denm: Denm, *, source_ns: int | None = None) -> None:
        """Queue a DENM; it is dropped (counted) if its validity ends before it can be sent."""
        pos = denm.event_position
        topic = self.topic_of("denm", denm.station_id, pos.latitude_deg, pos.longitude_deg)
        expires_ns = unix_ns_from_its(denm.expires_at_ms)
        self._put(_Item("denm", topic, encode_denm(denm), expires_ns, source_ns))

    def publish_raw(self, topic: str, payload: bytes, *, expires_ns: int | None = None) -> None:
        """Queue an already-encoded message on an explicit topic (CLI, tests)."""
        self._put(_Item("denm" if "/denm/" in topic else "cam", topic, payload, expires_ns, None))

    def stats(self) -> dict[str, Any]:
        return {
            "connected": self.connected.is_set(),
            "queued": len(self._queue),
            "tiles": self.tiles.centre,
            "counters": dict(self.counters),
            "publish_latency": {kind: lat.summary() for kind, lat in self.publish_latency.items()},
        }

    # ------------------------------------------------------------ queue

    def _put(self, item: _Item) -> None:
        if len(self._queue) >= self.config.queue_size:
            victim = next((i for i, q in enumerate(self._queue) if q.kind == "cam"), None)
            if victim is not None:
                del self._queue[victim]
                self.counters["cam_dropped"] += 1
            else:
                dropped = self._queue.popleft()
                self.counters["denm_dropped"] += 1
                self._ratelog.log(
                    "denm_dropped",
                    logging.WARNING,
                    "V2N queue full (%d): dropped the oldest DENM on %s",
                    self.config.queue_size,
                    dropped.topic,
                )
        self._queue.append(item)
        self.counters[f"{item.kind}_queued"] += 1
        self._wake.set()

    # ------------------------------------------------------------ connection

    def _mqtt_client(self) -> aiomqtt.Client:
        connect = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        connect.SessionExpiryInterval = self.config.session_expiry_s
        return self._client_factory(
            self.config.host,
            self.config.port,
            identifier=self.session_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=connect,
            tls_context=self._tls,
            keepalive=self.config.keepalive_s,
            timeout=self.config.connect_timeout_s,
            # Bounded: aiomqtt drops what does not fit and logs "Message queue is full" (WARNING);
            # the reader drains it with a synchronous handler, so it fills only if the loop stalls.
            max_queued_incoming_messages=self.config.max_queued_incoming,
        )

    async def run(self) -> None:
        """Connect, serve, reconnect with backoff; returns after :meth:`stop` (queue drained or timed out)."""
        delay = self.config.reconnect_min_s
        while not self._stopping.is_set():
            try:
                async with self._mqtt_client() as client:
                    self.counters["connects"] += 1
                    delay = self.config.reconnect_min_s
                    log.info(
                        "V2N connected to %s:%d as %s",
                        self.config.host,
                        self.config.port,
                        self.session_id,
                    )
                    await self._serve(client)
            except aiomqtt.MqttError as exc:
                self._connection_lost(exc, delay)
            except ExceptionGroup as group:  # from the per-connection tasks
                lost, rest = group.split(aiomqtt.MqttError)
                if rest is not None:
                    raise rest from None
                assert lost is not None
                self._connection_lost(lost.exceptions[0], delay)
            finally:
                self.connected.clear()
            if self._stopping.is_set():
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay * random.uniform(0.5, 1.0)):
                    await self._stopping.wait()
            delay = min(self.config.reconnect_max_s, delay * 2)
        if self._queue:
            self.counters["unsent_at_stop"] += len(self._queue)
            log.warning("V2N stopped with %d messages unsent", len(self._queue))

    def _connection_lost(self, exc: BaseException, delay: float) -> None:
        self.last_error = str(exc)
        self.counters["connection_errors"] += 1
        self._ratelog.log(
            "connect",
            logging.WARNING,
            "V2N broker %s:%d: %s; retrying in about %.1f s",
            self.config.host,
            self.config.port,
            exc,
            delay,
        )

    async def _serve(self, client: aiomqtt.Client) -> None:
        self._subs_changed.set()
        await self._sync_subscriptions(client)
        self.connected.set()
        async with asyncio.TaskGroup() as tg:
            reader = tg.create_task(self._reader(client), name="tcu.v2x.rx")
            writer = tg.create_task(self._writer(client), name="tcu.v2x.tx")
            subs = tg.create_task(self._subscriber(client), name="tcu.v2x.subscriptions")
            await writer  # ends on stop (after the drain) or with the connection
            reader.cancel()
            subs.cancel()

    async def _sync_subscriptions(self, client: aiomqtt.Client) -> None:
        if not self._subs_changed.is_set():
            return
        self._subs_changed.clear()
        wanted = set(self.wanted_filters())
        # New tiles first, then the old ones go: no moment without the tiles the vehicle is in.
        for new in sorted(wanted):
            await client.subscribe(new, qos=1)  # re-sent on every connect: idempotent at the broker
            if new not in self._broker_filters:
                self._broker_filters.add(new)
                self.counters["subscribed"] += 1
        for stale in sorted(self._broker_filters - wanted):
            await client.unsubscribe(stale)
            self._broker_filters.discard(stale)
            self.counters["unsubscribed"] += 1

    async def _subscriber(self, client: aiomqtt.Client) -> None:
        while True:
            await self._subs_changed.wait()
            await self._sync_subscriptions(client)

    async def _writer(self, client: aiomqtt.Client) -> None:
        """Send the queue, up to ``max_inflight`` publishes awaiting their PUBACK at once.

        A publish that fails (or is cancelled with the connection) goes back to the head of
        the queue; QoS 1 is at least once anyway and receivers deduplicate.
        """
        window = asyncio.Semaphore(self.config.max_inflight)
        drain_deadline: float | None = None
        async with asyncio.TaskGroup() as publishes:
            while True:
                if self._stopping.is_set():
                    if drain_deadline is None:
                        drain_deadline = time.monotonic() + self.config.drain_timeout_s
                    if not self._queue or time.monotonic() >= drain_deadline:
                        break
                if not self._queue:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                await window.acquire()
                if not self._queue:  # taken while we waited for the window (cannot happen today)
                    window.release()
                    continue
                item = self._queue.popleft()
                properties = self._properties(item)
                if properties is None:
                    window.release()
                    continue
                timeout = None if drain_deadline is None else max(0.01, drain_deadline - time.monotonic())
                publishes.create_task(
                    self._publish_one(client, item, properties, window, timeout), name="tcu.v2x.publish"
                )

    def _properties(self, item: _Item) -> Properties | None:
        """The PUBLISH properties (message expiry), or None for a DENM whose validity has ended.

        Cached (building a paho Properties per publish was a noticeable share of a station's
        CPU): CAMs share one object, DENMs one per Message Expiry Interval (at most
        ``_EXPIRY_CACHE`` kept). paho only reads them when it packs the PUBLISH.
        """
        if item.expires_ns is None:
            return self._expiry_properties(self.config.cam_expiry_s)
        remaining_s = (item.expires_ns - self._wall_ns()) / 1e9
        if remaining_s <= 0:
            self.counters[f"{item.kind}_expired_unsent"] += 1
            self._ratelog.log(
                "expired", logging.WARNING, "V2N: not sending an expired %s on %s", item.kind, item.topic
            )
            return None
        return self._expiry_properties(max(1, math.ceil(remaining_s)))

    def _expiry_properties(self, interval_s: int) -> Properties:
        properties = self._properties_cache.get(interval_s)
        if properties is None:
            if len(self._properties_cache) >= _EXPIRY_CACHE:
                self._properties_cache.clear()
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.MessageExpiryInterval = interval_s
            self._properties_cache[interval_s] = properties
        return properties

    async def _publish_one(
        self,
        client: aiomqtt.Client,
        item: _Item,
        properties: Properties,
        window: asyncio.Semaphore,
        wait_s: float | None,
    ) -> None:
        try:
            await client.publish(item.topic, item.payload, qos=1, properties=properties, timeout=wait_s)
        except (aiomqtt.MqttError, asyncio.CancelledError):
            self._queue.appendleft(item)  # sent again after the reconnect (unless expired by then)
            self.counters["publish_retried"] += 1
            raise
        finally:
            window.release()
        self.counters[f"{item.kind}_published"] += 1
        if item.source_ns is not None:
            self.publish_latency[item.kind].add(self._wall_ns() - item.source_ns)

    async def _reader(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            self._handle(str(message.topic), message.payload)

    def _bad(self, reason: str, topic: str, detail: str) -> None:
        self.counters[f"rx_bad_{reason}"] += 1
        self._ratelog.log(("rx", reason), logging.WARNING, "V2N: dropped a message on %s: %s", topic, detail)

    def _handle(self, topic: str, payload: Any) -> None:  # noqa: PLR0911 - one return per refusal
        received = self._wall_ns()
        self.counters["rx_messages"] += 1
        if not isinstance(payload, bytes | bytearray):
            self._bad("payload", topic, f"payload of type {type(payload).__name__}")
            return
        if len(payload) > MAX_PAYLOAD_BYTES:
            self._bad("oversize", topic, f"{len(payload)} bytes")
            return
        try:
            parsed = parse_topic(self.config.prefix, topic)
        except V2xTopicError as exc:
            self._bad(exc.reason, topic, str(exc))
            return
        try:
            decoded = decode_any(bytes(payload))
        except V2xDecodeError as exc:
            self._bad(exc.reason, topic, str(exc))
            return
        expected = "cam" if isinstance(decoded, Cam) else "denm"
        if parsed.msgtype != expected:
            self._bad("type_mismatch", topic, f"a {expected.upper()} on a {parsed.msgtype} topic")
            return
        if decoded.station_id != parsed.station_id:
            self._bad("station_mismatch", topic, f"station {decoded.station_id} in the message")
            return
        self.counters[f"rx_{expected}"] += 1
        if self.on_message is None:
            return
        try:
            self.on_message(Received(parsed, decoded, received, bytes(payload)))
        except Exception:  # a bug in the consumer must not stop the reader
            self.counters["rx_handler_errors"] += 1
            log.exception("V2N: the message handler failed on %s", topic)
