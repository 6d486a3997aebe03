"""The agent under systemd: READY=1 once set up, WATCHDOG=1 from the pipeline's progress, STATUS=.

:class:`AgentNotify` runs as the task ``tcu.agent.notify`` of the agent's TaskGroup:

* ``READY=1`` once the spool is open (the agent's constructor), every bus has been opened
  or has had its first open attempt fail (it is then retried in the background: a bus that
  is down must not keep the service from starting), and the uplink task runs (its first
  connect attempt under way; a parked car's link may well be down).
* ``WATCHDOG=1`` every ``WatchdogSec/4`` while the pipeline is healthy: it made progress
  within the last ``WatchdogSec/2``, or it is waiting for its input (no frames) or for room
  in a full in-memory outbox (the uplink's condition, shown in ``STATUS=``). A pipeline stuck
  anywhere else stops the pings, although this task (and the event loop) still runs; systemd
  then restarts the agent. The first missed ping is logged at ERROR.
* ``STATUS=`` every few seconds: frames/s, buses up, batches unacked (and spool bytes),
  the uplink's state and acked seq.
* ``STOPPING=1`` when the agent begins to stop.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from tcu.agent.outbox import SpoolOutbox
from tcu.sdnotify import Heartbeat, Notifier

if TYPE_CHECKING:
    from tcu.agent.app import Agent

__all__ = ["AgentNotify", "status_line"]

log = logging.getLogger(__name__)

STATUS_PERIOD_S = 5.0


def status_line(agent: Agent, frames_per_s: float) -> str:
    """What ``systemctl status`` shows: ``1234 frames/s, 2/2 buses up, 3 batches unacked ...``."""
    stats = agent.stats()
    parts = [
        f"{frames_per_s:.0f} frames/s",
        f"{len(agent.readers) - stats.buses_down}/{len(agent.readers)} buses up",
    ]
    spool = f"{stats.batches_unacked} batches unacked"
    if isinstance(agent.outbox, SpoolOutbox):
        try:
            spool += f" ({agent.outbox.spool.stats().bytes / 1e6:.1f} MB in the spool)"
        except Exception as exc:  # the status line must not fail the task; the spool logs its own errors
            spool += f" (spool: {type(exc).__name__})"
    parts.append(spool)
    up = agent.uplink.stats
    if up.connected:
        parts.append(f"uplink connected to {agent.config.uplink.target}, acked seq {up.acked_seq}")
    else:
        reason = f": {up.last_error[:80]}" if up.last_error else ""
        parts.append(f"uplink down (attempt {up.backoff_attempt}){reason}, acked seq {up.acked_seq}")
    return "; ".join(parts)


class AgentNotify:
    """Drives :class:`~tcu.sdnotify.Notifier` from the agent's state; see the module text."""

    def __init__(self, agent: Agent, notifier: Notifier, heartbeat: Heartbeat) -> None:
        self.agent = agent
        self.notifier = notifier
        self.heartbeat = heartbeat
        self.ready = False
        self.watchdog_pings = 0
        self.watchdog_missed = 0
        """Ping periods skipped because the pipeline was not healthy."""

    def set_up(self) -> bool:
        """Every bus opened or its first attempt failed (being retried)."""
        return all(r.opened or r.stats.open_failures > 0 for r in self.agent.readers)

    async def run(self, uplink: asyncio.Task[None]) -> None:
        loop = asyncio.get_running_loop()
        watchdog_s = self.notifier.watchdog_s
        tick = min(0.25, watchdog_s / 4) if watchdog_s else 0.25
        max_age = watchdog_s / 2 if watchdog_s else 0.0
        frames = self.agent.stats().frames
        last_status = last_ping = loop.time()
        stalled = False
        while True:
            now = loop.time()
            if not self.ready and self.set_up() and not uplink.done():
                self.ready = True
                self.notifier.ready(status_line(self.agent, 0.0))
                log.info("agent: set up (buses, spool, uplink): READY=1 sent to systemd")
            if watchdog_s and now - last_ping >= watchdog_s / 4:
                last_ping = now
                if self.heartbeat.healthy(max_age):
                    if stalled:
                        log.warning("agent: the pipeline makes progress again; watchdog pings resume")
                        stalled = False
                    self.notifier.watchdog()
                    self.watchdog_pings += 1
                else:
                    self.watchdog_missed += 1
                    if not stalled:
                        log.error(
                            "agent: the pipeline made no progress for %.1f s (WatchdogSec/2 is %.1f s):"
                            " not pinging the systemd watchdog",
                            self.heartbeat.age_s(),
                            max_age,
                        )
                        stalled = True
            if self.ready and now - last_status >= STATUS_PERIOD_S:
                current = self.agent.stats().frames
                try:
                    self.notifier.status(status_line(self.agent, (current - frames) / (now - last_status)))
                except Exception:  # a bug in the status text must not end the agent's TaskGroup
                    log.exception("agent: cannot build the systemd STATUS= line")
                frames, last_status = current, now
            await asyncio.sleep(tick)

    def stopping(self) -> None:
        self.notifier.stopping(f"stopping: draining {self.agent.outbox.unacked()} unacked batches")
