"""``tcu replay``: a simulated drive written as a log, replayed into a real ingest on loopback."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import can
import grpc
import numpy as np
import pytest

import sim
from tcu.api.v1 import fleet_pb2 as fleet_pb
from tcu.api.v1 import fleet_pb2_grpc as fleet_grpc
from tcu.cli.main import main as tcu_main
from tcu.cli.replay import ReplayOptions, replay, replay_config, survey_log
from tcu.config import AgentConfig, load_agent_config
from tcu.demo.verify import Series, expected_samples, load_ground_truth, verify_store
from tcu.errors import ConfigError, LogFormatError
from tcu.ingest import IngestConfig, IngestServer
from tcu.signals.dbc import load_dbc
from tcu.signals.mapping import Catalog, build_catalog, load_mapping
from tools.shared_data import shared_path

START_US = 1_763_800_000_000_000
VEHICLE = "WTCUREPLAYTEST001"


@dataclass(frozen=True)
class Recording:
    log: Path
    blf: Path
    truth: dict[str, Series]
    frames: int
    first_ns: int


@pytest.fixture
def recording(tmp_path: Path) -> Recording:
    drive = sim.Drive(sim.DriveConfig(duration_s=4.0, speed=None, seed=7, start_epoch_us=START_US))
    log_path, blf_path = tmp_path / "drive.log", tmp_path / "drive.blf"
    frames = 0
    with can.CanutilsLogWriter(str(log_path), channel="can0") as w1, can.BLFWriter(str(blf_path)) as w2:
        for msg in drive.frames():
            w1.on_message_received(msg)
            w2.on_message_received(msg)
            frames += 1
    gt_path = drive.save_ground_truth(tmp_path / "truth.npz")
    first_ns = int(sim.load_ground_truth(gt_path).frame_t_us[0]) * 1000
    return Recording(log_path, blf_path, load_ground_truth(gt_path), frames, first_ns)


@pytest.fixture
async def ingest(tmp_path: Path) -> AsyncIterator[IngestServer]:
    server = IngestServer(IngestConfig(insecure=True, listen="127.0.0.1:0", db_path=tmp_path / "i.sqlite"))
    await server.start()
    try:
        yield server
    finally:
        await server.stop(1.0)


def write_config(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(
        f'[vehicle]\nid = "{VEHICLE}"\n\n'
        f"[state]\ndirectory = {json.dumps(str(tmp_path / 'state'))}\n\n"
        # A live socketcand bus: tcu replay swaps it for the log.
        '[[bus]]\nname = "can0"\ninterface = "socketcand"\nchannel = "can0"\n'
        f"dbc = [{json.dumps(str(sim.DEFAULT_DBC_PATH))}]\n"
        'options = { host = "127.0.0.1", port = 1 }\n\n'
        f"[signals]\nmapping = {json.dumps(str(sim.DEFAULT_MAPPING_PATH))}\n\n"
        f'[uplink]\ntarget = "127.0.0.1:{port}"\ninsecure = true\n'
        "backoff_initial_s = 0.05\nbackoff_max_s = 0.5\n"
    )
    return path


def catalog() -> Catalog:
    return build_catalog(
        load_mapping(sim.DEFAULT_MAPPING_PATH),
        {"can0": [load_dbc(sim.DEFAULT_DBC_PATH)]},
        mapping_path=sim.DEFAULT_MAPPING_PATH,
    )


async def stored(port: int) -> dict[str, Series]:
    """The CAN signals stored (not the ``Vehicle.Tcu.Spool.*`` the agent's default spool adds)."""
    parts: dict[str, tuple[list[int], list[float]]] = {}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        async for update in fleet_grpc.FleetStub(channel).Query(fleet_pb.QueryRequest(vehicle_id=VEHICLE)):
            for s in update.series:
                if s.name.startswith("Vehicle.Tcu."):
                    continue
                t, v = parts.setdefault(s.name, ([], []))
                t.extend(s.t_ns)
                v.extend(s.double_values)
    return {k: (np.array(t, np.int64), np.array(v, np.float64)) for k, (t, v) in parts.items()}


def window(truth: dict[str, Series], lo_ns: int, hi_ns: int) -> dict[str, Series]:
    out: dict[str, Series] = {}
    for name, (t, v) in truth.items():
        keep = (t >= lo_ns) & (t <= hi_ns)
        out[name] = (t[keep], v[keep])
    return out


async def test_replay_at_max_rate_stores_exactly_the_ground_truth(
    tmp_path: Path, recording: Recording, ingest: IngestServer
) -> None:
    config = load_agent_config(write_config(tmp_path, ingest.bound_port))
    result = await asyncio.wait_for(replay(config, ReplayOptions(recording.log, rate=None)), 60)
    assert result.log_finished
    assert result.frames_replayed == result.frames_expected == recording.frames
    assert result.stats.frames == recording.frames
    assert result.stats.batches_unacked == 0 and result.stats.unknown_frames == 0
    cat = catalog()
    check = verify_store(expected_samples(recording.truth, cat), await stored(ingest.bound_port), cat)
    assert check.samples_expected > 500
    assert (check.samples_lost, check.samples_unexpected, check.value_errors) == (0, 0, 0)
    assert check.samples_stored == check.samples_expected


async def test_replay_draws_a_progress_bar_up_to_every_frame(
    tmp_path: Path, recording: Recording, ingest: IngestServer
) -> None:
    """On a terminal ``tcu replay`` shows frames sent against the frames the log holds."""
    import io
    import re

    from tcu.cli._progress import Progress

    config = load_agent_config(write_config(tmp_path, ingest.bound_port))
    screen = io.StringIO()
    bar = Progress("replay rec", stream=screen, enabled=True, every_s=0.0)
    options = ReplayOptions(recording.log, rate=4.0)  # 4 s of log in about 1 s: several redraws
    result = await asyncio.wait_for(replay(config, options, progress=bar), 60)
    assert result.log_finished and result.frames_replayed == recording.frames
    drawn = re.findall(r"\r\[[#.]{20}\] +(\d+)%  ([\d,]+) frames \([\d,]+/s\)  replay rec", screen.getvalue())
    assert len(drawn) >= 3, screen.getvalue()
    percents = [int(p) for p, _ in drawn]
    assert percents == sorted(percents) and percents[0] < 100
    assert all(int(n.replace(",", "")) <= recording.frames for _, n in drawn)
    assert screen.getvalue().endswith("\r")  # cleared at the end


async def test_rate_paces_the_replay(tmp_path: Path, recording: Recording, ingest: IngestServer) -> None:
    config = load_agent_config(write_config(tmp_path, ingest.bound_port))
    options = ReplayOptions(recording.log, rate=10.0, start_s=1.0, end_s=3.0)
    result = await asyncio.wait_for(replay(config, options), 60)
    # 2 s of log at 10x take at least 0.2 s; at max rate the whole 4 s log is read much faster.
    assert result.log_finished and result.frames_replayed == result.frames_expected
    assert 0.19 <= result.wall_s < 10.0


async def test_cli_blf_window_stores_only_samples_inside_it(
    tmp_path: Path, recording: Recording, ingest: IngestServer
) -> None:
    config = write_config(tmp_path, ingest.bound_port)
    stats_file = tmp_path / "stats.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tcu.cli.main",
        "replay",
        str(recording.blf),
        "--config",
        str(config),
        "--rate",
        "max",
        "--start",
        "1.25",
        "--end",
        "2.5",
        "--stats-file",
        str(stats_file),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    summary = json.loads(out.decode().strip().splitlines()[-1])
    lo, hi = recording.first_ns + 1_250_000_000, recording.first_ns + 2_500_000_000
    truth = window(recording.truth, lo, hi)
    frame_t_ns = sim.load_ground_truth(tmp_path / "truth.npz").frame_t_us * 1000
    frames_in_window = int(np.sum((frame_t_ns >= lo) & (frame_t_ns <= hi)))
    assert summary["event"] == "stopped" and summary["log_finished"] is True
    assert summary["frames"] == summary["frames_replayed"] == frames_in_window
    assert 0 < frames_in_window < recording.frames
    assert summary["batches_unacked"] == 0
    assert json.loads(stats_file.read_text())["frames"] == frames_in_window

    got = await stored(ingest.bound_port)
    cat = catalog()
    check = verify_store(expected_samples(truth, cat), got, cat)
    assert check.samples_expected > 100
    assert (check.samples_lost, check.samples_unexpected, check.value_errors) == (0, 0, 0)
    all_t = np.concatenate([t for t, _ in got.values()])
    assert lo <= all_t.min() and all_t.max() <= hi


async def test_missing_log_is_one_line_naming_the_file(tmp_path: Path) -> None:
    config = write_config(tmp_path, 1)
    missing = tmp_path / "nope.blf"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tcu.cli.main",
        "replay",
        str(missing),
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    lines = err.decode().strip().splitlines()
    assert lines == [f"tcu replay: error: {missing}: no such log file"]
    assert out == b""


def test_corrupt_candump_line_is_one_line_naming_file_and_line(
    tmp_path: Path, recording: Recording, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.log"
    lines = recording.log.read_text().splitlines(keepends=True)
    bad.write_text("".join(lines[:100]) + "(garbage) can0 XYZ#nothex\n" + "".join(lines[100:]))
    config = write_config(tmp_path, 1)
    assert tcu_main(["replay", str(bad), "--config", str(config)]) == 1
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("tcu replay")]
    assert len(err) == 1
    assert err[0].startswith(f"tcu replay: error: {bad}: 1 corrupt record(s); first: {bad}:101: ")
    assert survey_log(bad, skip_bad=True).frames == {"can0": recording.frames}  # the rest is replayable


def test_corrupt_blf_is_one_line_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.blf"
    bad.write_bytes(b"this is not a BLF file at all" * 20)
    config = write_config(tmp_path, 1)
    assert tcu_main(["replay", str(bad), "--config", str(config)]) == 1
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("tcu replay")]
    assert len(err) == 1 and str(bad) in err[0] and "BLF" in err[0]


