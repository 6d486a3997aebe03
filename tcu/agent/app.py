"""Composition root of the vehicle service: buses → decode → collect → batch → outbox → uplink.

One ``TaskGroup`` holds the named tasks: a reader per bus
(``tcu.agent.bus[<name>]``, whose thread fills the bus's buffer in a
:class:`~tcu.can.collector.FrameCollector`), the pipeline (``tcu.agent.pipeline``: once per
``[frames] tick_ms`` it takes every bus's frames in one hand-off and feeds them to the
pipeline as one batch), the uplink (``tcu.agent.uplink``) and the stats writer
(``tcu.agent.stats``). Frames dropped because a bus's buffer was full are counted, logged
and sent upstream as a ``DataLoss`` batch (reason ``frames-overflow``, at most one a second).
Shutdown order on ``stop``: close the bus readers (their last partial batch is still
delivered), let the pipeline decode what is buffered and flush the last
telemetry batch, wait up to ``uplink.drain_timeout_s`` for the ingest to ack
everything, then cancel the uplink.
"""

from __future__ import annotations

import asyncio
import collections
import importlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import can
import numpy as np

from tcu import __version__
from tcu.agent.campaigns import CampaignRuntime
from tcu.agent.catalogs import CatalogFileError, CatalogFiles
from tcu.agent.commands import CommandHandler
from tcu.agent.health import SpoolHealth
from tcu.agent.notify import AgentNotify
from tcu.agent.outbox import SpoolOutbox
from tcu.agent.pipeline import Pipeline
from tcu.agent.sources import Emitter, SignalSource
from tcu.api.v1 import ingest_pb2 as ingest_pb
from tcu.api.v1 import telemetry_pb2 as telemetry_pb
from tcu.can import BusReader, FrameCollector, open_bus
from tcu.collect import BatchBuilder
from tcu.collect.engine import CampaignEngine, CapturedEvent
from tcu.config import AgentConfig, BusConfig, CampaignSettings
from tcu.errors import InputError
from tcu.fsutil import write_atomic
from tcu.sdnotify import Heartbeat, Notifier
from tcu.signals.dbc import load_dbc
from tcu.signals.decoder import SignalDecoder, compile_codecs
from tcu.signals.mapping import Catalog, ExtraSignal, build_catalog, load_mapping
from tcu.spool import Spool
from tcu.uplink import MemoryOutbox, Outbox, Uplink

if TYPE_CHECKING:
    from tcu.agent.connectivity import ConnectivitySource
    from tcu.agent.v2x import V2xTap

__all__ = ["MAX_PREVIOUS_CATALOGS", "Agent", "AgentStats", "catalog_message", "open_outbox"]

log = logging.getLogger(__name__)

MAX_PREVIOUS_CATALOGS = 16
"""The most older catalogs one Hello announces (the ingest's limit)."""


@dataclass(slots=True)
class AgentStats:
    frames: int = 0
    signals_decoded: int = 0
    samples_collected: int = 0
    samples_emitted: int = 0
    """Samples the agent's own sources (modem, eSIM, spool health) added to batches."""
    batches_built: int = 0
    batches_acked: int = 0
    batches_unacked: int = 0
    batches_quarantined: int = 0
    """Batches the ingest reported as kept in quarantine (malformed content; see the uplink's log)."""
    unknown_frames: int = 0
    length_mismatch_frames: int = 0
    uplink_connected: bool = False
    acked_seq: int = 0
    boot_epoch: int = 0
    events_captured: int = 0
    commands_executed: int = 0
    commands_rejected: int = 0
    buses_down: int = 0
    """Configured buses not open right now (being retried; see the log)."""
    bus_open_failures: int = 0
    """Failed attempts to open or reopen a bus, all buses together."""
    samples_lost_at_stop: int = 0
    """Samples not spooled because the outbox stayed full until the shutdown deadline (logged)."""
    frames_lost_at_stop: int = 0
    """Frames read but not decoded then."""
    frames_dropped_overflow: int = 0
    """Frames dropped because a bus's buffer was full (``[frames] overflow = "drop"``; sent as DataLoss)."""
    frames_dropped_kernel: int = 0
    """Frames the kernel dropped before a SocketCAN reader got them (``SO_RXQ_OVFL``; logged)."""
    frame_lag_ms_max: float = 0.0
    """Worst delay from a frame's source time to the end of its decode and sampling (wall clock; meaningful
    when the bus's times are wall-clock times, as on a live bus), per tick: of the oldest frame taken."""
    frame_lag_ms_p99: float = 0.0
    """The 99th percentile of that delay over the last 65,536 ticks that took frames."""
    hold_ms_max: float = 0.0
    """Worst time frames spent inside the agent: from the reader's hand-off of the oldest frames of a
    tick to the end of their decode and sampling (excludes the sender and the socket)."""
    hold_ms_p99: float = 0.0
    """Its 99th percentile over the last 65,536 ticks that took frames."""
    ticks: int = 0
    """Times the pipeline took frames from the bus buffers."""
    stopped: bool = False
    v2x: dict[str, Any] | None = None
    """The V2N client and station counters (``[v2x]`` only)."""


