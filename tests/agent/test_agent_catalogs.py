"""Spooled batches of an older catalog are delivered after the DBC or mapping changed.

An agent spools batches while the ingest is unreachable and stops; the next agent on the same
spool runs with another mapping (a new catalog id). It announces the old catalog (kept in
``<spool>/catalogs/``) in ``Hello.previous_catalogs``, the ingest stores every batch of both
catalogs under its own names and units, and the old catalog's file goes once the spool is empty.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from agent_helpers import START_NS, agent_config, drive, make_frames, stored_series, wait_until
from loopback import free_port

from tcu.agent import Agent
from tcu.agent.catalogs import CatalogFiles
from tcu.agent.outbox import SpoolOutbox
from tcu.config import AgentConfig, SpoolSettings, UplinkConfig
from tcu.demo.verify import Expected, expected_samples, verify_store
from tcu.ingest import IngestConfig, IngestServer
from tcu.signals.dbc import load_dbc
from tcu.signals.mapping import Catalog

VEHICLE = "WTCUTEST000000001"

# The update: the gear is mapped too (first, so every other signal id moves), and the odometer
# gets another VSS name and unit.
UPDATED_MAPPING = """version = 1

[[signal]]
name = "Vehicle.Powertrain.Transmission.CurrentGear"
message = "Dyn"
signal = "Gear"
period_ms = 100

[[signal]]
name = "Vehicle.Speed"
message = "Dyn"
signal = "Speed"
period_ms = 100

[[signal]]
name = "Vehicle.Acceleration.Longitudinal"
message = "Dyn"
signal = "Accel"
period_ms = 50

[[signal]]
name = "Vehicle.OBD.Odometer"
message = "Ext"
signal = "Odometer"
unit = "kilometer"
period_ms = 1000

[[signal]]
name = "Vehicle.Chassis.Axle.Row1.Wheel.Left.Tire.Pressure"
message = "Mux"
signal = "PressFL"
period_ms = 100

