"""Helpers shared by the agent tests: frames with ground truth, a config, a driver."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import can
import grpc
import numpy as np

from tcu.agent import Agent
from tcu.config import AgentConfig, BusConfig, UplinkConfig
from tcu.fleet_client import query_series, series_pairs

START_NS = 1_763_800_000_000_000_000


def make_frames(
    db: Any, seconds: float
) -> tuple[list[can.Message], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Frames of the small DBC with µs timestamps, and the ground truth of what was encoded."""
    frames: list[can.Message] = []
    truth: dict[str, tuple[list[int], list[float]]] = {}

    def put(t_us: int, name: str, values: dict[str, float]) -> None:
        msg = db.get_message_by_name(name)
        data = msg.encode(values)
        decoded = msg.decode(data, decode_choices=False)
        frames.append(
            can.Message(
                timestamp=t_us / 1e6,
                arbitration_id=msg.frame_id,
                is_extended_id=msg.is_extended_frame,
                data=data,
            )
        )
        for sig, value in decoded.items():
            t, v = truth.setdefault(f"{name}.{sig}", ([], []))
            t.append(t_us)
            v.append(float(value))

    t0_us = START_NS // 1000
    for i in range(int(seconds * 100)):  # 10 ms steps
        t_us = t0_us + i * 10_000 + 137
        put(t_us, "Dyn", {"Speed": 20 + i * 0.37 % 100, "Accel": -3 + (i % 60) * 0.1, "Gear": i % 7})
        if i % 5 == 0:
            sel = (i // 5) % 2
            put(t_us + 2_000, "Mux", {"Sel": sel, "PressFL" if sel == 0 else "PressFR": 230 + 2 * (i % 10)})
        if i % 10 == 0:
            put(t_us + 4_000, "Ext", {"Odometer": 1000 + i * 0.1})
    frames.sort(key=lambda m: m.timestamp)
    gt = {k: (np.array(t, np.int64) * 1000, np.array(v, np.float64)) for k, (t, v) in truth.items()}
    return frames, gt


def agent_config(channel: str, port: int, dbc: Path, mapping: Path) -> AgentConfig:
    return AgentConfig(
        vehicle_id="WTCUTEST000000001",
        buses=(BusConfig(name="can0", interface="virtual", channel=channel, dbc=(dbc,)),),
        mapping=mapping,
        uplink=UplinkConfig(
            target=f"127.0.0.1:{port}", insecure=True, backoff_initial_s=0.05, backoff_max_s=0.5
        ),
    )


async def stored_series(port: int, vehicle_id: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        return series_pairs(await query_series(channel, vehicle_id))


async def wait_until(predicate: Any, timeout_s: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def drive(agent: Agent, channel: str, frames: list[can.Message], *, midway: Any = None) -> None:
    await wait_until(lambda: all(r.opened for r in agent.readers))
    sender = can.Bus(interface="virtual", channel=channel, preserve_timestamps=True)
    try:
        for i, msg in enumerate(frames):
            sender.send(msg)
            if i % 200 == 0:
                await asyncio.sleep(0)  # let the agent run
            if midway is not None and i == len(frames) // 2:
                await midway()
        await wait_until(lambda: agent.stats().frames >= len(frames))
    finally:
        sender.shutdown()
