"""The chaos run's parts: schedule, link proxy, accounting and the simulator's reconnect mode."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

from _chaos_account import Segment, account  # noqa: E402
from _chaos_proxy import LinkProxy, ProxyConfig  # noqa: E402
from _chaos_schedule import make_schedule  # noqa: E402

from sim.canbus import DEFAULT_DBC_PATH, DEFAULT_MAPPING_PATH  # noqa: E402
from tcu.demo.verify import Series, expected_samples  # noqa: E402
from tcu.errors import ConfigError  # noqa: E402
from tcu.signals.dbc import load_dbc  # noqa: E402
from tcu.signals.mapping import Catalog, build_catalog, load_mapping  # noqa: E402


def test_schedule_is_seeded_and_holds_every_fault() -> None:
    a = make_schedule(seed=1, kills=20, ingest_restarts=5, cutoffs=10, offline_s=900, offline_periods=5)
    b = make_schedule(seed=1, kills=20, ingest_restarts=5, cutoffs=10, offline_s=900, offline_periods=5)
    c = make_schedule(seed=2, kills=20, ingest_restarts=5, cutoffs=10, offline_s=900, offline_periods=5)
    assert a == b and a != c
    assert a.count("kill") == 20 and a.count("cutoff") == 10 and a.count("offline") == 5
    assert a.count("ingest_term", "ingest_kill") == 5
    assert a.offline_s == pytest.approx(900, abs=0.01)
    assert all(f.duration_s >= 900 / 5 / 2 - 0.01 for f in a.faults if f.kind == "offline")
    times = [f.at_s for f in a.faults]
    assert times == sorted(times) and times[0] > 0 and a.duration_s > times[-1]
    offline = [f for f in a.faults if f.kind == "offline"]
    for x, y in itertools.pairwise(offline):  # offline periods do not overlap
        assert y.at_s >= x.at_s + x.duration_s


def _catalog() -> Catalog:
    return build_catalog(
        load_mapping(DEFAULT_MAPPING_PATH),
        {"can0": [load_dbc(DEFAULT_DBC_PATH)]},
        mapping_path=DEFAULT_MAPPING_PATH,
    )


def test_accounting_cuts_kill_windows_and_finds_losses_and_duplicates() -> None:
    catalog = _catalog()
    spec = catalog.signals[0]
    gt_name = f"{spec.message}.{spec.signal}"
    t_us = np.arange(0, 10_000_000, 10_000, dtype=np.int64) + 1_000_000_000  # 10 s at 100 Hz
    ground_truth: dict[str, Series] = {gt_name: (t_us * 1000, np.arange(len(t_us), dtype=np.float64))}
    # client 1 until 4 s (killed), client 2 from 4 s + 1 µs to the end
    kill_us = 1_000_000_000 + 4_000_000
    segments = [Segment(1_000_000_000, kill_us, killed=True), Segment(kill_us + 1, None, killed=False)]
    gt_t, gt_v = ground_truth[gt_name]

    def rule(mask: np.ndarray) -> Series:  # the periodic rule, applied to one client's frames
        return expected_samples({gt_name: (gt_t[mask], gt_v[mask])}, catalog).series[spec.name]

    first = rule(gt_t <= kill_us * 1000)
    second = rule(gt_t > kill_us * 1000)
    t_ns = np.concatenate([first[0], second[0]])
    values = np.concatenate([first[1], second[1]])
    # the ingest holds the first client's samples up to 3 s and everything of the second client
    held = (t_ns <= (1_000_000_000 + 3_000_000) * 1000) | (t_ns > kill_us * 1000)
    # a fresh sampler starts mid-window: the second client's first sample is not the drive's first
    assert not np.isin(second[0][:1], expected_samples(ground_truth, catalog).series[spec.name][0]).all()
    ok = account(ground_truth, catalog, segments, {spec.name: (t_ns[held], values[held])})
    assert ok.lost == 0 and ok.duplicates == 0 and ok.value_errors == 0
    assert ok.unspooled_at_kills == int((~held).sum()) > 0
    assert ok.kill_windows_ms == [pytest.approx(1000.0, abs=spec.period_ms)]
    # one sample missing before the kill window: lost; one stored twice: a duplicate
    lost_one = held.copy()
    lost_one[3] = False
    bad_t = np.concatenate([t_ns[lost_one], t_ns[-1:]])
    bad_v = np.concatenate([values[lost_one], values[-1:]])
    bad = account(ground_truth, catalog, segments, {spec.name: (bad_t, bad_v)})
    assert bad.lost == 1 and bad.duplicates == 1
    assert bad.lost_examples


async def _ended(reader: asyncio.StreamReader) -> bool:
    """True when the connection ends (EOF or reset) without delivering a byte."""
    try:
        return await asyncio.wait_for(reader.read(10), 5) == b""
    except ConnectionResetError:
        return True


async def test_proxy_forwards_cuts_and_refuses_while_down() -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with LinkProxy(ProxyConfig("127.0.0.1", port)) as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(b"ping")
            assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
            assert proxy.open_connections == 1
            assert proxy.cut() == 1
            assert await _ended(reader)  # the stream ended
            writer.close()
            proxy.set_down(True)
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(b"ping")
            assert await _ended(reader)  # refused: nothing forwarded
            writer.close()
            assert proxy.refused == 1
            proxy.set_down(False)
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(b"pong")
            assert await asyncio.wait_for(reader.readexactly(4), 5) == b"pong"
            writer.close()
    finally:
        server.close()
        await server.wait_closed()


def test_proxy_accepts_loopback_only() -> None:
    with pytest.raises(ConfigError, match="loopback"):
        ProxyConfig("192.0.2.1", 1)


def _open_client(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    assert b"hi" in sock.recv(64)
    sock.sendall(b"< open can0 >")
    assert b"ok" in sock.recv(64)
    sock.sendall(b"< rawmode >")
    assert b"ok" in sock.recv(64)
    return sock


def _event(proc: subprocess.Popen[str]) -> dict[str, object]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, "the simulator ended its output"
    value: dict[str, object] = json.loads(line)
    return value


def test_sim_reconnect_pauses_while_no_client_and_resumes(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "sim", "--duration", "10", "--speed", "20", "--reconnect"),
            *("--ground-truth", str(tmp_path / "gt.npz")),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        ready = _event(proc)
        port = int(str(ready["port"]))
        first = _open_client(port)
        c1 = _event(proc)
        assert c1["state"] == "connected" and c1["client"] == 1
        first.recv(4096)  # frames flow
        first.close()
        d1 = _event(proc)
        assert d1["state"] == "disconnected" and d1["client"] == 1
        start_us, gone_us = int(str(c1["sim_us"])), int(str(d1["sim_us"]))
        assert 0 < gone_us - start_us < 10_000_000
        # paused: a wall second later the second client starts right after where the first left
        time.sleep(1.0)
        second = _open_client(port)
        c2 = _event(proc)
        assert c2["state"] == "connected" and c2["client"] == 2
        assert int(str(c2["sim_us"])) == gone_us + 1
        second.settimeout(10)
        got = b""
        while got.count(b"< frame") < 50:
            chunk = second.recv(65536)
            assert chunk, "the simulator closed the connection"
            got += chunk
        stamps_us = [
            round(float(f.split()[2]) * 1e6) for f in got.decode().split("<")[1:-1] if f.startswith(" frame")
        ]
        assert stamps_us and min(stamps_us) >= gone_us + 1
        done = _event(proc)
        assert done["event"] == "done" and done["clients"] == 2
        # the drive ran its full 10 simulated seconds despite the pause
        assert int(str(done["end_us"])) - int(str(done["start_us"])) > 9_900_000
        second.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_socketcand_reconnect_mode_serves_the_newest_client() -> None:
    import can

    from sim.socketcand import SocketcandConfig, SocketcandServer

    with SocketcandServer(SocketcandConfig(reconnect=True, settle_s=0.0)) as server:
        first = _open_client(server.port)
        assert server.wait_for_client(5.0) and server.clients == 1
        second = _open_client(server.port)  # replaces the first, which is closed
        deadline = time.monotonic() + 5
        while server.clients < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.clients == 2 and server.client_connected
        first.settimeout(5)
        assert first.recv(64) == b""
        msg = can.Message(timestamp=1.5, arbitration_id=0x123, data=b"\x01\x02", is_extended_id=False)
        assert server.send_frames([msg]) == 1
        second.settimeout(5)
        assert b"< frame 123 1.500000 0102 >" in second.recv(4096)
        second.close()
        deadline = time.monotonic() + 5
        while server.client_connected and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not server.client_connected
        assert not server.wait_for_client(0.1)  # waits for the next client again
        first.close()
