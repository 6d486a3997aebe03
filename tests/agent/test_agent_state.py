"""The state directory: without a ``[spool]`` section the agent spools to ``<state>/spool`` with
power-loss durability, so batches survive a kill; a second agent on the same state directory is
refused with the pid holding the lock; turning the spool off is explicit and logged."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import grpc
import pytest

from tcu.agent.app import open_outbox
from tcu.api.v1 import fleet_pb2 as fleet_pb
from tcu.api.v1 import fleet_pb2_grpc as fleet_grpc
from tcu.config import load_agent_config
from tcu.ingest import IngestServer
from tcu.uplink import MemoryOutbox

VIN = "WTCUSTATE00000001"
VIRTUAL = 'interface = "virtual"\nchannel = "x"'


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(
    tmp_path: Path, name: str, dbc: Path, mapping: Path, *, port: int, bus: str, extra: str = ""
) -> Path:
    """An agent config with no [spool] and no [state]: the state directory comes from the env."""
    path = tmp_path / f"{name}.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [vehicle]
            id = "{VIN}"

            [[bus]]
            name = "can0"
            {bus}
            dbc = ["{dbc}"]

            [signals]
            mapping = "{mapping}"

            [uplink]
            target = "127.0.0.1:{port}"
            insecure = true
            connect_timeout_s = 1
            backoff_initial_s = 0.1
            backoff_max_s = 0.5
            drain_timeout_s = 0.5

            [batch]
            max_age_ms = 100
            """
        )
        + extra
    )
    return path


def _start(config: Path, state: Path, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "STATE_DIRECTORY": str(state)}
    return subprocess.Popen(
        [sys.executable, "-m", "tcu.cli.main", "agent", "--config", str(config), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_unacked(proc: subprocess.Popen[str], stats: Path, at_least: int, timeout_s: float = 30.0) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no batches piled up unacked"
        try:
            unacked = int(json.loads(stats.read_text() or "{}").get("batches_unacked", 0))
        except (OSError, ValueError):
            unacked = 0
        if unacked >= at_least:
            return unacked
        time.sleep(0.1)


async def _batches_stored(port: int) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await fleet_grpc.FleetStub(channel).ListVehicles(fleet_pb.ListVehiclesRequest())
    return sum(v.batches for v in reply.vehicles if v.vehicle_id == VIN)


async def test_without_a_spool_section_batches_survive_a_kill_in_the_default_state_directory(
    tmp_path: Path, small_dbc: Path, small_mapping: Path, ingest: IngestServer
) -> None:
    state = tmp_path / "state"  # what systemd's StateDirectory= hands over as $STATE_DIRECTORY
    log = tmp_path / "drive.log"
    t0 = 1_763_800_000.0
    log.write_text("".join(f"({t0 + i / 100:.6f}) can0 100#1027000003000000\n" for i in range(1500)))
    offline = _config(
        tmp_path,
        "offline",
        small_dbc,
        small_mapping,
        port=_closed_port(),
        bus=f'interface = "replay"\nchannel = "{log}"',
    )
    stats = tmp_path / "stats.json"
    first = _start(offline, state, "--stats-file", str(stats))
    try:
        unacked = await asyncio.to_thread(_wait_unacked, first, stats, 3)
        # While it runs, a second agent on the same state directory is refused, naming the pid.
        second = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "tcu.cli.main", "agent", "--config", str(offline)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "STATE_DIRECTORY": str(state)},
            check=False,
        )
        assert second.returncode == 1, second.stderr
        assert f"{state / 'spool' / 'LOCK'}" in second.stderr, second.stderr
        assert f"pid {first.pid}" in second.stderr, second.stderr
        first.send_signal(signal.SIGKILL)  # no drain, no clean close: what is spooled must stay
        _out, err = first.communicate(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert f"spool: no [spool] section: the default {state / 'spool'} (power-loss durability)" in err, err
    assert (state / "spool" / "LOCK").exists() and any((state / "spool").glob("*.log")), sorted(
        p.name for p in (state / "spool").iterdir()
    )
    assert await _batches_stored(ingest.bound_port) == 0

    # The next start (the ingest reachable now) finds them and delivers them.
    online = _config(
        tmp_path,
        "online",
        small_dbc,
        small_mapping,
        port=ingest.bound_port,
        bus=VIRTUAL,
    )
    again = _start(online, state)
    try:
        deadline = time.monotonic() + 30
        while (stored := await _batches_stored(ingest.bound_port)) < unacked:
            assert again.poll() is None and time.monotonic() < deadline, (stored, unacked)
            await asyncio.sleep(0.2)
        again.send_signal(signal.SIGTERM)
        _out, err2 = await asyncio.to_thread(again.communicate, timeout=30)
    finally:
        if again.poll() is None:
            again.kill()
            again.wait()
    assert again.returncode == 0, err2
    assert "batches unacked" in err2 and f"spool {state / 'spool'} (power-loss)" in err2, err2


def test_turning_the_spool_off_is_explicit_and_logged(
    tmp_path: Path, small_dbc: Path, small_mapping: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    path = _config(
        tmp_path,
        "nospool",
        small_dbc,
        small_mapping,
        port=1,
        bus=VIRTUAL,
        extra="[spool]\nenabled = false\n",
    )
    config = load_agent_config(path, env={"STATE_DIRECTORY": str(state)})
    assert config.spool is None and config.spool_origin == "disabled"
    with caplog.at_level(logging.WARNING, logger="tcu.agent.app"):
        outbox = open_outbox(config)
    assert isinstance(outbox, MemoryOutbox)
    assert "[spool] enabled = false: unacked batches are kept in memory and lost on a crash" in caplog.text
    assert not (state / "spool").exists()
    # The default and [state] directory: the spool, its catalogs and the nonces live there.
    default = load_agent_config(
        _config(tmp_path, "default", small_dbc, small_mapping, port=1, bus=VIRTUAL),
        env={"STATE_DIRECTORY": str(state)},
    )
    assert default.spool is not None and default.spool_origin == "default"
    assert default.spool.directory == state / "spool" and default.spool.durability == "power-loss"
    chosen = load_agent_config(
        _config(
            tmp_path,
            "chosen",
            small_dbc,
            small_mapping,
            port=1,
            bus=VIRTUAL,
            extra=f'[state]\ndirectory = "{tmp_path / "elsewhere"}"\n',
        ),
        env={"STATE_DIRECTORY": str(state)},
    )
    assert chosen.state_dir == tmp_path / "elsewhere" and chosen.spool is not None
    assert chosen.spool.directory == tmp_path / "elsewhere" / "spool"