def test_empty_window_is_an_error(recording: Recording) -> None:
    with pytest.raises(LogFormatError, match=re.escape("no data frames between 10 s .. 12 s")):
        survey_log(recording.log, 10.0, 12.0)


def _two_channel_log(tmp_path: Path) -> Path:
    path = tmp_path / "two.log"
    text = "".join(f"(100.{i:06d}) {'can0' if i % 3 else 'can1'} 0A0#0011223344556677\n" for i in range(30))
    path.write_text(text)
    return path


def _two_bus_config(tmp_path: Path, names: tuple[str, str] = ("body", "chassis")) -> Path:
    path = tmp_path / f"two-{names[0]}.toml"
    dbc = json.dumps(str(sim.DEFAULT_DBC_PATH))
    mapping = tmp_path / f"one-{names[0]}.toml"
    mapping.write_text(
        'version = 1\n[[signal]]\nname = "Vehicle.Speed"\nmessage = "ESP_Speed"\n'
        f'signal = "VehicleSpeed"\nperiod_ms = 100\nbus = "{names[0]}"\n'
    )
    path.write_text(
        '[vehicle]\nid = "X"\n'
        f'[[bus]]\nname = "{names[0]}"\ninterface = "virtual"\ndbc = [{dbc}]\n'
        f'[[bus]]\nname = "{names[1]}"\ninterface = "virtual"\ndbc = [{dbc}]\n'
        f'[signals]\nmapping = "{mapping}"\n[uplink]\ninsecure = true\n'
    )
    return path


