"""The chaos run's parts: schedule, link proxy, accounting and the simulator's reconnect mode."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

from _chaos_account import Accounting, Segment, account  # noqa: E402
from _chaos_proxy import ClockTap, LinkProxy, ProxyConfig  # noqa: E402
from _chaos_schedule import make_schedule  # noqa: E402
from _chaos_spool import SpoolFacts, corrupt_record, inspect_spool, truncate_state  # noqa: E402
from _chaos_store import delete_batches, read_store  # noqa: E402
from chaos import ChaosResult  # noqa: E402

from sim.canbus import DEFAULT_DBC_PATH, DEFAULT_MAPPING_PATH  # noqa: E402
from tcu.demo.verify import Series, expected_samples  # noqa: E402
from tcu.errors import ConfigError  # noqa: E402
from tcu.ingest._chunks import encode_doubles  # noqa: E402
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


def _db(path: Path, batches: list[tuple[int, int, str | None, Series]], name: str) -> Path:
    """A database with the ingest's tables as the accounting reads them: (epoch, seq, loss, samples)."""
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE batches (vehicle_id TEXT, boot_epoch INTEGER, seq INTEGER, catalog_id TEXT,"
        " base_time_ns INTEGER, created_ns INTEGER, samples INTEGER, stored_ns INTEGER, loss_reason TEXT);"
        "CREATE TABLE quarantine (vehicle_id TEXT, boot_epoch INTEGER, seq INTEGER, reason TEXT);"
        "CREATE TABLE series (series_id INTEGER PRIMARY KEY, vehicle_id TEXT, name TEXT, unit TEXT);"
        "CREATE TABLE chunks (series_id INTEGER, t_first INTEGER, chunk_id INTEGER, t_last INTEGER,"
        " boot_epoch INTEGER, seq INTEGER, count INTEGER, data BLOB);"
    )
    db.execute("INSERT INTO series VALUES (1, ?, ?, '')", (VIN, name))
    for epoch, seq, loss, (t_ns, values) in batches:
        n = 0 if loss else len(t_ns)
        db.execute("INSERT INTO batches VALUES (?, ?, ?, 'c', 0, 0, ?, 0, ?)", (VIN, epoch, seq, n, loss))
        if not loss:
            _insert_samples(
                db, [(1, int(t), float(v), epoch, seq) for t, v in zip(t_ns, values, strict=True)]
            )
    db.commit()
    db.close()
    return path


def _insert_samples(db: sqlite3.Connection, rows: list[tuple[int, int, float, int, int]]) -> None:
    """Store ``(series_id, t_ns, value, epoch, seq)`` rows as the ingest does: a chunk per series, batch."""
    groups: dict[tuple[int, int, int], list[tuple[int, float]]] = {}
    for series_id, t, v, epoch, seq in rows:
        groups.setdefault((series_id, epoch, seq), []).append((t, v))
    for (series_id, epoch, seq), items in groups.items():
        items.sort(key=lambda item: item[0])
        t_ns = np.array([t for t, _ in items], np.int64)
        chunk_id = db.execute("SELECT COALESCE(MAX(chunk_id), 0) + 1 FROM chunks").fetchone()[0]
        db.execute(
            "INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                series_id,
                int(t_ns[0]),
                chunk_id,
                int(t_ns[-1]),
                epoch,
                seq,
                len(items),
                encode_doubles(t_ns, np.array([v for _, v in items], np.float64)),
            ),
        )


VIN = "WTCUCHAOS00000001"
EPOCH = 77
T0_US = 1_000_000_000
KILL_US = T0_US + 4_000_000
BOUND_US = 500_000


