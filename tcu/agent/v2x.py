"""V2N in the agent: decoded signals → CAMs and DENMs; received warnings → telemetry and log lines.

The pipeline hands every decoded batch of columns to :meth:`V2xTap.feed` right after decoding,
before sampling and batching, so hazard detection waits for nothing but the pipeline's tick
(``[frames] tick_ms``, 20 ms by default). Triggers are campaign expressions
(:mod:`tcu.collect.expr`) over VSS signals, evaluated at every sample time of their signals in
the batch (like the campaign engine); each change of a trigger condition steps the station at
that sample's source time, which becomes the DENM's detection and reference time.

Kinematics come from these VSS signals, when the mapping has them: ``Vehicle.CurrentLocation.
Latitude/Longitude/Heading``, ``Vehicle.Speed`` (km/h unless the catalog says m/s),
``Vehicle.Acceleration.Longitudinal`` (m/s²), ``Vehicle.AngularVelocity.Yaw`` (°/s) and the
``Vehicle.Body.Lights.*`` signals for the CAM's exterior lights (hazard lights = both
indicators, ETSI has no hazard bit). Without a position the station sends nothing.

Received warnings become the string signal ``Vehicle.Tcu.V2x.Warning`` (one JSON object per
change: accepted, updated, cancelled, expired), so the backend sees what each car was told;
``Vehicle.Tcu.V2x.Sent`` records each new DENM, update and cancellation this vehicle sent;
``Vehicle.Tcu.V2x.Connected`` and ``Vehicle.Tcu.V2x.ActiveWarnings`` are sampled every 10 s.

The V2N client runs in its own task; when the broker is down it reconnects with backoff and
its bounded queue drops CAMs first: :meth:`feed` never blocks and never raises into the
pipeline (an unexpected error is logged with its traceback and counted), so the telemetry path
is unaffected.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from tcu.agent.sources import Emitter
from tcu.collect.expr import Expression, ExpressionError, compile_expression
from tcu.config import V2xSettings
from tcu.errors import ConfigError
from tcu.logutil import RateLimitedLog
from tcu.signals.decoder import SignalColumns
from tcu.signals.mapping import Catalog, ExtraSignal
from tcu.v2x import (
    CamRules,
    DenmTrigger,
    StationSettings,
    StationWarning,
    V2xClient,
    V2xClientConfig,
    V2xStation,
    VehicleState,
)
from tcu.v2x.denm import Outgoing
from tcu.v2x.messages import SEND_PROTOCOL_VERSION, compile_release, is_compiled

__all__ = ["V2X_SIGNALS", "V2xTap"]

log = logging.getLogger(__name__)

_ORIGIN = "v2x"
V2X_SIGNALS: tuple[ExtraSignal, ...] = (
    ExtraSignal("Vehicle.Tcu.V2x.Warning", "", "string", _ORIGIN),
    ExtraSignal("Vehicle.Tcu.V2x.Sent", "", "string", _ORIGIN),
    ExtraSignal("Vehicle.Tcu.V2x.Connected", "", "double", _ORIGIN),
    ExtraSignal("Vehicle.Tcu.V2x.ActiveWarnings", "", "double", _ORIGIN),
)

LATITUDE = "Vehicle.CurrentLocation.Latitude"
LONGITUDE = "Vehicle.CurrentLocation.Longitude"
HEADING = "Vehicle.CurrentLocation.Heading"
SPEED = "Vehicle.Speed"
ACCELERATION = "Vehicle.Acceleration.Longitudinal"
YAW = "Vehicle.AngularVelocity.Yaw"
_LIGHTS: Mapping[str, tuple[str, ...]] = {
    "Vehicle.Body.Lights.Beam.Low.IsOn": ("lowBeamHeadlightsOn",),
    "Vehicle.Body.Lights.Beam.High.IsOn": ("highBeamHeadlightsOn",),
    "Vehicle.Body.Lights.DirectionIndicator.Left.IsSignaling": ("leftTurnSignalOn",),
    "Vehicle.Body.Lights.DirectionIndicator.Right.IsSignaling": ("rightTurnSignalOn",),
    "Vehicle.Body.Lights.Hazard.IsSignaling": ("leftTurnSignalOn", "rightTurnSignalOn"),
    "Vehicle.Body.Lights.Running.IsOn": ("daytimeRunningLightsOn",),
    "Vehicle.Body.Lights.Backup.IsOn": ("reverseLightOn",),
    "Vehicle.Body.Lights.Fog.Rear.IsOn": ("fogLightOn",),
    "Vehicle.Body.Lights.Fog.Front.IsOn": ("fogLightOn",),
    "Vehicle.Body.Lights.Parking.IsOn": ("parkingLightsOn",),
}
_KINEMATICS = (LATITUDE, LONGITUDE, HEADING, SPEED, ACCELERATION, YAW, *_LIGHTS)
_CAUSE_NAMES = {
    2: "accident",
    3: "roadworks",
    6: "adverseWeatherCondition-Adhesion",
    9: "hazardousLocation-SurfaceCondition",
    94: "stationaryVehicle",
    99: "dangerousSituation",
}
_SECOND_NS = 1_000_000_000

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]


def _triggers(settings: V2xSettings, names: set[str]) -> list[tuple[DenmTrigger, Expression]]:
    out: list[tuple[DenmTrigger, Expression]] = []
    for t in settings.triggers:
        try:
            expression = compile_expression(t.condition)
        except ExpressionError as exc:  # config stays a leaf: the condition is compiled here, at start
            raise ConfigError(str(exc), key=f"v2x.trigger {t.name}: condition") from exc
        missing = sorted(expression.signals - names)
        if missing:
            if settings.triggers_configured:
                raise ConfigError(
                    f"condition uses signals the mapping does not have: {missing}",
                    key=f"v2x.trigger {t.name}",
                )
            log.warning(
                "V2N: built-in trigger %s left out: the mapping has no %s", t.name, ", ".join(missing)
            )
            continue
        trigger = DenmTrigger(
            name=t.name,
            cause_code=t.cause_code,
            sub_cause_code=t.sub_cause_code,
            validity_s=t.validity_s,
            relevance_distance_m=t.relevance_m,
            relevance_traffic_direction=t.traffic_direction,
            information_quality=t.information_quality,
            hold_ns=t.hold_ms * 1_000_000,
            release_ns=t.release_ms * 1_000_000,
            repetition_interval_ns=t.repetition_ms * 1_000_000,
            update_interval_ns=int(t.update_s * _SECOND_NS),
        )
        out.append((trigger, expression))
    return out


class V2xTap:
    """Feeds decoded columns into a :class:`~tcu.v2x.V2xStation`; runs its client as a task."""

    name = "v2x"
    signals: Sequence[ExtraSignal] = V2X_SIGNALS

    def __init__(self, settings: V2xSettings, catalog: Catalog, *, client: V2xClient | None = None) -> None:
        self.settings = settings
        by_name = catalog.by_name()
        self._triggers = _triggers(settings, set(by_name))
        wanted = set(_KINEMATICS) | {s for _, e in self._triggers for s in e.signals}
        self._names: dict[int, str] = {
            spec.signal_id: spec.name for spec in catalog.signals if spec.name in wanted
        }
        speed = by_name.get(SPEED)
        self._speed_factor = (
            1.0 if speed is not None and speed.unit.replace(" ", "") in ("m/s", "mps") else 1 / 3.6
        )
        windows = [w.window_ns for _, e in self._triggers for w in e.cost().windows]
        self._keep_ns = max([_SECOND_NS, *(w + _SECOND_NS for w in windows)])
        self._history: dict[str, tuple[I64, F64]] = {}
        self._latest: dict[str, float] = {}
        self._conditions: dict[str, bool] = {t.name: False for t, _ in self._triggers}
        self._true_since: dict[str, int] = {}  # held triggers not yet due: since when true
        self._time_ns: int | None = None
        tls = settings.tls
        self.client = client or V2xClient(
            V2xClientConfig(
                host=settings.host,
                port=settings.port,
                client_id=settings.client_id,
                ca_file=tls.ca_cert if tls is not None else None,
                cert_file=tls.cert if tls is not None else None,
                key_file=tls.key if tls is not None else None,
                prefix=settings.prefix,
                publish_level=settings.publish_level,
                subscribe_level=settings.subscribe_level,
                subscribe_types=settings.subscribe,
                session_expiry_s=settings.session_expiry_s,
                queue_size=settings.queue_size,
                reconnect_max_s=settings.reconnect_max_s,
                drain_timeout_s=settings.drain_timeout_s,
            )
        )
        self.station = V2xStation(
            StationSettings(
                station_id=settings.station_id,
                station_type=settings.station_type,
                vehicle_role=settings.vehicle_role,
                length_m=settings.length_m,
                width_m=settings.width_m,
                send_cam=settings.cam,
                cam_rules=CamRules(
                    min_interval_ns=settings.cam_min_interval_ms * 1_000_000,
                    max_interval_ns=settings.cam_max_interval_ms * 1_000_000,
                ),
                triggers=tuple(t for t, _ in self._triggers),
                standstill_mps=settings.standstill_kmh / 3.6,
                ahead_deg=settings.ahead_deg,
                same_direction_deg=settings.same_direction_deg,
            ),
            self.client,
            on_warning=self._on_warning,
            on_sent=self._on_sent,
        )
        # The ASN.1 is compiled in a thread when the tap runs (see run): until release 1 is
        # compiled, feed tracks the signals and conditions but the station does not step.
        self._ready = is_compiled(SEND_PROTOCOL_VERSION)
        self.steps_before_ready = 0
        self._emitter: Emitter | None = None
        self._stopping = asyncio.Event()
        self._ratelog = RateLimitedLog(log, burst=5, interval_s=60.0)
        self.errors = 0
        self.warnings: list[dict[str, Any]] = []  # the last few, for the stats file
        log.info(
            "V2N: station %d on %s:%d, triggers %s",
            settings.station_id,
            settings.host,
            settings.port,
            ", ".join(t.name for t, _ in self._triggers) or "none",
        )

    # ------------------------------------------------------------ the pipeline's tap

    def feed(self, columns: SignalColumns) -> None:
        """Take one decoded batch (called by the pipeline before sampling); never raises."""
        try:
            self._feed(columns)
        except Exception:  # a bug here must not stop the telemetry
            self.errors += 1
            self._ratelog.log(
                "feed", logging.ERROR, "V2N: feeding decoded signals failed: %s", traceback.format_exc()
            )

    def _feed(self, columns: SignalColumns) -> None:
        eval_times: list[I64] = []
        newest: int | None = None
        merged: dict[str, tuple[I64, F64]] = {}
        for signal_id, t_ns, values in columns:
            name = self._names.get(signal_id)
            if name is None or len(t_ns) == 0:
                continue
            old = merged.get(name, self._history.get(name))
            if old is None:
                merged[name] = (t_ns, values)
            else:
                merged[name] = (np.concatenate([old[0], t_ns]), np.concatenate([old[1], values]))
            self._latest[name] = float(values[-1])
            last = int(t_ns[-1])
            newest = last if newest is None else max(newest, last)
            if any(name in e.signals for _, e in self._triggers):
                eval_times.append(t_ns)
        if newest is None:
            return
        if self._time_ns is not None:
            newest = max(newest, self._time_ns)
        if eval_times:
            # evaluated on the whole batch and the kept history, cut only afterwards: a long
            # batch (an agent that lags) sees at its early times the samples before them
            history = {**self._history, **merged}
            times = np.unique(np.concatenate(eval_times))
            states = {t.name: e.evaluate(history, times) for t, e in self._triggers}
            for i, at in enumerate(times.tolist()):
                now = {name: bool(v[i]) for name, v in states.items()}
                if now != self._conditions:
                    for name, value in now.items():
                        if value and not self._conditions.get(name, False):
                            self._true_since[name] = int(at)
                    self._conditions = now
                    self._step(int(at))
                elif self._hold_due(int(at)):
                    self._step(int(at))  # the frame at which a trigger's hold is satisfied
        for name, (times_, vals) in merged.items():
            # keep the window the expressions may look back at, and at least the latest sample
            cut = int(np.searchsorted(times_, times_[-1] - self._keep_ns, side="left"))
            cut = min(cut, len(times_) - 1)
            self._history[name] = (times_[cut:], vals[cut:])
        self._step(newest)

    def _hold_due(self, at_ns: int) -> bool:
        """Whether a held trigger reaches its hold at ``at_ns`` (once per time it turned true)."""
        due = False
        for trigger, _ in self._triggers:
            since = self._true_since.get(trigger.name)
            if (
                trigger.hold_ns > 0
                and since is not None
                and self._conditions.get(trigger.name, False)
                and at_ns - since >= trigger.hold_ns
            ):
                del self._true_since[trigger.name]
                due = True
        return due

    def _value(self, name: str) -> float | None:
        value = self._latest.get(name)
        return None if value is None or not math.isfinite(value) else value

    def _step(self, at_ns: int) -> None:
        if self._time_ns is not None and at_ns < self._time_ns:
            at_ns = self._time_ns
        self._time_ns = at_ns
        if not self._ready:
            self.steps_before_ready += 1
            return
        speed = self._value(SPEED)
        lights = frozenset(
            bit for name, bits in _LIGHTS.items() if (self._latest.get(name) or 0.0) >= 0.5 for bit in bits
        )
        self.station.update(
            VehicleState(
                time_ns=at_ns,
                latitude_deg=self._value(LATITUDE),
                longitude_deg=self._value(LONGITUDE),
                heading_deg=self._value(HEADING),
                speed_mps=None if speed is None else speed * self._speed_factor,
                longitudinal_acceleration_mps2=self._value(ACCELERATION),
                yaw_rate_dps=self._value(YAW),
                exterior_lights=lights,
            ),
            self._conditions,
        )

    # ------------------------------------------------------------ telemetry out

    def _emit(self, name: str, value: float | str, t_ns: int | None = None) -> None:
        if self._emitter is not None:
            self._emitter.emit(name, value, t_ns=t_ns)

    def _on_warning(self, warning: StationWarning) -> None:
        denm = warning.denm
        record = {
            "kind": warning.kind,
            "station": denm.action_id.station_id,
            "seq": denm.action_id.sequence_number,
            "cause": denm.cause_code,
            "sub_cause": denm.sub_cause_code,
            "reference_time_ms": denm.reference_time_ms,
            "latitude": denm.event_position.latitude_deg,
            "longitude": denm.event_position.longitude_deg,
            "distance_m": None if warning.distance_m is None else round(warning.distance_m, 1),
            "latency_ms": None if warning.latency_ms is None else round(warning.latency_ms, 1),
        }
        self.warnings = [*self.warnings[-31:], record]
        self._emit("Vehicle.Tcu.V2x.Warning", json.dumps(record, separators=(",", ":")), warning.received_ns)
        what = _CAUSE_NAMES.get(denm.cause_code or -1, f"cause {denm.cause_code}")
        log.info(
            "V2N warning %s: %s/%d from station %d #%d%s%s",
            warning.kind,
            what,
            denm.sub_cause_code,
            denm.action_id.station_id,
            denm.action_id.sequence_number,
            "" if warning.distance_m is None else f" {warning.distance_m:.0f} m ahead",
            ""
            if warning.latency_ms is None
            else f" ({warning.latency_ms:.0f} ms after the triggering frame)",
        )

    def _on_sent(self, item: Outgoing) -> None:
        denm = item.denm
        record = {
            "kind": item.kind,
            "trigger": item.trigger,
            "seq": denm.action_id.sequence_number,
            "cause": denm.cause_code,
            "reference_time_ms": denm.reference_time_ms,
        }
        self._emit("Vehicle.Tcu.V2x.Sent", json.dumps(record, separators=(",", ":")), self._time_ns)
        log.info("V2N: DENM %s of %s (#%d)", item.kind, item.trigger, denm.action_id.sequence_number)

    # ------------------------------------------------------------ task

    async def run(self, emit: Emitter) -> None:
        """Compile the ASN.1, then the client and a 1 s ticker (expiry, status samples) until :meth:`stop`.

        asyncio.to_thread: the compile (release 1 ~0.3 CPU-s, release 2 ~0.9) never runs on the
        event loop, which keeps decoding and batching meanwhile. The station steps once release
        1 (what is sent) is compiled; the client connects once release 2 (received too) is, so
        that no received message compiles on the loop either.
        """
        self._emitter = emit
        started = time.monotonic()
        await asyncio.to_thread(compile_release, SEND_PROTOCOL_VERSION)
        self._ready = True
        deferred = self.steps_before_ready
        await asyncio.to_thread(compile_release, 2)
        log.info(
            "V2N: ASN.1 compiled in %.2f s (in a thread); the station stepped from then, %d updates before",
            time.monotonic() - started,
            deferred,
        )
        if self._stopping.is_set():
            return
        async with asyncio.TaskGroup() as tg:
            client = self.client.start(tg, name="tcu.agent.v2x.mqtt")
            tg.create_task(self._ticker(client), name="tcu.agent.v2x.tick")

    async def _ticker(self, client: asyncio.Task[None]) -> None:
        beats = 0
        while not client.done() and not self._stopping.is_set():
            try:
                self.station.tick()
                if beats % 10 == 0:
                    self._emit("Vehicle.Tcu.V2x.Connected", 1.0 if self.client.connected.is_set() else 0.0)
                    self._emit("Vehicle.Tcu.V2x.ActiveWarnings", float(len(self.station.receiver.held)))
            except Exception:  # keep ticking; a bug is logged
                self.errors += 1
                self._ratelog.log("tick", logging.ERROR, "V2N: tick failed: %s", traceback.format_exc())
            beats += 1
            try:
                async with asyncio.timeout(1.0):
                    await self._stopping.wait()
            except TimeoutError:
                pass

    def stop(self) -> None:
        self._stopping.set()
        self.client.stop()

    def stats(self) -> dict[str, Any]:
        out = self.client.stats()
        out["denm_sent"] = dict(self.station.originator.sent)
        out["cam_reasons"] = dict(self.station.cams.reasons)
        out["receiver"] = dict(self.station.receiver.counters)
        out["warnings"] = dict(self.station.warnings_by_kind)
        out["active_warnings"] = len(self.station.receiver.held)
        out["errors"] = self.errors
        out["steps_before_ready"] = self.steps_before_ready
        return out
