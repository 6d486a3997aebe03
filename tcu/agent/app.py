"""Composition root of the vehicle service: buses → decode → collect → batch → outbox → uplink.

One ``TaskGroup`` holds the named tasks: a reader per bus
(``tcu.agent.bus[<name>]``), the pipeline (``tcu.agent.pipeline``), the uplink
(``tcu.agent.uplink``) and the stats writer (``tcu.agent.stats``). Shutdown
order on ``stop``: close the bus readers (their last partial batch is still
delivered), let the pipeline decode what is queued and flush the last
telemetry batch, wait up to ``uplink.drain_timeout_s`` for the ingest to ack
everything, then cancel the uplink.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import can

from tcu import __version__
from tcu.agent.campaigns import CampaignRuntime, merge_columns
from tcu.agent.catalogs import CatalogFileError, CatalogFiles
from tcu.agent.commands import CommandHandler
from tcu.agent.health import SpoolHealth
from tcu.agent.outbox import SpoolOutbox
from tcu.agent.sources import Emitter, SignalSource
from tcu.api.v1 import ingest_pb2 as ingest_pb
from tcu.api.v1 import telemetry_pb2 as telemetry_pb
from tcu.can import BusReader, FrameBatch, open_bus
from tcu.collect import BatchBuilder, PeriodicSampler
from tcu.collect.engine import CapturedEvent
from tcu.config import AgentConfig, BusConfig, CampaignSettings
from tcu.errors import InputError
from tcu.fsutil import write_atomic
from tcu.signals.dbc import load_dbc
from tcu.signals.decoder import SignalDecoder
from tcu.signals.mapping import Catalog, build_catalog, load_mapping
from tcu.spool import Spool, SpoolConfig
from tcu.uplink import MemoryOutbox, Outbox, Uplink

if TYPE_CHECKING:
    from tcu.agent.connectivity import ConnectivitySource

__all__ = ["MAX_PREVIOUS_CATALOGS", "Agent", "AgentStats", "catalog_message", "open_outbox"]

log = logging.getLogger(__name__)

MAX_PREVIOUS_CATALOGS = 16
"""The most older catalogs one Hello announces (the ingest's limit)."""


@dataclass(slots=True)
class AgentStats:
    frames: int = 0
    signals_decoded: int = 0
    samples_collected: int = 0
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
    stopped: bool = False


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
    """The durable spool when ``[spool]`` is configured, else batches wait in memory.

    A configured spool that cannot be opened (directory not writable, locked by another
    agent, state that cannot be rebuilt) raises its :class:`~tcu.errors.SpoolError`, whose
    message names the file and the problem: the agent refuses to start rather than run on
    memory with a new epoch and strand the spooled batches.
    """
    if config.spool is None:
        log.warning("no [spool] configured: unacked batches are kept in memory and lost on a crash")
        return MemoryOutbox(max_batches=config.uplink.max_unacked_batches)
    s = config.spool
    spool_config = SpoolConfig(
        directory=s.directory,
        durability=s.durability,  # type: ignore[arg-type]  # checked by SpoolConfig
        max_bytes=s.max_bytes,
        max_age_s=s.max_age_s,
        segment_bytes=s.segment_bytes,
        compression=s.compression,  # type: ignore[arg-type]  # checked by SpoolConfig
        on_damage=s.on_damage,  # type: ignore[arg-type]  # checked by SpoolConfig
    )
    spool = Spool.open(spool_config)
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
    ):
        self.config = config
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
        self.catalog = build_catalog(
            load_mapping(config.mapping),
            databases,
            mapping_path=config.mapping,
            extra=[sig for source in self.sources for sig in source.signals],
        )
        self.decoder = SignalDecoder(self.catalog, databases)
        self.sampler = PeriodicSampler(self.catalog)
        self.builder = BatchBuilder(
            vehicle_id=config.vehicle_id,
            catalog_id=self.catalog.catalog_id,
            max_samples=config.batch.max_samples,
            max_age_ms=config.batch.max_age_ms,
        )
        self.readers = [
            BusReader(
                b, batch_frames=config.reader_batch_frames, batch_ms=config.reader_batch_ms, opener=opener
            )
            for b in config.buses
        ]
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
        self.campaigns: CampaignRuntime | None = None
        if config.campaigns is not None or config.commands is not None:
            self.campaigns = CampaignRuntime(
                config.campaigns or CampaignSettings(),
                self.catalog,
                databases,
                vehicle_id=config.vehicle_id,
            )
        self.default_periodic = config.campaigns is None or config.campaigns.default_periodic
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
            else:
                self.commands.unavailable("esim.enable", "no connectivity configured")
        self.emitter = Emitter(self.catalog, self.builder)
        self._batches_built = 0
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
        d = self.decoder.stats
        return AgentStats(
            frames=sum(r.stats.frames for r in self.readers),
            signals_decoded=d.signals_decoded,
            samples_collected=self.sampler.samples_out,
            batches_built=self._batches_built,
            batches_acked=self.uplink.stats.batches_acked,
            batches_unacked=self.outbox.unacked(),
            batches_quarantined=self.uplink.stats.quarantined,
            unknown_frames=d.unknown_frames,
            length_mismatch_frames=d.length_mismatch_frames,
            uplink_connected=self.uplink.stats.connected,
            acked_seq=self.uplink.stats.acked_seq,
            boot_epoch=self.outbox.boot_epoch,
            events_captured=self.campaigns.events_captured if self.campaigns is not None else 0,
            commands_executed=self.commands.executed if self.commands is not None else 0,
            commands_rejected=self.commands.rejected if self.commands is not None else 0,
        )

    async def run(self, stop: asyncio.Event) -> AgentStats:
        frames: asyncio.Queue[FrameBatch | None] = asyncio.Queue(maxsize=self.config.frame_queue_batches)
        async with asyncio.TaskGroup() as tg:
            readers = [
                tg.create_task(r.run(frames), name=f"tcu.agent.bus[{r.config.name}]") for r in self.readers
            ]
            pipeline = tg.create_task(self._pipeline(frames), name="tcu.agent.pipeline")
            uplink = tg.create_task(self.uplink.run(), name="tcu.agent.uplink")
            stats = tg.create_task(self._stats_loop(), name="tcu.agent.stats")
            source_tasks = [
                tg.create_task(source.run(self.emitter), name=f"tcu.agent.source[{source.name}]")
                for source in self.sources
            ]
            stop_wait = tg.create_task(stop.wait(), name="tcu.agent.stop")
            await asyncio.wait([stop_wait, pipeline, *readers], return_when=asyncio.FIRST_COMPLETED)
            log.info("agent: stopping: closing buses")
            for task in source_tasks:
                task.cancel()
            await asyncio.gather(*source_tasks, return_exceptions=True)
            for r in self.readers:
                r.stop()
            await asyncio.gather(*readers, return_exceptions=True)
            await frames.put(None)
            await pipeline
            log.info(
                "agent: waiting up to %.0f s for %d unacked batches",
                self.config.uplink.drain_timeout_s,
                self.outbox.unacked(),
            )
            drained = await self.uplink.wait_drained(self.config.uplink.drain_timeout_s)
            if not drained:
                log.warning("agent: %d batches still unacked at shutdown", self.outbox.unacked())
            uplink.cancel()
            stats.cancel()
            stop_wait.cancel()
        final = self.stats()
        final.stopped = True
        self._write_stats(final)
        if isinstance(self.outbox, SpoolOutbox):
            self.outbox.spool.close()
        return final

    async def _pipeline(self, frames: asyncio.Queue[FrameBatch | None]) -> None:
        while True:
            # Sources add samples between frames: look at the batch at least twice a second.
            timeout = 0.5
            if self.builder.samples:
                timeout = min(timeout, max(0.0, self.builder.max_age_s - self.builder.age_s()))
            try:
                batch = await asyncio.wait_for(frames.get(), timeout=timeout)
            except TimeoutError:
                if self.builder.due():
                    await self._flush()
                continue
            if batch is None:
                if self.campaigns is not None:
                    await self._spool_events(self.campaigns.engine.flush())
                await self._flush()
                return
            columns = self.decoder.decode(
                batch.bus, batch.t_ns, batch.arbitration_id, batch.is_extended, batch.data
            )
            selected = self.sampler.sample(columns) if self.default_periodic else []
            if self.campaigns is not None:
                engine = self.campaigns.engine
                engine.record_frames(batch.bus, batch.t_ns, batch.arbitration_id, batch.data)
                out = engine.process(columns)
                selected = merge_columns(selected, out.samples)
                await self._spool_events(out.events)
            self.builder.add(selected)
            if self.builder.due():
                await self._flush()

    async def _flush(self) -> None:
        if not self.builder.samples:
            return
        payload, _count = self.builder.build()
        await self._append(payload, priority=0)
        self.uplink.notify()

    async def _append(self, payload: bytes, *, priority: int) -> None:
        """Hand one batch to the outbox, waiting for acks while it is full (its stated policy)."""
        while self.outbox.space() <= 0:
            await self.uplink.wait_acked()
        self._save_catalog()
        self.outbox.append(payload, priority=max(0, min(255, priority)), created_ns=time.time_ns())
        self._batches_built += 1

    async def _spool_events(self, events: Sequence[CapturedEvent]) -> None:
        """Each event is a batch of its own, spooled with its campaign's priority."""
        if not events or self.campaigns is None:
            return
        for event in events:
            await self._append(self.campaigns.event_batch(event), priority=event.priority)
        self.uplink.notify()

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
        await self._spool_events(closed)
        self.uplink.send(ingest_pb.UploadRequest(checkin=self.campaigns.checkin()))

    async def _order_profile(self, payload: bytes, command_id: str) -> str:
        assert self.connectivity is not None
        from tcu.agent.connectivity import parse_esim_order  # loaded with the source

        return await self.connectivity.order(parse_esim_order(payload), command_id=command_id)

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