class _Drive:
    """10 s of one signal at 100 Hz; client 1 killed at 4 s (0.2 s unspooled), client 2 to the end."""

    def __init__(self) -> None:
        self.catalog = _catalog()
        self.spec = self.catalog.signals[0]
        gt_name = f"{self.spec.message}.{self.spec.signal}"
        t_us = np.arange(0, 10_000_000, 10_000, dtype=np.int64) + T0_US
        self.ground_truth: dict[str, Series] = {
            gt_name: (t_us * 1000, np.arange(len(t_us), dtype=np.float64))
        }
        gt_t, gt_v = self.ground_truth[gt_name]

        def rule(mask: np.ndarray) -> Series:  # the periodic rule, applied to one client's frames
            return expected_samples({gt_name: (gt_t[mask], gt_v[mask])}, self.catalog).series[self.spec.name]

        first = rule(gt_t <= KILL_US * 1000)
        second = rule(gt_t > KILL_US * 1000)
        # a fresh sampler starts mid-window: the second client's first sample is not the drive's first
        whole = expected_samples(self.ground_truth, self.catalog).series[self.spec.name][0]
        assert not np.isin(second[0][:1], whole).all()
        # batches of 0.5 s; the first agent spooled up to 3.8 s before its kill
        spooled = first[0] <= (KILL_US - 200_000) * 1000
        self.unspooled = int((~spooled).sum())
        self.batches: list[tuple[int, int, str | None, Series]] = []
        for t_ns, v in ((first[0][spooled], first[1][spooled]), second):
            for lo in range(int(t_ns[0]), int(t_ns[-1]) + 1, 500_000_000):
                m = (t_ns >= lo) & (t_ns < lo + 500_000_000)
                if m.any():
                    self.batches.append((EPOCH, len(self.batches) + 1, None, (t_ns[m], v[m])))
            if not self.batches or len(self.batches) < 9:
                self.highest_at_kill = len(self.batches)
        self.segments = [
            Segment(
                T0_US,
                KILL_US,
                killed=True,
                kill_us=KILL_US,
                spool=SpoolFacts(EPOCH, 2, self.highest_at_kill, 6, 1000),
            ),
            Segment(KILL_US + 1, None, killed=False),
        ]

    def account(self, db: Path) -> Accounting:
        return account(
            self.ground_truth,
            self.catalog,
            self.segments,
            read_store(db, VIN),
            spool_epochs={EPOCH: len(self.batches)},
            kill_bound_us=BOUND_US,
        )


def test_accounting_holds_for_a_complete_database(tmp_path: Path) -> None:
    drive = _Drive()
    ok = drive.account(_db(tmp_path / "db.sqlite", drive.batches, drive.spec.name))
    assert ok.lost == 0 and ok.reported_lost == 0 and ok.duplicates == 0 and ok.value_errors == 0
    assert ok.batches_missing == 0 and ok.batches_expected == ok.batches_stored == len(drive.batches)
    assert ok.unexpected == 0 and ok.orphan_samples == 0 and ok.incomplete_batches == 0
    assert ok.unspooled_at_kills == drive.unspooled > 0
    assert ok.kill_windows_ms == [pytest.approx(200.0, abs=drive.spec.period_ms)]
    assert ok.kills_unverified == 0


def test_batches_deleted_before_a_kill_are_lost_not_unspooled(tmp_path: Path) -> None:
    """The hole the old accounting had: it measured the kill window back from the ingest's newest sample."""
    drive = _Drive()
    db = _db(tmp_path / "db.sqlite", drive.batches, drive.spec.name)
    last_two = [(EPOCH, drive.highest_at_kill - 1), (EPOCH, drive.highest_at_kill)]
    deleted, rows = delete_batches(db, VIN, last_two)
    assert deleted == 2 and rows > 0
    bad = drive.account(db)
    assert bad.batches_missing == 2
    assert bad.missing_batch_examples[0] == f"epoch {EPOCH} seq {drive.highest_at_kill - 1}"
    assert bad.lost > 0  # older than kill - bound: no kill can excuse them
    assert max(bad.kill_windows_ms) > BOUND_US / 1000  # and the window is over its bound


def test_the_last_batch_and_a_middle_batch_deleted_are_missing(tmp_path: Path) -> None:
    drive = _Drive()
    db = _db(tmp_path / "db.sqlite", drive.batches, drive.spec.name)
    delete_batches(db, VIN, [(EPOCH, 2), (EPOCH, len(drive.batches))])
    bad = drive.account(db)
    assert bad.batches_missing == 2 and bad.lost == len(drive.batches[1][3][0]) + len(drive.batches[-1][3][0])
    assert bad.reported_lost == 0 and bad.lost_examples


def test_a_dataloss_record_is_reported_loss_and_a_gap_is_silent(tmp_path: Path) -> None:
    drive = _Drive()
    batches = list(drive.batches)
    epoch, seq, _, lost_samples = batches[3]
    batches[3] = (epoch, seq, "evicted", lost_samples)  # the agent sent a DataLoss for seq 4
    reported = drive.account(_db(tmp_path / "a.sqlite", batches, drive.spec.name))
    assert reported.lost == 0 and reported.batches_missing == 0
    assert reported.reported_lost == len(lost_samples[0]) and reported.batches_reported_lost == 1
    assert reported.loss_reasons == {"evicted": 1}
    del batches[3]  # no record at all for seq 4: silent
    silent = drive.account(_db(tmp_path / "b.sqlite", batches, drive.spec.name))
    assert silent.lost == len(lost_samples[0]) and silent.reported_lost == 0 and silent.batches_missing == 1