def catalog_message(catalog: Catalog) -> telemetry_pb.SignalCatalog:
    msg = telemetry_pb.SignalCatalog(catalog_id=catalog.catalog_id)
    for s in catalog.signals:
        msg.signals.add(
            signal_id=s.signal_id,
            name=s.name,
            unit=s.unit,
            type=telemetry_pb.VALUE_TYPE_STRING
            if s.value_type == "string"
            else telemetry_pb.VALUE_TYPE_DOUBLE,
            source=s.source,
            resolution=s.resolution,
            period_ms=s.period_ms,
        )
    return msg


def open_outbox(config: AgentConfig) -> Outbox:
    """The durable spool (``[spool]``, or by default ``<state>/spool``), else batches wait in memory.

    A configured spool that cannot be opened (directory not writable, locked by another
    agent, state that cannot be rebuilt) raises its :class:`~tcu.errors.SpoolError`, whose
    message names the file and the problem: the agent refuses to start rather than run on
    memory with a new epoch and strand the spooled batches.
    """
    if config.spool is None:
        why = "[spool] enabled = false" if config.spool_origin == "disabled" else "no spool"
        log.warning("%s: unacked batches are kept in memory and lost on a crash", why)
        return MemoryOutbox(max_batches=config.uplink.max_unacked_batches)
    s = config.spool
    if config.spool_origin == "default":
        log.info("spool: no [spool] section: the default %s (power-loss durability)", s.directory)
    spool = Spool.open(s)  # a SpoolSettings is the SpoolConfig, checked when the file was loaded
    stats = spool.stats()
    log.info(
        "spool %s (%s): boot epoch %d, %d batches unacked, %d repaired regions",
        s.directory,
        s.durability,
        spool.boot_epoch,
        stats.records + stats.tombstones,
        stats.repaired_regions,
    )
    return SpoolOutbox(spool, vehicle_id=config.vehicle_id, backlog_bytes=s.backlog_bytes)


OVERFLOW_REPORT_S = 1.0
"""Frames dropped at a full bus buffer are sent upstream as one DataLoss batch at most this often."""