[[signal]]
name = "Vehicle.Chassis.Axle.Row1.Wheel.Right.Tire.Pressure"
message = "Mux"
signal = "PressFR"
period_ms = 100
"""


def _config(tmp_path: Path, channel: str, port: int, dbc: Path, mapping: Path) -> AgentConfig:
    return dataclasses.replace(
        agent_config(channel, port, dbc, mapping),
        spool=SpoolSettings(directory=tmp_path / "spool", durability="power-loss"),
        uplink=UplinkConfig(
            target=f"127.0.0.1:{port}",
            insecure=True,
            backoff_initial_s=0.05,
            backoff_max_s=0.3,
            drain_timeout_s=0.5,
        ),
    )


def _rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _before(truth: dict[str, Any], t_ns: int, *, after: bool = False) -> dict[str, Any]:
    out = {}
    for key, (t, v) in truth.items():
        keep = t >= t_ns if after else t < t_ns
        out[key] = (t[keep], v[keep])
    return out


async def test_spooled_batches_of_the_old_catalog_are_stored_after_a_mapping_update(
    tmp_path: Path, small_dbc: Path, small_mapping: Path
) -> None:
    updated = tmp_path / "updated_vss.toml"
    updated.write_text(UPDATED_MAPPING)
    port = free_port()  # nothing listens yet: the link is down
    channel = f"tcu-test-{uuid.uuid4().hex}"
    db = load_dbc(small_dbc)
    frames, truth = make_frames(db, seconds=4.0)
    # Split on a whole second: no sampling window (50 ms .. 1 s) spans both lives.
    split_ns = START_NS + 2_000_000_000
    cut = next(i for i, m in enumerate(frames) if round(m.timestamp * 1e6) * 1000 >= split_ns)

    # First life, mapping M1: offline the whole time, stopped with every batch unacked.
    first = Agent(_config(tmp_path, channel, port, small_dbc, small_mapping))
    old_id = first.catalog.catalog_id
    old_file = tmp_path / "spool" / "catalogs" / f"{old_id}.pb"
    assert old_file.exists()  # written before the first batch was spooled
    stop = asyncio.Event()
    task = asyncio.create_task(first.run(stop))
    await drive(first, channel, frames[:cut])
    stop.set()
    final = await asyncio.wait_for(task, 30)
    assert final.batches_built >= 1 and final.batches_unacked == final.batches_built

    # The update, then the link comes back: the second life runs mapping M2 on the same spool.
    server = IngestServer(
        IngestConfig(insecure=True, listen=f"127.0.0.1:{port}", db_path=tmp_path / "ingest.sqlite")
    )
    await server.start()
    try:
        second = Agent(_config(tmp_path, channel, port, small_dbc, updated))
        new_id = second.catalog.catalog_id
        assert new_id != old_id
        assert [c.catalog_id for c in second.hello().previous_catalogs] == [old_id]
        stop2 = asyncio.Event()
        task2 = asyncio.create_task(second.run(stop2))
        await drive(second, channel, frames[cut:])
        await wait_until(lambda: second.outbox.unacked() == 0)
        stop2.set()
        await asyncio.wait_for(task2, 30)
        stored = await stored_series(port, VEHICLE)
    finally:
        await server.stop(1.0)

    # The old catalog's file went when the spool emptied; the new one stays.
    assert not old_file.exists()
    assert sorted(p.name for p in old_file.parent.iterdir()) == [f"{new_id}.pb"]
    assert list(second.hello().previous_catalogs) == []

    ingest_db = tmp_path / "ingest.sqlite"
    built = {old_id: final.batches_built, new_id: second.stats().batches_built}
    assert dict(_rows(ingest_db, "SELECT catalog_id, count(*) FROM batches GROUP BY catalog_id")) == built
    assert _rows(ingest_db, "SELECT count(*) FROM quarantine") == [(0,)]
    # Each catalog is stored with its own names and units.
    for agent in (first, second):
        assert _rows(
            ingest_db,
            "SELECT signal_id, name, unit FROM catalog_signals"
            f" WHERE catalog_id = '{agent.catalog.catalog_id}' ORDER BY signal_id",
        ) == [(s.signal_id, s.name, s.unit) for s in agent.catalog.signals]

    # Every sample of both lives, under the name its catalog gave it, with the encoded values.
    expected: dict[str, Any] = {}
    for part, agent in ((_before(truth, split_ns), first), (_before(truth, split_ns, after=True), second)):
        for name, (t, v) in expected_samples(part, agent.catalog).series.items():
            t0, v0 = expected.get(name, (t[:0], v[:0]))
            expected[name] = (np.concatenate([t0, t]), np.concatenate([v0, v]))
    can_names = {s.name for a in (first, second) for s in a.catalog.signals if not s.origin}
    stored = {name: series for name, series in stored.items() if name in can_names}
    assert {"Vehicle.TraveledDistance", "Vehicle.OBD.Odometer"} <= stored.keys()
    assert len(stored["Vehicle.TraveledDistance"][0]) and len(stored["Vehicle.OBD.Odometer"][0])
    both = Catalog((*first.catalog.signals, *second.catalog.signals), "both")
    expected = {name: series for name, series in expected.items() if name in can_names}
    result = verify_store(Expected(expected), stored, both)
    assert result.samples_expected > 0
    assert (result.samples_lost, result.samples_unexpected, result.value_errors) == (0, 0, 0)


def _spool_one_batch(config: AgentConfig) -> Agent:
    agent = Agent(config)
    agent.outbox.append(b"", priority=0, created_ns=1)
    _close(agent)
    return agent


def _close(agent: Agent) -> None:
    assert isinstance(agent.outbox, SpoolOutbox)
    agent.outbox.spool.close()


def test_catalog_files_of_an_empty_spool_are_removed_at_start(
    tmp_path: Path, small_dbc: Path, small_mapping: Path
) -> None:
    updated = tmp_path / "updated_vss.toml"
    updated.write_text(UPDATED_MAPPING)
    first = Agent(_config(tmp_path, "unused", 1, small_dbc, small_mapping))
    _close(first)
    catalogs = tmp_path / "spool" / "catalogs"
    assert [p.name for p in catalogs.iterdir()] == [f"{first.catalog.catalog_id}.pb"]

    second = Agent(_config(tmp_path, "unused", 1, small_dbc, updated))  # nothing unacked
    assert list(second.hello().previous_catalogs) == []
    assert [p.name for p in catalogs.iterdir()] == [f"{second.catalog.catalog_id}.pb"]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other-catalog"])
def test_a_corrupt_catalog_file_is_reported_and_skipped(
    tmp_path: Path, small_dbc: Path, small_mapping: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    updated = tmp_path / "updated_vss.toml"
    updated.write_text(UPDATED_MAPPING)
    first = _spool_one_batch(_config(tmp_path, "unused", 1, small_dbc, small_mapping))
    path = tmp_path / "spool" / "catalogs" / f"{first.catalog.catalog_id}.pb"
    data = path.read_bytes()
    reason = {
        "garbage": "not a SignalCatalog",
        "truncated": "damaged or truncated",
        "other-catalog": "it holds catalog",
    }[damage]
    if damage == "garbage":
        path.write_bytes(b"\xff" * 40)
    elif damage == "truncated":
        # Cut after a whole signal: it still parses, but it is not the catalog its id names.
        kept = CatalogFiles(path.parent).load()[first.catalog.catalog_id]
        del kept.signals[-1]
        path.write_bytes(kept.SerializeToString())
        assert len(path.read_bytes()) < len(data)
    else:
        other = CatalogFiles(path.parent).load()[first.catalog.catalog_id]
        other.catalog_id = "0123456789abcdef"
        path.write_bytes(other.SerializeToString())

    with caplog.at_level(logging.ERROR, logger="tcu.agent.catalogs"):
        second = Agent(_config(tmp_path, "unused", 1, small_dbc, updated))
    assert list(second.hello().previous_catalogs) == []
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert str(path) in errors[0] and reason in errors[0]
    assert "the ingest will quarantine them undecoded" in errors[0]
    # The current catalog is still written; the damaged file is left for inspection.
    assert (path.parent / f"{second.catalog.catalog_id}.pb").exists()
    assert path.exists()
    _close(second)


def test_catalog_files_round_trip_and_removal(tmp_path: Path, small_dbc: Path, small_mapping: Path) -> None:
    agent = Agent(_config(tmp_path, "unused", 1, small_dbc, small_mapping))
    _close(agent)
    files = CatalogFiles(tmp_path / "other")
    assert files.load() == {}
    files.save(agent.hello().catalog)
    assert files.load() == {agent.catalog.catalog_id: agent.hello().catalog}
    assert files.remove_except("none") == [agent.catalog.catalog_id]
    assert files.load() == {}


async def test_a_catalog_that_cannot_be_written_is_retried_before_the_next_batch(
    tmp_path: Path, small_dbc: Path, small_mapping: Path, caplog: pytest.LogCaptureFixture
) -> None:
    catalogs = tmp_path / "spool" / "catalogs"
    catalogs.parent.mkdir()
    catalogs.write_text("in the way")  # not a directory: the catalog cannot be written
    with caplog.at_level(logging.ERROR, logger="tcu.agent.app"):
        agent = Agent(_config(tmp_path, "unused", 1, small_dbc, small_mapping))
        await agent._append(b"", priority=0)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "cannot write catalog file" in errors[0] and str(catalogs) in errors[0]
    assert agent.outbox.unacked() == 1  # the batch is spooled anyway

    catalogs.unlink()
    await agent._append(b"", priority=0)
    assert [p.name for p in catalogs.iterdir()] == [f"{agent.catalog.catalog_id}.pb"]
    _close(agent)