def _catalog_id(config: AgentConfig) -> str:
    databases = {b.name: [load_dbc(d) for d in b.dbc] for b in config.buses}
    return build_catalog(load_mapping(config.mapping), databases).catalog_id


def test_channel_assignment(tmp_path: Path) -> None:
    log = _two_channel_log(tmp_path)
    survey = survey_log(log)
    assert survey.channels == ("can1", "can0")  # order of first appearance
    assert dict(survey.frames) == {"can1": 10, "can0": 20}
    config = load_agent_config(_two_bus_config(tmp_path))

    replayed, assignment = replay_config(config, ReplayOptions(log), survey)
    assert assignment == {"body": ["can1"], "chassis": ["can0"]}
    assert [(b.name, b.interface, b.channel) for b in replayed.buses] == [
        ("body", "replay", str(log)),
        ("chassis", "replay", str(log)),
    ]
    assert replayed.buses[0].options["channels"] == ["can1"]
    assert replayed.buses[0].dbc == config.buses[0].dbc
    # The agent's catalog (buses, DBCs, mapping) is that of the live configuration.
    assert _catalog_id(replayed) == _catalog_id(config)

    _, mapped = replay_config(config, ReplayOptions(log, channel_map={"can0": "body"}), survey)
    assert mapped == {"body": ["can0"], "chassis": []}
    with pytest.raises(ConfigError, match="has no channel 'can7'"):
        replay_config(config, ReplayOptions(log, channel_map={"can7": "body"}), survey)
    with pytest.raises(ConfigError, match="no configured bus 'engine'"):
        replay_config(config, ReplayOptions(log, channel_map={"can0": "engine"}), survey)
    # Buses named like the log's channels get their namesakes, whatever the order.
    named = load_agent_config(_two_bus_config(tmp_path, ("can0", "can1")))
    assert replay_config(named, ReplayOptions(log), survey)[1] == {"can0": ["can0"], "can1": ["can1"]}