class Agent:
    """The vehicle agent. Build it from an :class:`AgentConfig`, then ``await run(stop)``."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        outbox: Outbox | None = None,
        stats_path: Path | None = None,
        sources: Sequence[SignalSource] = (),
        opener: Callable[[BusConfig], can.BusABC] = open_bus,
        notifier: Notifier | None = None,
    ):
        self.config = config
        self.heartbeat = Heartbeat()
        """The pipeline's progress, which the systemd watchdog pings follow (:mod:`tcu.agent.notify`)."""
        self.notify = AgentNotify(self, notifier, self.heartbeat) if notifier is not None else None
        self.stats_path = stats_path
        self._stats_write_failed = False
        self.sources = list(sources)
        self.connectivity: ConnectivitySource | None = None
        if config.connectivity is not None:
            # The modem / eSIM roaming source, imported only when configured.
            connectivity = importlib.import_module("tcu.agent.connectivity")
            self.connectivity = connectivity.build_connectivity_source(config)
            self.sources.append(self.connectivity)
        self.outbox: Outbox = outbox or open_outbox(config)
        if isinstance(self.outbox, SpoolOutbox):
            self.sources.append(SpoolHealth(self.outbox))
        databases: dict[str, list[Any]] = {bus.name: [load_dbc(p) for p in bus.dbc] for bus in config.buses}
        v2x_signals: list[ExtraSignal] = []
        if config.v2x is not None:
            from tcu.agent.v2x import V2X_SIGNALS

            v2x_signals = list(V2X_SIGNALS)
        self.catalog = build_catalog(
            load_mapping(config.mapping),
            databases,
            mapping_path=config.mapping,
            extra=[*(sig for source in self.sources for sig in source.signals), *v2x_signals],
        )
        self.v2x: V2xTap | None = None
        if config.v2x is not None:
            from tcu.agent.v2x import V2xTap

            self.v2x = V2xTap(config.v2x, self.catalog)
        codecs = compile_codecs(databases)
        self.decoder = SignalDecoder(
            self.catalog, codecs, j1939=[bus.name for bus in config.buses if bus.j1939]
        )
        self.builder = BatchBuilder(
            vehicle_id=config.vehicle_id,
            catalog_id=self.catalog.catalog_id,
            max_samples=config.batch.max_samples,
            max_age_ms=config.batch.max_age_ms,
        )
        self.readers = [
            BusReader(
                b,
                batch_frames=config.reader_batch_frames,
                batch_ms=config.reader_batch_ms,
                tick_ms=config.tick_ms,
                opener=opener,
            )
            for b in config.buses
        ]
        # A replayed log has no real time to lose: its reader waits for room instead of dropping.
        blocking = [
            b.name for b in config.buses if config.frame_overflow == "block" or b.interface == "replay"
        ]
        self.collector = FrameCollector(
            [b.name for b in config.buses], max_frames=config.frame_buffer_frames, block=blocking
        )
        self._readers_done = asyncio.Event()
        self._frame_lag_ns_max = 0
        self._lags: collections.deque[int] = collections.deque(maxlen=65_536)
        self._hold_s_max = 0.0
        self._holds: collections.deque[float] = collections.deque(maxlen=65_536)
        self._overflow_reported_at = -OVERFLOW_REPORT_S
        # Catalogs of batches still in the spool (written by an agent with other DBCs or mapping).
        self._catalog_message = catalog_message(self.catalog)
        self.catalog_files: CatalogFiles | None = None
        self.previous_catalogs: list[telemetry_pb.SignalCatalog] = []
        self._catalog_saved = True
        self._catalog_save_failed = False
        if isinstance(self.outbox, SpoolOutbox):
            self.catalog_files = CatalogFiles(self.outbox.spool.config.directory / "catalogs")
            self.previous_catalogs = self._load_previous_catalogs()
            self._catalog_saved = False
            self._save_catalog()
        self.default_periodic = config.campaigns is None or config.campaigns.default_periodic
        self.campaigns: CampaignRuntime | None = None
        if config.campaigns is not None or config.commands is not None:
            self.campaigns = CampaignRuntime(
                config.campaigns or CampaignSettings(),
                self.catalog,
                codecs,
                vehicle_id=config.vehicle_id,
                default_periodic=self.default_periodic,
            )
            engine = self.campaigns.engine
        else:  # the default periodic campaign alone
            engine = CampaignEngine((), self.catalog, {}, 0, default_periodic=self.default_periodic)
        self.commands: CommandHandler | None = None
        self.uplink = Uplink(
            config.uplink,
            hello=self.hello(),
            outbox=self.outbox,
            on_command=self._on_command if config.commands is not None else None,
            checkin=self.campaigns.checkin if self.campaigns is not None else None,
            on_ack=self._on_ack if self.previous_catalogs else None,
        )
        if config.commands is not None:
            self.commands = CommandHandler(config.commands, config.vehicle_id, self.uplink.send)
            self.commands.register("campaigns.replace", self._replace_campaigns)
            if self.connectivity is not None:
                self.commands.register("esim.enable", self._order_profile)
                if self.connectivity.config.smdp_ca is not None:
                    self.commands.register("esim.download", self._order_download)
                else:
                    self.commands.unavailable("esim.download", "no [connectivity] smdp_ca configured")
            else:
                self.commands.unavailable("esim.enable", "no connectivity configured")
                self.commands.unavailable("esim.download", "no connectivity configured")
        self.emitter = Emitter(self.catalog, self.builder)
        self._batches_built = 0
        self.unspooled_at_stop = 0
        """Samples lost at shutdown because the outbox stayed full until the drain deadline."""
        self.unspooled_frames_at_stop = 0
        """Frames read but not yet decoded then (lost with them)."""
        self.pipeline = Pipeline(
            self.decoder,
            engine,
            self.builder,
            self._append_batch,
            event_batch=self._event_batch,
            notify=self.uplink.notify,
            # V2N sees hazards as they are decoded, before sampling and batching (never blocks).
            on_decoded=[self.v2x.feed] if self.v2x is not None else [],
        )
        log.info(
            "agent %s: %d buses, %d mapped signals, catalog %s, boot epoch %d",
            config.vehicle_id,
            len(config.buses),
            len(self.catalog.signals),
            self.catalog.catalog_id,
            self.outbox.boot_epoch,
        )

    def hello(self) -> ingest_pb.Hello:
        """The Hello of the next Upload stream: the catalog and the older ones still in the spool."""
        return ingest_pb.Hello(
            vehicle_id=self.config.vehicle_id,
            boot_epoch=self.outbox.boot_epoch,
            catalog=self._catalog_message,
            agent_version=__version__,
            previous_catalogs=self.previous_catalogs,
        )

    def _load_previous_catalogs(self) -> list[telemetry_pb.SignalCatalog]:
        """The persisted catalogs other than the current one; their files go when the spool is empty."""
        assert self.catalog_files is not None
        current = self.catalog.catalog_id
        stored = self.catalog_files.load()
        stored.pop(current, None)
        if self.outbox.unacked() == 0:
            removed = self.catalog_files.remove_except(current)
            if removed:
                log.info("spool is empty: removed the files of earlier catalogs %s", ", ".join(removed))
            return []
        if not stored:
            return []
        newest = sorted(stored, key=self._catalog_mtime, reverse=True)
        kept, left_out = newest[:MAX_PREVIOUS_CATALOGS], newest[MAX_PREVIOUS_CATALOGS:]
        if left_out:
            log.error(
                "%d earlier catalogs have batches in the spool; a Hello announces at most %d, so batches"
                " of %s will be quarantined undecoded by the ingest",
                len(stored),
                MAX_PREVIOUS_CATALOGS,
                ", ".join(left_out),
            )
        log.info(
            "catalog %s is new; %d unacked batches may be of earlier catalogs %s, announced in the Hello",
            current,
            self.outbox.unacked(),
            ", ".join(kept),
        )
        return [stored[catalog_id] for catalog_id in kept]

    def _catalog_mtime(self, catalog_id: str) -> float:
        assert self.catalog_files is not None
        try:
            return self.catalog_files.path(catalog_id).stat().st_mtime
        except OSError:
            return 0.0

    def _save_catalog(self) -> None:
        """Persist the current catalog before its first batch goes to the spool (retried until it works)."""
        if self._catalog_saved or self.catalog_files is None:
            return
        try:
            self.catalog_files.save(self._catalog_message)
        except CatalogFileError as exc:
            if not self._catalog_save_failed:  # once; retried before every batch
                log.error(
                    "%s; batches are spooled anyway, but if the DBCs or mapping change before they are"
                    " acked, the next agent cannot announce their catalog and the ingest quarantines them",
                    exc,
                )
            self._catalog_save_failed = True
            return
        if self._catalog_save_failed:
            log.warning("catalog %s written after all", self.catalog.catalog_id)
        self._catalog_saved = True

    def _on_ack(self) -> None:
        """Once the spool holds no unacked batch, earlier catalogs are no longer needed."""
        if not self.previous_catalogs or self.outbox.unacked() or self.catalog_files is None:
            return
        removed = self.catalog_files.remove_except(self.catalog.catalog_id)
        log.info(
            "every spooled batch is acked: earlier catalogs %s are no longer announced (%d files removed)",
            ", ".join(c.catalog_id for c in self.previous_catalogs),
            len(removed),
        )
        self.previous_catalogs = []
        self.uplink.set_hello(self.hello())

    def stats(self) -> AgentStats:
        d = self.decoder.counts
        return AgentStats(
            frames=sum(r.stats.frames for r in self.readers),
            signals_decoded=d.signals,
            samples_collected=self.pipeline.engine.stats.samples_out,
            samples_emitted=self.emitter.emitted,
            batches_built=self._batches_built,
            batches_acked=self.uplink.stats.batches_acked,
            batches_unacked=self.outbox.unacked(),
            batches_quarantined=self.uplink.stats.quarantined,
            unknown_frames=d.unknown,
            length_mismatch_frames=d.short,
            uplink_connected=self.uplink.stats.connected,
            acked_seq=self.uplink.stats.acked_seq,
            boot_epoch=self.outbox.boot_epoch,
            events_captured=self.pipeline.stats.events,
            commands_executed=self.commands.executed if self.commands is not None else 0,
            commands_rejected=self.commands.rejected if self.commands is not None else 0,
            buses_down=sum(not r.up for r in self.readers),
            bus_open_failures=sum(r.stats.open_failures for r in self.readers),
            samples_lost_at_stop=self.unspooled_at_stop,
            frames_lost_at_stop=self.unspooled_frames_at_stop,
            frames_dropped_overflow=sum(self.collector.overflow.values()),
            frames_dropped_kernel=sum(r.stats.kernel_dropped for r in self.readers),
            frame_lag_ms_max=round(self._frame_lag_ns_max / 1e6, 3),
            frame_lag_ms_p99=round(float(np.percentile(self._lags, 99)) / 1e6, 3) if self._lags else 0.0,
            hold_ms_max=round(self._hold_s_max * 1e3, 3),
            hold_ms_p99=round(float(np.percentile(self._holds, 99)) * 1e3, 3) if self._holds else 0.0,
            ticks=self.collector.takes,
            v2x=self.v2x.stats() if self.v2x is not None else None,
        )

    async def run(self, stop: asyncio.Event) -> AgentStats:
        frames = self.collector
        async with asyncio.TaskGroup() as tg:
            readers = [
                tg.create_task(r.run(frames), name=f"tcu.agent.bus[{r.config.name}]") for r in self.readers
            ]
            pipeline = tg.create_task(self._pipeline(), name="tcu.agent.pipeline")
            uplink = tg.create_task(self.uplink.run(), name="tcu.agent.uplink")
            stats = tg.create_task(self._stats_loop(), name="tcu.agent.stats")
            notify = tg.create_task(self.notify.run(uplink), name="tcu.agent.notify") if self.notify else None
            source_tasks = [
                tg.create_task(source.run(self.emitter), name=f"tcu.agent.source[{source.name}]")
                for source in self.sources
            ]
            v2x = (
                tg.create_task(self.v2x.run(self.emitter), name="tcu.agent.v2x")
                if self.v2x is not None
                else None
            )
            stop_wait = tg.create_task(stop.wait(), name="tcu.agent.stop")
            await asyncio.wait([stop_wait, pipeline, *readers], return_when=asyncio.FIRST_COMPLETED)
            log.info("agent: stopping: closing buses")
            if self.notify is not None:
                self.notify.stopping()
            for task in source_tasks:
                task.cancel()
            await asyncio.gather(*source_tasks, return_exceptions=True)
            for r in self.readers:
                r.stop()
            await asyncio.gather(*readers, return_exceptions=True)
            self._readers_done.set()  # the pipeline takes what the buffers hold, decodes it and ends
            # One deadline for flushing and draining: a full outbox (the ingest unreachable) blocks
            # the pipeline's last appends, and those wait for acks only until it passes.
            drain_s = self.config.uplink.drain_timeout_s
            deadline = asyncio.get_running_loop().time() + drain_s
            try:
                await asyncio.wait_for(pipeline, timeout=drain_s)
            except TimeoutError:
                self._log_unspooled(frames, drain_s)
            if v2x is not None and self.v2x is not None:
                # Queued CAMs/DENMs get the client's drain time; warnings emitted meanwhile are flushed.
                self.v2x.stop()
                done, _ = await asyncio.wait([v2x], timeout=self.v2x.settings.drain_timeout_s + 2.0)
                if not done:
                    log.warning("agent: the V2N client did not stop in time")
                    v2x.cancel()
                remaining = max(0.0, deadline - asyncio.get_running_loop().time())
                try:
                    await asyncio.wait_for(self.pipeline.flush(), timeout=max(remaining, 0.1))
                except TimeoutError:
                    lost = self.builder.samples + self.pipeline.handing_on_samples
                    self.unspooled_at_stop += lost
                    log.error("agent: lost at shutdown, not spooled: the last batch's %d samples", lost)
            remaining = max(0.0, deadline - asyncio.get_running_loop().time())
            log.info("agent: waiting up to %.1f s for %d unacked batches", remaining, self.outbox.unacked())
            drained = await self.uplink.wait_drained(remaining)
            if not drained:
                log.warning("agent: %d batches still unacked at shutdown", self.outbox.unacked())
            uplink.cancel()
            stats.cancel()
            if notify is not None:
                notify.cancel()
            stop_wait.cancel()
        final = self.stats()
        final.stopped = True
        self._write_stats(final)
        if isinstance(self.outbox, SpoolOutbox):
            self.outbox.spool.close()
        return final

    def _log_unspooled(self, frames: FrameCollector, drain_s: float) -> None:
        """The pipeline was cancelled at the shutdown deadline: say what it held (never silently)."""
        left = frames.take()
        queued = [] if left is None else [left]
        self.unspooled_at_stop = self.builder.samples + self.pipeline.handing_on_samples
        self.unspooled_frames_at_stop = sum(len(b) for b in queued)
        log.error(
            "agent: the pipeline did not finish within the %.1f s drain timeout (outbox: %d batches"
            " unacked, room for %d more): lost at shutdown, not spooled: %d samples of the last"
            " batches and %d frames in %d buffered tick batches",
            drain_s,
            self.outbox.unacked(),
            max(0, self.outbox.space()),
            self.unspooled_at_stop,
            self.unspooled_frames_at_stop,
            len(queued),
        )

    async def _pipeline(self) -> None:
        """Drive the pipeline: once per tick, take every bus's frames in one hand-off and feed them.

        Between ticks the task sleeps (sources add samples meanwhile; an old batch is flushed
        at each tick). When the readers have finished (stop), what the buffers hold is
        decoded, the open captures are closed and the last batch is flushed.
        """
        pipeline = self.pipeline
        loop = asyncio.get_running_loop()
        tick_s = self.config.tick_ms / 1000
        next_tick = loop.time()
        heartbeat = self.heartbeat
        heartbeat.waiting("frames")
        while True:
            closing = self._readers_done.is_set()
            beats = heartbeat.beats
            batch = self.collector.take()
            if batch is not None:
                heartbeat.beat()
                await pipeline.feed(batch)
                lag = time.time_ns() - int(batch.t_ns.min())  # the oldest frame of the tick
                self._frame_lag_ns_max = max(self._frame_lag_ns_max, lag)
                self._lags.append(lag)
                hold = time.monotonic() - self.collector.taken_since
                self._hold_s_max = max(self._hold_s_max, hold)
                self._holds.append(hold)
            await self._report_overflow(final=closing)
            if closing:
                heartbeat.beat()
                await pipeline.close()
                return
            if pipeline.builder.due():
                heartbeat.beat()
                await pipeline.flush()
            if heartbeat.beats != beats:  # worked this tick: idle again (an idle tick leaves it alone)
                heartbeat.waiting("frames")
            next_tick += tick_s
            delay = next_tick - loop.time()
            if delay < 0:  # behind (a slow tick): take the next batch at once, the ticks start again from now
                next_tick = loop.time()
                delay = 0
            await asyncio.sleep(delay)

    async def _report_overflow(self, *, final: bool = False) -> None:
        """Frames dropped at full bus buffers go upstream as one DataLoss batch (at most once a second)."""
        now = time.monotonic()
        if not final and now - self._overflow_reported_at < OVERFLOW_REPORT_S:
            return
        loss = self.collector.take_overflow()
        if loss is None:
            return
        self._overflow_reported_at = now
        detail = ", ".join(f"{bus} {n}" for bus, n in sorted(loss.frames.items()))
        payload = telemetry_pb.TelemetryBatch(
            vehicle_id=self.config.vehicle_id,
            created_ns=time.time_ns(),
            loss=telemetry_pb.DataLoss(
                reason=f"frames-overflow: {loss.total} CAN frames dropped at full bus buffers ({detail})",
                priority=0,
                created_ns=loss.first_ns,
                payload_bytes=loss.payload_bytes,
            ),
        ).SerializeToString()
        await self._append(payload, priority=0)

    async def _append_batch(self, payload: bytes, priority: int) -> None:
        await self._append(payload, priority=priority)

    async def _append(self, payload: bytes, *, priority: int) -> None:
        """Hand one batch to the outbox, waiting for acks while it is full (its stated policy)."""
        while self.outbox.space() <= 0:
            self.heartbeat.waiting("outbox room")  # the uplink's condition, not a stalled pipeline
            await self.uplink.wait_acked()
        self.heartbeat.beat()
        self._save_catalog()
        self.outbox.append(payload, priority=max(0, min(255, priority)), created_ns=time.time_ns())
        self._batches_built += 1

    def _event_batch(self, event: CapturedEvent) -> bytes:
        assert self.campaigns is not None  # only condition campaigns capture events
        return self.campaigns.event_batch(event)

    def _on_command(self, command: ingest_pb.VehicleCommand) -> None:
        assert self.commands is not None
        self.commands.on_command(command)

    async def _replace_campaigns(self, payload: bytes, command_id: str) -> None:
        assert self.campaigns is not None
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"campaign file is not UTF-8: {exc}") from exc
        closed = self.campaigns.replace_from_text(text, origin=f"<command {command_id}>")
        await self.pipeline.events(closed)
        self.uplink.send(ingest_pb.UploadRequest(checkin=self.campaigns.checkin()))

    async def _order_profile(self, payload: bytes, command_id: str) -> str:
        assert self.connectivity is not None
        from tcu.agent.connectivity import parse_esim_order  # loaded with the source

        return await self.connectivity.order(parse_esim_order(payload), command_id=command_id)

    async def _order_download(self, payload: bytes, command_id: str) -> str:
        assert self.connectivity is not None
        from tcu.agent.commands import parse_download_order

        return await self.connectivity.order(parse_download_order(payload), command_id=command_id)

    async def _stats_loop(self) -> None:
        while True:
            self._write_stats(self.stats())
            await asyncio.sleep(0.5)

    def _write_stats(self, stats: AgentStats) -> None:
        if self.stats_path is None:
            return
        try:
            write_atomic(self.stats_path, json.dumps(asdict(stats)).encode(), durable=False)
        except OSError as exc:  # e.g. a full disk: the stats file is not worth stopping for
            if not self._stats_write_failed:
                log.error("agent: cannot write the stats file %s: %s", self.stats_path, exc)
            self._stats_write_failed = True
        else:
            self._stats_write_failed = False
