"""CAN frames from the vehicle model: a cyclic scheduler over a DBC.

Every message with a ``GenMsgCycleTime`` is sent at that cycle, shifted by a
fixed per-message phase (``3 ms × its index in the DBC, modulo the cycle``).
Simulated time starts at ``start_epoch_us`` (default: the wall clock when the
drive starts, in whole µs), so frame ``k`` of a message is stamped
``start_us + phase_us + k × cycle_us``; timestamps are whole microseconds.
A multiplexed message cycles through its multiplexer values, one per frame.

Each signal's physical value is quantised to the raw grid and clamped to the
DBC range (and the raw bit range) before encoding with
``Message.encode(..., scaling=True, strict=True)``; the quantised value, which
is exactly what decoding the frame gives back, goes to the ground truth.

:meth:`Drive.frames` yields frames in time order as fast as they can be
computed; :meth:`Drive.batches` paces them by ``speed`` (``None`` for as fast
as possible, in batches); :meth:`Drive.run` sends them to any ``can.BusABC``.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import can
import cantools

from sim.groundtruth import GroundTruth, GroundTruthRecorder
from sim.route import Route, metz_luxembourg_trier
from sim.vehicle import Vehicle, VehicleConfig
from tcu.errors import BusError, ConfigError, DbcError

__all__ = ["DEFAULT_DBC_PATH", "DEFAULT_MAPPING_PATH", "Drive", "DriveConfig", "DriveSummary"]

log = logging.getLogger(__name__)

DEFAULT_DBC_PATH = Path(__file__).resolve().parent / "data" / "tcu_sim.dbc"
DEFAULT_MAPPING_PATH = Path(__file__).resolve().parent / "data" / "tcu_sim_vss.toml"

_PHASE_STEP_MS = 3
_MAX_BATCH = 512


@dataclass(frozen=True, slots=True)
class DriveConfig:
    """What to drive and how fast.

    ``speed``: 1.0 is real time, 10.0 ten times faster, ``None`` as fast as possible.
    ``start_epoch_us``: simulated time zero; ``None`` takes the wall clock when the drive starts.
    """

    duration_s: float = 60.0
    seed: int = 0
    speed: float | None = 1.0
    start_epoch_us: int | None = None
    dbc_path: Path = DEFAULT_DBC_PATH
    channel: str = "can0"
    route: Route | None = None
    vehicle: VehicleConfig | None = None
    skip_messages: frozenset[str] = frozenset()  # DBC messages not to send (default: send every cyclic one)

    def __post_init__(self) -> None:
        if not self.duration_s > 0:
            raise ConfigError(f"must be > 0, got {self.duration_s}", key="duration_s")
        if self.speed is not None and not self.speed > 0:
            raise ConfigError(f"must be > 0 or None (as fast as possible), got {self.speed}", key="speed")


@dataclass(frozen=True, slots=True)
class DriveSummary:
    frames: int
    start_us: int
    end_us: int
    interrupted: bool


@dataclass(slots=True)
class _SignalCodec:
    name: str
    scale: Any  # int or float, exactly as cantools holds it
    offset: Any
    raw_lo: int
    raw_hi: int


@dataclass(slots=True)
class _MessagePlan:
    message: Any  # cantools Message
    arbitration_id: int
    is_extended_id: bool
    cycle_us: int
    phase_us: int
    # one signal list per frame variant (multiplexed messages cycle through their mux values)
    variants: list[tuple[tuple[str, float] | None, list[_SignalCodec]]]
    count: int = 0


def _codec(signal: Any, where: str) -> _SignalCodec:
    conv = signal.conversion
    scale, offset = conv.scale, conv.offset
    if signal.is_float:
        raise DbcError(f"{where}: float signals are not supported by the simulator")
    if signal.is_signed:
        bit_lo, bit_hi = -(1 << (signal.length - 1)), (1 << (signal.length - 1)) - 1
    else:
        bit_lo, bit_hi = 0, (1 << signal.length) - 1
    lo, hi = bit_lo, bit_hi
    if signal.minimum is not None:
        lo = max(lo, math.ceil((signal.minimum - offset) / scale - 1e-9))
        while lo * scale + offset < signal.minimum - abs(scale) * 1e-7:
            lo += 1
    if signal.maximum is not None:
        hi = min(hi, math.floor((signal.maximum - offset) / scale + 1e-9))
        while hi * scale + offset > signal.maximum + abs(scale) * 1e-7:
            hi -= 1
    if scale < 0:
        raise DbcError(f"{where}: negative scale {scale} is not supported by the simulator")
    if lo > hi:
        raise DbcError(f"{where}: range [{signal.minimum}, {signal.maximum}] holds no raw value")
    return _SignalCodec(signal.name, scale, offset, lo, hi)


def _load_plans(dbc_path: Path) -> tuple[Any, list[_MessagePlan]]:
    try:
        db = cantools.database.load_file(str(dbc_path), database_format="dbc", strict=True)
    except (OSError, cantools.database.errors.Error, ValueError) as exc:
        raise DbcError(f"cannot load DBC: {exc}", path=str(dbc_path)) from exc
    if not isinstance(db, cantools.database.can.Database):
        raise DbcError("not a CAN database", path=str(dbc_path))
    plans: list[_MessagePlan] = []
    for index, message in enumerate(db.messages):
        cycle_ms = message.cycle_time
        if not cycle_ms:
            log.info("%s: message %s has no GenMsgCycleTime, not sent", dbc_path, message.name)
            continue
        where = f"{dbc_path}: {message.name}"
        mux_names = [s.name for s in message.signals if s.is_multiplexer]
        if len(mux_names) > 1:
            raise DbcError(f"{where}: more than one multiplexer is not supported by the simulator")
        variants: list[tuple[tuple[str, float] | None, list[_SignalCodec]]] = []
        if mux_names:
            mux = mux_names[0]
            mux_values = sorted({v for s in message.signals for v in (s.multiplexer_ids or [])})
            for mux_value in mux_values:
                names = [mux] + [
                    s.name for s in message.signals if s.multiplexer_ids and mux_value in s.multiplexer_ids
                ]
                names += [s.name for s in message.signals if not s.is_multiplexer and not s.multiplexer_ids]
                codecs = [_codec(message.get_signal_by_name(n), f"{where}.{n}") for n in names]
                variants.append(((mux, float(mux_value)), codecs))
        else:
            variants.append((None, [_codec(s, f"{where}.{s.name}") for s in message.signals]))
        plans.append(
            _MessagePlan(
                message=message,
                arbitration_id=message.frame_id,
                is_extended_id=message.is_extended_frame,
                cycle_us=int(cycle_ms) * 1000,
                phase_us=(_PHASE_STEP_MS * index) % int(cycle_ms) * 1000,
                variants=variants,
            )
        )
    return db, plans


class Drive:
    """One simulated drive: vehicle model → cyclic CAN frames → ground truth.

    A drive runs once; :meth:`frames`, :meth:`batches` and :meth:`run` are
    three ways to consume it.
    """

    def __init__(self, config: DriveConfig | None = None) -> None:
        self.config = config = config or DriveConfig()
        self.database, self._plans = _load_plans(config.dbc_path)
        if config.skip_messages:
            unknown = config.skip_messages - {p.message.name for p in self._plans}
            if unknown:
                raise ConfigError(
                    f"no cyclic messages {sorted(unknown)} in {config.dbc_path}", key="skip_messages"
                )
            self._plans = [p for p in self._plans if p.message.name not in config.skip_messages]
        self.route = config.route or metz_luxembourg_trier()
        self._started = False
        self._recorder: GroundTruthRecorder | None = None
        self.vehicle: Vehicle | None = None

    @property
    def start_us(self) -> int | None:
        return self._recorder.start_us if self._recorder else None

    @property
    def frames_sent(self) -> int:
        return self._recorder.frames if self._recorder else 0

    def _start(self) -> tuple[int, Vehicle, GroundTruthRecorder]:
        if self._started:
            raise BusError("a Drive runs once; create a new Drive to drive again")
        self._started = True
        start_us = self.config.start_epoch_us
        if start_us is None:
            start_us = (time.time_ns() + 500) // 1000
        vehicle_config = dataclasses.replace(
            self.config.vehicle or VehicleConfig(), seed=self.config.seed, start_epoch_us=start_us
        )
        self.vehicle = Vehicle(self.route, vehicle_config)
        self._recorder = GroundTruthRecorder(start_us)
        return start_us, self.vehicle, self._recorder

    def frames(self) -> Iterator[can.Message]:
        """Every frame of the drive in time order (ties by DBC order), unpaced; records ground truth."""
        start_us, vehicle, recorder = self._start()
        duration_us = round(self.config.duration_s * 1e6)
        step_us = vehicle.config.step_ms * 1000
        heap = [(p.phase_us, i) for i, p in enumerate(self._plans) if p.phase_us < duration_us]
        heapq.heapify(heap)
        channel = self.config.channel
        while heap:
            rel_us, i = heapq.heappop(heap)
            plan = self._plans[i]
            while (vehicle.steps + 1) * step_us <= rel_us:
                vehicle.step()
            values = vehicle.signals()
            mux, codecs = plan.variants[plan.count % len(plan.variants)]
            plan.count += 1
            payload: dict[str, float] = {}
            quantised: list[float] = []
            for c in codecs:
                x = mux[1] if mux is not None and c.name == mux[0] else values[c.name]
                raw = round((x - c.offset) / c.scale)
                raw = c.raw_lo if raw < c.raw_lo else c.raw_hi if raw > c.raw_hi else raw
                q = float(raw * c.scale + c.offset)
                payload[c.name] = q
                quantised.append(q)
            data = plan.message.encode(payload, scaling=True, strict=True)
            t_us = start_us + rel_us
            recorder.add_frame(
                t_us,
                plan.arbitration_id,
                data,
                message=plan.message.name,
                signals=[c.name for c in codecs],
                values=quantised,
            )
            yield can.Message(
                timestamp=t_us / 1e6,
                arbitration_id=plan.arbitration_id,
                is_extended_id=plan.is_extended_id,
                data=data,
                channel=channel,
                check=False,
            )
            nxt = rel_us + plan.cycle_us
            if nxt < duration_us:
                heapq.heappush(heap, (nxt, i))

    def batches(self, stop: threading.Event | None = None) -> Iterator[list[can.Message]]:
        """Frames in batches, paced by ``config.speed`` against the monotonic clock.

        With a speed factor a batch holds the frames that are due; with ``None`` batches
        of up to 512 frames follow each other without waiting. Stops early when ``stop`` is
        set; the ground truth then holds exactly the frames of the batches handed out.
        """
        speed = self.config.speed
        batch: list[can.Message] = []
        wall0 = time.monotonic()
        start_us: int | None = None
        handed_out = 0
        for msg in self.frames():
            if stop is not None and stop.is_set():
                assert self._recorder is not None
                self._recorder.drop_last(self._recorder.frames - handed_out)
                return
            if start_us is None:
                start_us = self.start_us
                assert start_us is not None
            if speed is None:
                batch.append(msg)
                if len(batch) >= _MAX_BATCH:
                    handed_out += len(batch)
                    yield batch
                    batch = []
                continue
            due = wall0 + (round(msg.timestamp * 1e6) - start_us) / 1e6 / speed
            delay = due - time.monotonic()
            if delay > 0:
                if batch:
                    handed_out += len(batch)
                    yield batch
                    batch = []
                if stop is not None:
                    if stop.wait(delay):
                        assert self._recorder is not None
                        self._recorder.drop_last(self._recorder.frames - handed_out)
                        return
                else:
                    time.sleep(delay)
            batch.append(msg)
        if batch:
            yield batch

    def run(self, bus: can.BusABC, stop: threading.Event | None = None) -> DriveSummary:
        """Send the whole drive to ``bus`` (paced by ``config.speed``) and return a summary."""
        interrupted = False
        try:
            for batch in self.batches(stop):
                for msg in batch:
                    bus.send(msg)
        except can.CanError as exc:
            raise BusError(f"sending to {bus.channel_info} failed: {exc}") from exc
        if stop is not None and stop.is_set():
            interrupted = True
        return self.summary(interrupted=interrupted)

    def summary(self, *, interrupted: bool = False) -> DriveSummary:
        gt = self.ground_truth()
        return DriveSummary(frames=gt.frames, start_us=gt.start_us, end_us=gt.end_us, interrupted=interrupted)

    def ground_truth(self) -> GroundTruth:
        if self._recorder is None:
            raise BusError("the drive has not started")
        return self._recorder.to_ground_truth()

    def save_ground_truth(self, path: str | Path) -> Path:
        """Write the ground truth of the frames produced so far (``.npz``).

        After a stop (see :meth:`batches`) these are the frames handed out; after a failed
        send they include the batch whose sending failed.
        """
        if self._recorder is None:
            raise BusError("the drive has not started")
        return self._recorder.save(path)