async def test_loop_runs_until_stopped(tmp_path: Path, recording: Recording, ingest: IngestServer) -> None:
    config = load_agent_config(write_config(tmp_path, ingest.bound_port))
    stop = asyncio.Event()
    task = asyncio.create_task(replay(config, ReplayOptions(recording.log, rate=None, loop=True), stop=stop))
    await asyncio.sleep(1.5)
    assert not task.done()  # a looping replay does not end with the log
    stop.set()
    result = await asyncio.wait_for(task, 30)
    assert not result.log_finished
    assert result.frames_replayed > 2 * result.frames_expected
    assert result.stats.frames == result.frames_replayed
    assert result.stats.batches_unacked == 0
    got = await stored(ingest.bound_port)
    speed_t = got["Vehicle.Speed"][0]
    assert (np.diff(np.sort(speed_t)) > 0).all()  # later passes are shifted, never stored twice
    assert speed_t.max() - speed_t.min() > 8_000_000_000  # more than two passes of the 4 s log


async def test_cli_without_config(recording: Recording, ingest: IngestServer) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tcu.cli.main",
        "replay",
        str(recording.log),
        "--dbc",
        str(sim.DEFAULT_DBC_PATH),
        "--mapping",
        str(sim.DEFAULT_MAPPING_PATH),
        "--target",
        f"127.0.0.1:{ingest.bound_port}",
        "--insecure",
        "--vehicle-id",
        VEHICLE,
        "--rate",
        "max",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    summary = json.loads(out.decode().strip().splitlines()[-1])
    assert summary["frames"] == summary["frames_replayed"] == recording.frames
    cat = catalog()
    check = verify_store(expected_samples(recording.truth, cat), await stored(ingest.bound_port), cat)
    assert (check.samples_lost, check.samples_unexpected, check.value_errors) == (0, 0, 0)
    assert check.samples_stored == check.samples_expected > 500


RAV4 = shared_path("can/logs/comma2k19_rav4_2017_seg40.log")
TOYOTA_PT = shared_path("can/dbc/toyota_new_mc_pt_flattened.dbc")
TOYOTA_ADAS = shared_path("can/dbc/toyota_adas.dbc")


