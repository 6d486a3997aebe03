"""The agent's Prometheus metrics and health, read from its stats objects at scrape time.

Metric names (all prefixed ``tcu_agent_``; counters end in ``_total``):

=========================================  =======  ==============================================
``frames_read_total{bus}``                 counter  CAN frames read from the bus
``bus_up{bus}``                            gauge    1 while the bus is open and read
``bus_open_failures_total{bus}``           counter  failed attempts to open or reopen the bus
``frames_dropped_total{bus,where}``        counter  DataLoss: frames dropped at a full bus buffer
                                                    (``where="buffer"``) or by the kernel (``"kernel"``)
``frames_decoded_total{bus}``              counter  frames of a mapped message, decoded
``frames_unknown_total{bus}``              counter  frames of an id no DBC of the bus defines
``frames_length_mismatch_total``           counter  frames shorter than the DBC's (all buses)
``signals_decoded_total``                  counter  signal values decoded
``samples_collected_total``                counter  samples the periodic campaign kept
``batches_built_total``                    counter  batches handed to the outbox (telemetry + events)
``events_captured_total``                  counter  condition-campaign events
``batches_unacked``                        gauge    batches waiting for the ingest's ack
``spool_bytes``                            gauge    bytes of the spool's segment files
``spool_oldest_age_seconds``               gauge    age of the oldest unacked batch in the spool
``spool_evicted_batches_total{priority}``  counter  DataLoss: batches evicted (full spool or age)
``spool_corrupt_batches_total``            counter  DataLoss: batches lost to corruption
``spool_backlog_dropped_total``            counter  DataLoss: batches dropped from the RAM backlog
``uplink_connected``                       gauge    1 while the Upload stream is open
``uplink_acked_seq``                       gauge    highest contiguous acked sequence number
``uplink_batches_acked_total``             counter  batches the ingest acked
``uplink_connects_total``                  counter  Upload streams opened
``batches_quarantined_total``              counter  acks reporting a batch kept in quarantine
``connectivity_errors_total``              counter  modem / eUICC errors ([connectivity] only)
``esim_profile_info{iccid,plmn,...}``      gauge    1; labels: profile, PLMN, registration, RAT
``modem_signal_dbm``, ``modem_roaming``    gauge    signal strength; 1 while roaming
``watchdog_missed_total``                  counter  watchdog pings withheld: the pipeline stalled
=========================================  =======  ==============================================
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from tcu.agent.outbox import SpoolOutbox
from tcu.errors import TcuError
from tcu.metrics import Family

if TYPE_CHECKING:
    from tcu.agent.app import Agent

__all__ = ["agent_health", "agent_snapshot"]

_P = "tcu_agent_"


def agent_snapshot(agent: Agent) -> Iterable[Family]:
    def c(name: str, help: str, labels: tuple[str, ...] = ()) -> Family:
        return Family(_P + name, "counter", help, labels)

    def g(name: str, help: str, labels: tuple[str, ...] = ()) -> Family:
        return Family(_P + name, "gauge", help, labels)

    read = c("frames_read", "CAN frames read from the bus", ("bus",))
    up = g("bus_up", "1 while the bus is open and read", ("bus",))
    failures = c("bus_open_failures", "Failed attempts to open or reopen the bus", ("bus",))
    dropped = c("frames_dropped", "Frames dropped at a full bus buffer or by the kernel", ("bus", "where"))
    for r in agent.readers:
        read.add(r.stats.frames, r.config.name)
        up.add(1 if r.up else 0, r.config.name)
        failures.add(r.stats.open_failures, r.config.name)
        dropped.add(r.stats.overflow_frames, r.config.name, "buffer")
        dropped.add(r.stats.kernel_dropped, r.config.name, "kernel")
    yield from (read, up, failures, dropped)
    decoded = c("frames_decoded", "Frames of a mapped message, decoded", ("bus",))
    unknown = c("frames_unknown", "Frames of an id no DBC of the bus defines", ("bus",))
    by_bus = agent.pipeline.stats.by_bus
    for name in sorted({r.config.name for r in agent.readers} | by_bus.keys()):
        counts = by_bus.get(name)
        decoded.add(counts.decoded if counts else 0, name)
        unknown.add(counts.unknown if counts else 0, name)
    yield from (decoded, unknown)
    d = agent.decoder.counts
    yield c("frames_length_mismatch", "Frames shorter than their DBC message (not decoded)").add(d.short)
    yield c("signals_decoded", "Signal values decoded").add(d.signals)
    yield c("samples_collected", "Samples kept by all campaigns (the default periodic one included)").add(
        agent.pipeline.engine.stats.samples_out
    )
    stats = agent.stats()
    yield c("batches_built", "Batches handed to the outbox").add(stats.batches_built)
    yield c("events_captured", "Condition-campaign events captured").add(stats.events_captured)
    yield g("batches_unacked", "Batches waiting for the ingest's ack").add(stats.batches_unacked)
    if isinstance(agent.outbox, SpoolOutbox):
        spool = agent.outbox.spool.stats()
        yield g("spool_bytes", "Bytes of the spool's segment files").add(spool.bytes)
        yield g("spool_oldest_age_seconds", "Age of the oldest unacked batch in the spool").add(
            spool.oldest_age_s or 0.0
        )
        evicted = c(
            "spool_evicted_batches", "Batches evicted from the spool (sent as DataLoss)", ("priority",)
        )
        for priority, count in sorted(spool.evicted_by_priority.items()):
            evicted.add(count, str(priority))
        yield evicted
        yield c("spool_corrupt_batches", "Batches lost to corruption (sent as DataLoss)").add(
            spool.lost_to_corruption
        )
        yield c("spool_backlog_dropped", "Batches dropped from the RAM backlog (sent as DataLoss)").add(
            agent.outbox.backlog_dropped
        )
    u = agent.uplink.stats
    yield g("uplink_connected", "1 while the Upload stream is open").add(1 if u.connected else 0)
    yield g("uplink_acked_seq", "Highest contiguous acked sequence number").add(u.acked_seq)
    yield c("uplink_batches_acked", "Batches the ingest acked").add(u.batches_acked)
    yield c("uplink_connects", "Upload streams opened").add(u.connects)
    yield c("batches_quarantined", "Acks reporting a batch kept in quarantine").add(u.quarantined)
    if agent.connectivity is not None:
        yield from connectivity_families(agent.connectivity)
    if agent.notify is not None:
        yield c("watchdog_missed", "Watchdog pings withheld because the pipeline stalled").add(
            agent.notify.watchdog_missed
        )


def connectivity_families(source: Any) -> Iterable[Family]:
    """Modem and eSIM state from the connectivity source (its ``errors`` and ``state``)."""
    state = source.state
    yield Family(_P + "connectivity_errors", "counter", "Modem and eUICC errors").add(source.errors)
    yield Family(
        _P + "esim_profile_info",
        "gauge",
        "The enabled profile and the registration (1; the labels carry the state)",
        ("iccid", "plmn", "registration", "access_technology"),
    ).add(
        1,
        str(state.get("Iccid", "")),
        str(state.get("Plmn", "")),
        str(state.get("RegistrationStatus", "")),
        str(state.get("AccessTechnology", "")),
    )
    if isinstance(state.get("SignalStrength"), float):
        yield Family(_P + "modem_signal_dbm", "gauge", "Signal strength (LTE RSRP, else RSSI)").add(
            float(state["SignalStrength"])
        )
    if isinstance(state.get("IsRoaming"), float):
        yield Family(_P + "modem_roaming", "gauge", "1 while roaming").add(float(state["IsRoaming"]))


def agent_health(agent: Agent, max_stall_s: float = 30.0) -> dict[str, Any]:
    """Buses, spool, uplink, modem and pipeline in one object (``tcu agent --status``, ``/healthz``).

    Healthy: the pipeline is not stalled (progress or waiting, see :class:`~tcu.sdnotify.Heartbeat`)
    and the spool reports no error. A bus down or the uplink down is reported but is not
    unhealthy by itself: the agent is built to ride those out (a parked car has no link).
    """
    buses = {
        r.config.name: {"up": r.up, "frames": r.stats.frames, "last_error": r.stats.last_error}
        for r in agent.readers
    }
    u = agent.uplink.stats
    uplink = {
        "target": agent.config.uplink.target,
        "connected": u.connected,
        "acked_seq": u.acked_seq,
        "unacked": agent.outbox.unacked(),
        "last_error": u.last_error,
    }
    spool: dict[str, Any] = {"configured": isinstance(agent.outbox, SpoolOutbox)}
    spool_ok = True
    if isinstance(agent.outbox, SpoolOutbox):
        try:
            s = agent.outbox.spool.stats()
            spool.update(bytes=s.bytes, oldest_age_s=s.oldest_age_s, last_error=agent.outbox.last_error)
            spool_ok = not agent.outbox.last_error
        except TcuError as exc:
            spool.update(last_error=str(exc))
            spool_ok = False
    pipeline = {
        "stalled": not agent.heartbeat.healthy(max_stall_s),
        "waiting_for": agent.heartbeat.waiting_for,
        "last_progress_s_ago": round(agent.heartbeat.age_s(), 3),
    }
    out: dict[str, Any] = {
        "healthy": spool_ok and not pipeline["stalled"],
        "vehicle_id": agent.config.vehicle_id,
        "buses": buses,
        "spool": spool,
        "uplink": uplink,
        "pipeline": pipeline,
    }
    if agent.connectivity is not None:
        out["modem"] = {
            "errors": agent.connectivity.errors,
            "reopens": agent.connectivity.reopens,
            **agent.connectivity.state,
        }
    return out
