"""The agent speaks the systemd notify protocol to a unix datagram socket the test owns.

READY=1 comes only once the buses, the spool and the uplink are set up; WATCHDOG=1 follows
the pipeline's progress (a stalled pipeline stops the pings while STATUS= lines, sent by the
same task, go on); STOPPING=1 on shutdown.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import can
import pytest
from agent_helpers import agent_config, wait_until
from notify_helpers import NotifySocket

from tcu.agent import Agent
from tcu.agent import notify as agent_notify
from tcu.can import open_bus
from tcu.config import BusConfig
from tcu.ingest import IngestServer
from tcu.sdnotify import Heartbeat, Notifier, NotifySettings, notify_settings


@pytest.fixture
def abstract_socket() -> Iterator[NotifySocket]:
    sock = NotifySocket(f"@tcu-test-notify-{uuid.uuid4().hex}")
    yield sock
    sock.close()


def test_settings_come_from_the_environment() -> None:
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert notify_settings(env) == NotifySettings(socket="@x", watchdog_s=2.0)
    assert notify_settings({**env, "WATCHDOG_PID": "1"}, pid=2).watchdog_s is None  # meant for a parent
    assert notify_settings({**env, "WATCHDOG_USEC": "soon"}).watchdog_s is None
    assert notify_settings({}) == NotifySettings()
    assert not Notifier(NotifySettings()).send("READY=1")  # outside systemd: nothing to do


def test_path_socket_and_a_failed_send_is_counted(tmp_path: Path) -> None:
    # sun_path is limited to 108 bytes: a short name in the temporary folder, not under tmp_path
    short = Path(tempfile.gettempdir()) / f"tcu-notify-{uuid.uuid4().hex[:8]}"
    receiver = NotifySocket(str(short))
    try:
        notifier = Notifier(NotifySettings(socket=str(short)))
        assert notifier.ready("starting") and notifier.watchdog()
        assert wait_for(lambda: len(receiver.messages) == 2)
        assert receiver.messages[0][1] == "READY=1\nSTATUS=starting"
    finally:
        receiver.close()
        short.unlink()
    assert not notifier.watchdog()  # nobody listens any more: counted and logged, not raised
    assert notifier.send_errors == 1
    notifier.close()


def test_heartbeat_is_healthy_while_waiting_or_beating() -> None:
    now = [0.0]
    beat = Heartbeat(clock=lambda: now[0])
    beat.beat()
    now[0] = 0.4
    assert beat.healthy(0.5)
    now[0] = 0.6
    assert not beat.healthy(0.5)  # busy and silent for longer than allowed: a stall
    beat.waiting("frames")
    now[0] = 100.0
    assert beat.healthy(0.5)  # idle on its input for as long as it likes


def wait_for(predicate: object, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


async def test_ready_after_set_up_watchdog_follows_the_pipeline_and_stopping(
    abstract_socket: NotifySocket,
    ingest: IngestServer,
    small_dbc: Path,
    small_mapping: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(agent_notify, "STATUS_PERIOD_S", 0.2)
    channel = f"notify-{uuid.uuid4().hex}"
    config = agent_config(channel, ingest.bound_port, small_dbc, small_mapping)
    config = replace(config, batch=replace(config.batch, max_age_ms=100))
    gate = threading.Event()

    def opener(bus: BusConfig) -> can.BusABC:
        gate.wait(10)  # the bus is slow to open: no READY=1 until it is
        return open_bus(bus)

    notifier = Notifier(NotifySettings(socket=abstract_socket.address, watchdog_s=0.8))
    agent = Agent(config, opener=opener, notifier=notifier)
    stop = asyncio.Event()
    run = asyncio.create_task(agent.run(stop))
    try:
        await asyncio.sleep(1.0)
        assert abstract_socket.lines("READY") == []
        assert abstract_socket.lines("WATCHDOG"), "the watchdog pings from the start (set-up is progress)"
        gate.set()
        await wait_until(lambda: abstract_socket.lines("READY") == ["READY=1"], 10)

        # Healthy and fed: frames flow, pings every WatchdogSec/4.
        sender = can.Bus(interface="virtual", channel=channel)
        try:
            for _ in range(20):
                sender.send(can.Message(arbitration_id=256, is_extended_id=False, data=bytes(8)))
                await asyncio.sleep(0.02)
            await wait_until(lambda: agent.stats().frames >= 20)
            await asyncio.sleep(0.5)
            assert len(abstract_socket.lines("WATCHDOG", since=time.monotonic() - 1.5)) >= 1
            assert any("frames/s" in s and "uplink" in s for s in abstract_socket.lines("STATUS"))

            # Stall the pipeline on an await that never returns: the event loop stays alive.
            stuck = asyncio.Event()

            async def stalled_flush() -> None:
                await stuck.wait()

            agent.pipeline.flush = stalled_flush  # type: ignore[method-assign]
            sender.send(can.Message(arbitration_id=256, is_extended_id=False, data=bytes(8)))
            await wait_until(lambda: agent.heartbeat.waiting_for is None and agent.heartbeat.age_s() > 0.5)
            await asyncio.sleep(0.6)  # pings that were due before the stall was seen have gone out
            stalled_since = time.monotonic()
            await asyncio.sleep(1.2)
            assert abstract_socket.lines("WATCHDOG", since=stalled_since) == []
            assert abstract_socket.lines("STATUS", since=stalled_since), "the notify task itself still runs"
            assert agent.notify is not None and agent.notify.watchdog_missed >= 3

            # Unstick it: the pings resume.
            stuck.set()
            del agent.pipeline.flush  # the next flush is the real one again
            resumed = time.monotonic()
            await wait_until(lambda: abstract_socket.lines("WATCHDOG", since=resumed), 5)
        finally:
            sender.shutdown()
        stop.set()
        await asyncio.wait_for(run, 20)
    finally:
        stop.set()
        if not run.done():
            run.cancel()
    stopping = [text for _, text in abstract_socket.messages if "STOPPING=1" in text]
    assert len(stopping) == 1 and "unacked batches" in stopping[0]
    notifier.close()


def test_tcu_agent_process_notifies_systemd(
    abstract_socket: NotifySocket, tmp_path: Path, small_dbc: Path, small_mapping: Path
) -> None:
    """The CLI reads $NOTIFY_SOCKET and $WATCHDOG_USEC: READY=1, WATCHDOG=1, STOPPING=1 (a process)."""
    import subprocess
    import sys

    from test_agent_cli import _closed_port, _stop, _write_config

    config = _write_config(
        tmp_path, small_dbc, small_mapping, port=_closed_port(), drain_s=1.0, missing_bus=False
    )
    env = {**os.environ, "NOTIFY_SOCKET": abstract_socket.address, "WATCHDOG_USEC": "1000000"}
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tcu.cli.main", "agent", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert wait_for(
            lambda: abstract_socket.lines("READY") and len(abstract_socket.lines("WATCHDOG")) >= 2, 60
        )
        _out, stderr, _took = _stop(proc, [])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    assert abstract_socket.lines("STOPPING") == ["STOPPING=1"]
    assert "READY=1 sent to systemd" in stderr