def test_dataloss_records_before_a_kill_are_reported_and_not_held_to_the_bound(tmp_path: Path) -> None:
    """A full disk: the agent spooled DataLoss records for the batches it could not keep, then died."""
    drive = _Drive()
    batches = list(drive.batches)
    for i in (drive.highest_at_kill - 2, drive.highest_at_kill - 1):  # 0-based: the last two before the kill
        epoch, seq, _, samples = batches[i]
        batches[i] = (epoch, seq, "evicted", samples)
    acc = drive.account(_db(tmp_path / "db.sqlite", batches, drive.spec.name))
    assert acc.lost == 0 and acc.batches_missing == 0 and acc.batches_reported_lost == 2
    assert acc.reported_lost > 0 and acc.kill_windows_after_dataloss == 1
    assert max(acc.kill_windows_ms) > BOUND_US / 1000  # measured, but not held to the bound
    assert acc.bounded_kill_windows_ms == [0.0]
    # without the records the same hole is a silent loss and a window over the bound
    del batches[drive.highest_at_kill - 2 : drive.highest_at_kill]
    silent = drive.account(_db(tmp_path / "b.sqlite", batches, drive.spec.name))
    assert silent.lost > 0 and silent.batches_missing == 2 and silent.kill_windows_after_dataloss == 0
    assert max(silent.bounded_kill_windows_ms) > BOUND_US / 1000


def test_a_frame_stamped_at_the_boundary_may_go_to_the_next_client(tmp_path: Path) -> None:
    """The simulator writes frames stamped exactly at a client's end to the next client when it
    had not written them yet; the next agent's first sample is then at the boundary itself."""
    drive = _Drive()
    gt_name = f"{drive.spec.message}.{drive.spec.signal}"
    gt_t, gt_v = drive.ground_truth[gt_name]
    from_boundary = gt_t >= KILL_US * 1000
    t_b, v_b = expected_samples({gt_name: (gt_t[from_boundary], gt_v[from_boundary])}, drive.catalog).series[
        drive.spec.name
    ]
    assert t_b[0] == KILL_US * 1000
    batches = [b for b in drive.batches if b[3][0][0] < KILL_US * 1000]
    batches.append((EPOCH, len(batches) + 1, None, (t_b, v_b)))
    drive.segments[0] = dataclasses.replace(
        drive.segments[0], spool=SpoolFacts(EPOCH, 2, len(batches) - 1, 6, 1000)
    )
    db = _db(tmp_path / "db.sqlite", batches, drive.spec.name)
    acc = account(
        drive.ground_truth,
        drive.catalog,
        drive.segments,
        read_store(db, VIN),
        spool_epochs={EPOCH: len(batches)},
        kill_bound_us=BOUND_US,
    )
    assert acc.lost == 0 and acc.unexpected == 0 and acc.value_errors == 0


def test_a_dataloss_record_covers_each_signal_between_its_own_neighbours(tmp_path: Path) -> None:
    """Batches overlap in time across signals (a slow signal's sample comes in a later batch)."""
    catalog = _catalog()
    a, b = catalog.signals[0], next(x for x in catalog.signals if x.message != catalog.signals[0].message)
    t_us = np.arange(0, 6_000_000, 10_000, dtype=np.int64) + T0_US
    gt: dict[str, Series] = {
        f"{x.message}.{x.signal}": (t_us * 1000, np.arange(len(t_us), dtype=np.float64)) for x in (a, b)
    }
    exp = expected_samples(gt, catalog).series
    # batch 1: a before 2 s, b before 2.5 s; batch 2 lost (DataLoss); batch 3: a from 3 s, b from 3.5 s
    cuts = {a.name: (2.0, 3.0), b.name: (2.5, 3.5)}
    db = sqlite3.connect(tmp_path / "db.sqlite")
    _db(tmp_path / "db.sqlite", [], a.name)
    db.execute("INSERT INTO series VALUES (2, ?, ?, '')", (VIN, b.name))
    for seq, loss in ((1, None), (2, "evicted"), (3, None)):
        rows = []
        for series_id, x in ((1, a), (2, b)):
            t_ns, v = exp[x.name]
            lo_s, hi_s = cuts[x.name]
            sel = t_ns < (T0_US + lo_s * 1e6) * 1000 if seq == 1 else t_ns >= (T0_US + hi_s * 1e6) * 1000
            if seq != 2:
                rows += [
                    (series_id, int(t), float(val), EPOCH, seq)
                    for t, val in zip(t_ns[sel], v[sel], strict=True)
                ]
        db.execute(
            "INSERT INTO batches VALUES (?, ?, ?, 'c', 0, 0, ?, 0, ?)", (VIN, EPOCH, seq, len(rows), loss)
        )
        _insert_samples(db, rows)
    db.commit()
    db.close()
    acc = account(
        gt,
        catalog,
        [Segment(T0_US, None, killed=False)],
        read_store(tmp_path / "db.sqlite", VIN),
        spool_epochs={EPOCH: 3},
        kill_bound_us=BOUND_US,
    )
    assert acc.batches_missing == 0 and acc.batches_reported_lost == 1
    assert acc.lost == 0 and acc.reported_lost > 0