async def test_real_two_channel_log_mapped_onto_two_buses(tmp_path: Path, ingest: IngestServer) -> None:
    """comma2k19 RAV4 (two channels): can0 → powertrain, can1 → adas; stored = cantools on the log."""
    mapping = tmp_path / "rav4_vss.toml"
    mapping.write_text(
        'version = 1\n[[signal]]\nname = "Vehicle.Speed"\nmessage = "SPEED"\nsignal = "SPEED"\n'
        'period_ms = 100\nbus = "powertrain"\n'
        '[[signal]]\nname = "Vehicle.Chassis.SteeringWheel.Angle"\nmessage = "STEER_ANGLE_SENSOR"\n'
        'signal = "STEER_ANGLE"\nperiod_ms = 50\nbus = "powertrain"\n'
    )
    config_path = tmp_path / "rav4.toml"
    config_path.write_text(
        f'[vehicle]\nid = "{VEHICLE}"\n'
        f'[[bus]]\nname = "powertrain"\ninterface = "socketcan"\ndbc = ["{TOYOTA_PT}"]\n'
        f'[[bus]]\nname = "adas"\ninterface = "socketcan"\ndbc = ["{TOYOTA_ADAS}"]\n'
        f'[signals]\nmapping = "{mapping}"\n'
        f'[uplink]\ntarget = "127.0.0.1:{ingest.bound_port}"\ninsecure = true\n'
        f"[state]\ndirectory = {json.dumps(str(tmp_path / 'state'))}\n"  # its own default spool
    )
    config = load_agent_config(config_path)
    options = ReplayOptions(RAV4, rate=None, channel_map={"can0": "powertrain", "can1": "adas"})
    result = await asyncio.wait_for(replay(config, options), 120)

    with can.LogReader(str(RAV4)) as reader:
        frames = list(reader)
    assert result.log_finished
    assert result.frames_replayed == result.stats.frames == len(frames) == 135_468
    db = load_dbc(TOYOTA_PT)
    truth: dict[str, tuple[list[int], list[float]]] = {}
    for msg in frames:
        if msg.channel != "can0" or msg.arbitration_id not in (0x0B4, 0x025):
            continue
        name = db.get_message_by_frame_id(msg.arbitration_id).name
        for sig, value in db.decode_message(msg.arbitration_id, msg.data, decode_choices=False).items():
            t, v = truth.setdefault(f"{name}.{sig}", ([], []))
            t.append(round(msg.timestamp * 1e6) * 1000)
            v.append(float(value))
    series = {k: (np.array(t, np.int64), np.array(v, np.float64)) for k, (t, v) in truth.items()}
    databases = {b.name: [load_dbc(d) for d in b.dbc] for b in config.buses}
    cat = build_catalog(load_mapping(mapping), databases)
    check = verify_store(expected_samples(series, cat), await stored(ingest.bound_port), cat)
    assert check.samples_expected > 1000
    assert (check.samples_lost, check.samples_unexpected, check.value_errors) == (0, 0, 0)


async def test_cli_loop_stops_on_sigterm_and_drains(
    tmp_path: Path, recording: Recording, ingest: IngestServer
) -> None:
    config = write_config(tmp_path, ingest.bound_port)
    stats_file = tmp_path / "loop.stats.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tcu.cli.main",
        "replay",
        str(recording.log),
        "--config",
        str(config),
        "--rate",
        "max",
        "--loop",
        "--stats-file",
        str(stats_file),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while not (stats_file.exists() and json.loads(stats_file.read_text())["frames"] > 2 * recording.frames):
        assert loop.time() < deadline and proc.returncode is None
        await asyncio.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    summary = json.loads(out.decode().strip().splitlines()[-1])
    assert summary["log_finished"] is False and summary["stopped"] is True
    assert summary["frames"] == summary["frames_replayed"] > 2 * recording.frames
    assert summary["batches_unacked"] == 0
