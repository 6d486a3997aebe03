"""Samples dated before 2000 or in the future are stored but flagged: counted per vehicle, logged, scraped."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tcu.ingest import IngestConfig
from tcu.ingest.metrics import RpcCounter, ingest_snapshot


async def test_samples_dated_1970_are_counted_per_vehicle(
    config: IngestConfig, kit: Any, caplog: pytest.LogCaptureFixture
) -> None:
    running = await kit.start(config)
    try:
        call = await running.open_upload("veh-old")
        # a replayed ASC without its time base: dated 5 s after the epoch
        await call.write(kit.batch("veh-old", 1, base_ns=5_000_000_000, speed=[(0, 1.0), (10, 2.0)]))
        with caplog.at_level(logging.WARNING, logger="tcu.ingest"):
            assert not (await kit.ack_of(call)).duplicate  # kept (the samples are real), not refused
            await call.write(kit.batch("veh-old", 2))  # plausible times: not counted
            await kit.ack_of(call)
        await call.done_writing()
        other = await running.open_upload("veh-ok")
        await other.write(kit.batch("veh-ok", 1))
        await kit.ack_of(other)
        await other.done_writing()
        assert running.server.implausible_times == {"veh-old": 2}
        assert "veh-old" in caplog.text and "before 2000" in caplog.text
        families = {f.name: f for f in ingest_snapshot(running.server, RpcCounter())}
        family = next(f for name, f in families.items() if name.endswith("samples_implausible_time"))
        assert [(tuple(labels), value) for labels, value in family.samples] == [(("veh-old",), 2.0)]
    finally:
        await kit.finish(running)