def test_orphan_rows_duplicates_and_an_unreadable_spool_are_counted(tmp_path: Path) -> None:
    drive = _Drive()
    db = _db(tmp_path / "db.sqlite", drive.batches, drive.spec.name)
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM batches WHERE seq = 3")  # samples left behind: orphans, not stored
    epoch5, _, _, (t5, v5) = next(b for b in drive.batches if b[1] == 5)  # one sample of seq 5, stored twice
    _insert_samples(conn, [(1, int(t5[0]), float(v5[0]), epoch5, 5)])
    conn.commit()
    conn.close()
    bad = drive.account(db)
    assert bad.orphan_samples == len(drive.batches[2][3][0]) and bad.batches_missing == 1 and bad.lost > 0
    assert bad.incomplete_batches == 1 and bad.duplicates == 1
    drive.segments[0] = Segment(T0_US, KILL_US, killed=True, kill_us=KILL_US, spool=None)
    assert drive.account(db).kills_unverified == 1


def test_a_run_fails_on_every_check() -> None:
    good = ChaosResult(samples_expected=10, batches_unacked_at_stop=0)
    assert good.judge() and good.ok and not good.failures
    for change in (
        {"kill_windows_over_bound": 1},
        {"lost": 1},
        {"batches_missing": 1},
        {"duplicates": 1},
        {"unexpected": 1},
        {"kills_unverified": 1},
        {"orphan_samples": 1},
        {"query_mismatches": 1},
        {"agent_unexpected_exits": 1},
        {"damaged_records_not_reported": 1},
        {"batches_reported_lost": 1},
        {"batches_unacked_at_stop": 3},
        {"samples_expected": 0},
    ):
        bad = dataclasses.replace(good, **change)
        assert not bad.judge() and bad.failures, change
    # reported losses are expected in the disk-full and damage phases, silent ones never
    phases = dataclasses.replace(good, spool_damages=1, batches_reported_lost=1, reported_lost=900)
    assert phases.judge()


def test_spool_inspection_reads_a_killed_spool_without_changing_it(tmp_path: Path) -> None:
    from tcu.spool import Spool, SpoolConfig

    spool = Spool.open(SpoolConfig(directory=tmp_path / "spool", durability="crash"))
    for i in range(6):
        spool.append(b"x" * 100 + bytes([i]), priority=0, created_ns=time.time_ns())
    spool.ack(2)
    epoch = spool.boot_epoch
    before = {p.name: p.read_bytes() for p in (tmp_path / "spool").iterdir() if p.is_file()}
    facts = inspect_spool(tmp_path / "spool")  # the spool is still open: like right after a SIGKILL
    assert facts == SpoolFacts(epoch, 2, 6, 4, facts.bytes, None) and facts.bytes > 0
    assert before == {p.name: p.read_bytes() for p in (tmp_path / "spool").iterdir() if p.is_file()}
    spool.close()
    damage = corrupt_record(tmp_path / "spool")
    assert damage is not None and damage.seq == 4  # the later middle of seqs 3..4, sparing the newest two
    again = Spool.open(SpoolConfig(directory=tmp_path / "spool", durability="crash"))
    records = list(again.pending())
    assert [r.seq for r in records] == [3, 4, 5, 6]
    assert [r.tombstone for r in records] == [None, "corrupt", None, None]
    again.close()
    truncate_state(tmp_path / "spool")
    broken = inspect_spool(tmp_path / "spool")  # the epoch then comes from the spool's epoch file
    assert broken.boot_epoch == epoch and broken.problem and "unreadable" in broken.problem
    (tmp_path / "spool" / "epoch").unlink()
    assert inspect_spool(tmp_path / "spool").boot_epoch is None


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


async def test_clock_tap_reads_the_newest_frame_time_it_forwards() -> None:
    async def sim(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"< hi >< frame 123 1796411192.815942 0102 >< frame 7FF 1796411192.9 >")
        await writer.drain()
        await reader.read(10)
        writer.close()

    server = await asyncio.start_server(sim, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with ClockTap(ProxyConfig("127.0.0.1", port)) as tap:
            assert tap.sim_us == 0
            reader, writer = await asyncio.open_connection("127.0.0.1", tap.port)
            got = b""
            while got.count(b">") < 3:
                got += await asyncio.wait_for(reader.read(1024), 5)
            assert got.startswith(b"< hi >")  # forwarded unchanged
            assert tap.sim_us == 1796411192_900000
            writer.close()
    finally:
        server.close()
        await server.wait_closed()
