"""``tcu replay LOG``: a recorded CAN log as the agent's buses.

The agent configuration is loaded as for ``tcu agent``; then every configured bus
is replaced by a ``interface = "replay"`` bus (:class:`tcu.can.logs.replay.ReplayBus`)
over ``LOG`` that carries the log channel(s) assigned to it, and the same
:class:`~tcu.agent.Agent` runs. Nothing else changes: decoding, campaigns,
batching, spool and uplink are those of a live run, and frames keep their
recorded timestamps (``--timestamps now`` stamps them with the replay's clock).

Which log channel goes onto which bus:

* ``--map CH=BUS`` (repeatable): log channel ``CH`` onto the configured bus named
  ``BUS``. Configured buses that get no channel still exist (the catalog is the
  one of the live configuration) but carry no frames.
* without ``--map``, one configured bus: every frame of the log goes onto it;
* without ``--map``, several buses: log channels named like a bus (its ``name`` or
  its ``channel``) go onto that bus when every channel has such a match, else the
  log's channels in order of first appearance go onto the buses in config order.

Before the agent starts the whole log is read once: a missing file, an unknown
format, corrupt records (unless ``--skip-bad``) or an empty ``--start``/``--end``
window stop the command with one line naming the file. Without ``--loop`` the
agent stops (and drains its uplink like on SIGTERM) once every replay bus has
handed out its last frame and the pipeline has decoded it; with ``--loop`` it
runs until SIGTERM or SIGINT. The last line on stdout is a JSON summary: the
agent's counters (as ``tcu agent`` prints them) plus the replay's.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import can
import numpy as np

from tcu.agent import Agent, AgentStats
from tcu.can.bus import open_bus
from tcu.can.logs import open_log
from tcu.can.logs.replay import ReplayBus
from tcu.cli._progress import Progress
from tcu.config import AgentConfig, BusConfig, UplinkConfig, load_agent_config
from tcu.errors import ConfigError, LogFormatError, TcuError

__all__ = [
    "LogSurvey",
    "ReplayOptions",
    "ReplayResult",
    "register",
    "replay",
    "replay_config",
    "survey_log",
]

log = logging.getLogger(__name__)

_EXAMPLE = """\
examples:
  tcu replay drive.blf --config agent.toml --rate max
  tcu replay drive.log --config agent.toml --rate 10 --start 60 --end 120
  tcu replay two_buses.asc --config agent.toml --map 1=powertrain --map 2=chassis --loop
  tcu replay drive.log --dbc vehicle.dbc --mapping vehicle_vss.toml --target 127.0.0.1:50051 --insecure

Formats: candump -L (.log), BLF (.blf), ASC (.asc), TRC (.trc), MF4 (.mf4, needs asammdf).
Times for --start/--end are seconds after the log's first frame.
"""


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    """How to replay ``log`` (see the module docstring).

    ``rate``: 1.0 real time, 10.0 ten times faster, ``None`` as fast as the agent reads.
    ``channel_map``: log channel → configured bus name; empty for the default assignment.
    """

    log: Path
    rate: float | None = 1.0
    start_s: float = 0.0
    end_s: float | None = None
    loop: bool = False
    channel_map: Mapping[str, str] = dataclasses.field(default_factory=dict)
    timestamps: str = "original"
    skip_bad: bool = False

    def __post_init__(self) -> None:
        if self.rate is not None and not self.rate > 0:
            raise ConfigError(f"must be > 0 or 'max', got {self.rate}", key="--rate")
        if self.start_s < 0:
            raise ConfigError(f"must be >= 0 seconds, got {self.start_s}", key="--start")
        if self.end_s is not None and self.end_s < self.start_s:
            raise ConfigError(f"{self.end_s} is before --start {self.start_s}", key="--end")
        if self.timestamps not in ("original", "now"):
            raise ConfigError(f"must be 'original' or 'now', got {self.timestamps!r}", key="--timestamps")


@dataclass(frozen=True, slots=True)
class LogSurvey:
    """What one read of the whole log found.

    ``channels``: channel names in order of first appearance; ``frames``: data frames
    per channel inside the window (error and remote frames are not counted).
    """

    path: Path
    channels: tuple[str, ...]
    frames: Mapping[str, int]
    frames_total: int
    bad_records: int
    duration_s: float


@dataclass(slots=True)
class ReplayResult:
    """What a replay did. ``frames_expected``: data frames of one pass through the window."""

    stats: AgentStats
    frames_replayed: int
    frames_expected: int
    log_finished: bool
    wall_s: float
    assignment: dict[str, list[str] | None]


def survey_log(
    path: Path, start_s: float = 0.0, end_s: float | None = None, *, skip_bad: bool = False
) -> LogSurvey:
    """Read the whole log once: its channels, the frames in the window, corrupt records.

    The window is measured like :class:`ReplayBus` does: from the first frame in file order.
    Raises :class:`LogFormatError` naming the file (and the first bad line or offset).
    """
    reader = open_log(path)
    order: list[str] = []
    counts: dict[str, int] = {}
    first_ns: int | None = None
    last_ns = 0
    total = 0
    for chunk in reader:
        if len(chunk) == 0:
            continue
        if first_ns is None:
            first_ns = int(chunk.t_ns[0])
        last_ns = max(last_ns, int(chunk.t_ns.max()))
        total += len(chunk)
        rel = chunk.t_ns - first_ns
        keep = (rel >= round(start_s * 1e9)) & ~chunk.is_error & ~chunk.is_remote
        if end_s is not None:
            keep &= rel <= round(end_s * 1e9)
        seen = np.unique(chunk.channel, return_index=True)
        for code in seen[0][np.argsort(seen[1])]:
            name = chunk.channels[int(code)] if chunk.channels else ""
            if name not in counts:
                order.append(name)
                counts[name] = 0
        kept = np.bincount(chunk.channel[keep].astype(np.intp), minlength=len(chunk.channels) or 1)
        for code, n in enumerate(kept.tolist()):
            if n:
                counts[chunk.channels[code] if chunk.channels else ""] += int(n)
    stats = reader.stats
    if (stats.bad_records or stats.stopped_at) and not skip_bad:
        first = str(stats.problems[0]) if stats.problems else f"{path}: stopped at {stats.stopped_at}"
        raise LogFormatError(
            f"{stats.bad_records} corrupt record(s)"
            + (f", truncated at {stats.stopped_at}" if stats.stopped_at else "")
            + f"; first: {first}; --skip-bad replays the readable frames",
            path=str(path),
        )
    if total == 0 or first_ns is None:
        raise LogFormatError("the log has no frames", path=str(path))
    if sum(counts.values()) == 0 and start_s == 0 and end_s is None:
        # A log of error or remote frames only: the agent counts them; nothing is decoded.
        log.warning("%s: %d frames, none of them data frames: nothing to decode", path, total)
    elif sum(counts.values()) == 0:
        window = f"{start_s:g} s .. {'end' if end_s is None else f'{end_s:g} s'}"
        raise LogFormatError(
            f"no data frames between {window} after the first frame "
            f"(the log spans {(last_ns - first_ns) / 1e9:.3f} s)",
            path=str(path),
        )
    return LogSurvey(
        path=path,
        channels=tuple(order),
        frames=counts,
        frames_total=total,
        bad_records=stats.bad_records,
        duration_s=(last_ns - first_ns) / 1e9,
    )


def _assign(config: AgentConfig, options: ReplayOptions, survey: LogSurvey) -> dict[str, list[str] | None]:
    """Bus name → log channels it carries (``None``: every channel)."""
    names = [b.name for b in config.buses]
    if options.channel_map:
        out: dict[str, list[str] | None] = {n: [] for n in names}
        for channel, bus in options.channel_map.items():
            if bus not in out:
                raise ConfigError(f"{channel}={bus}: no configured bus {bus!r} (buses: {names})", key="--map")
            if channel not in survey.channels:
                raise ConfigError(
                    f"{channel}={bus}: the log {survey.path} has no channel {channel!r} "
                    f"(channels: {list(survey.channels)})",
                    key="--map",
                )
            chans = out[bus]
            assert chans is not None
            chans.append(channel)
        return out
    if len(config.buses) == 1:
        return {names[0]: None}
    by_name: dict[str, str] = {}
    for b in config.buses:
        by_name.setdefault(b.name, b.name)
        by_name.setdefault(b.channel, b.name)
    if all(c in by_name for c in survey.channels):
        out = {n: [] for n in names}
        for c in survey.channels:
            chans = out[by_name[c]]
            assert chans is not None
            chans.append(c)
        return out
    if len(survey.channels) > len(names):
        raise ConfigError(
            f"the log {survey.path} has {len(survey.channels)} channels {list(survey.channels)} but the "
            f"config has {len(names)} buses {names}: say which goes where with --map CH=BUS",
            key="--map",
        )
    out = {n: [] for n in names}
    for c, n in zip(survey.channels, names, strict=False):
        out[n] = [c]
    return out


def replay_config(
    config: AgentConfig, options: ReplayOptions, survey: LogSurvey
) -> tuple[AgentConfig, dict[str, list[str] | None]]:
    """``config`` with every bus replaced by a replay bus over the log, and the assignment."""
    assignment = _assign(config, options, survey)
    buses: list[BusConfig] = []
    for bus in config.buses:
        chans = assignment[bus.name]
        replay_options: dict[str, Any] = {
            "rate": options.rate,
            "start_s": options.start_s,
            "end_s": options.end_s,
            "loop": options.loop,
            "timestamps": options.timestamps,
        }
        if chans is not None:
            replay_options["channels"] = list(chans)
        buses.append(
            dataclasses.replace(
                bus, interface="replay", channel=str(options.log), options=replay_options, bitrate=None
            )
        )
        log.info("replay: bus %s carries log channel(s) %s", bus.name, "all" if chans is None else chans)
    return dataclasses.replace(config, buses=tuple(buses)), assignment


class _Opened:
    """Opens buses like the agent does and keeps the replay buses it opened."""

    def __init__(self) -> None:
        self.buses: dict[str, ReplayBus] = {}

    def open(self, config: BusConfig) -> can.BusABC:
        bus = open_bus(config)
        if isinstance(bus, ReplayBus):
            self.buses[config.name] = bus
        return bus


def _all_read(agent: Agent, opened: _Opened) -> bool:
    """Every replay bus finished, every frame it handed out was decoded by the pipeline."""
    if len(opened.buses) != len(agent.readers):
        return False
    for reader in agent.readers:
        bus = opened.buses.get(reader.config.name)
        if bus is None or not bus.finished:
            return False
        s = reader.stats
        if s.frames + s.error_frames + s.remote_frames != bus.frames_sent:
            return False
    return agent.decoder.counts.frames == sum(r.stats.frames for r in agent.readers)


async def replay(
    config: AgentConfig,
    options: ReplayOptions,
    *,
    stop: asyncio.Event | None = None,
    stats_path: Path | None = None,
    survey: LogSurvey | None = None,
    progress: Progress | None = None,
) -> ReplayResult:
    """Run the agent over the log until it is finished (not looping) or ``stop`` is set.

    ``progress`` (a terminal's progress line) is updated with the frames sent, against the
    frames the log holds for the assigned channels (a count and a rate only when looping).
    """
    if survey is None:
        survey = await asyncio.to_thread(
            survey_log, options.log, options.start_s, options.end_s, skip_bad=options.skip_bad
        )
    replayed, assignment = replay_config(config, options, survey)
    opened = _Opened()
    # The opener keeps the replay buses so that the end of the log can be seen.
    agent = Agent(replayed, stats_path=stats_path, opener=opened.open)
    expected = sum(
        sum(survey.frames.values()) if chans is None else sum(survey.frames.get(c, 0) for c in chans)
        for chans in assignment.values()
    )
    stop = stop or asyncio.Event()
    started = time.monotonic()

    if progress is not None and not options.loop:
        progress.total = expected

    async def watch() -> None:
        while not stop.is_set():
            if progress is not None:
                progress.update(sum(b.frames_sent for b in opened.buses.values()))
            if not options.loop and _all_read(agent, opened):
                log.info("replay: log %s finished; stopping the agent", options.log)
                stop.set()
                return
            await asyncio.sleep(0.05)

    watcher = (
        None if options.loop and progress is None else asyncio.create_task(watch(), name="tcu.replay.watch")
    )
    try:
        stats = await agent.run(stop)
    except ExceptionGroup as group:
        ours = group.subgroup(TcuError)
        if ours is None:
            raise
        first: BaseException = ours
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from group
    finally:
        if watcher is not None:
            watcher.cancel()
        if progress is not None:
            progress.done()
    finished = bool(opened.buses) and all(b.finished for b in opened.buses.values())
    return ReplayResult(
        stats=stats,
        frames_replayed=sum(b.frames_sent for b in opened.buses.values()),
        frames_expected=expected,
        log_finished=finished,
        wall_s=time.monotonic() - started,
        assignment=assignment,
    )


# -- CLI ------------------------------------------------------------------------------


def _rate(text: str) -> float | None:
    if text.lower() == "max":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or 'max': {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def _mapping_arg(text: str) -> tuple[str, str]:
    channel, sep, bus = text.partition("=")
    if not sep or not channel or not bus:
        raise argparse.ArgumentTypeError(f"expected CH=BUS, got {text!r}")
    return channel, bus


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "replay",
        help="feed a recorded CAN log into the agent as its buses",
        description="Run the vehicle agent with its buses replaced by a recorded log (candump, BLF, "
        "ASC, TRC, MF4), paced in real time or faster, and upload what it collects like a live run. "
        "Stops when the log is finished (unless --loop) or on SIGTERM, then drains the uplink and "
        "prints a JSON summary.",
        epilog=_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("log", type=Path, metavar="LOG", help="the recorded CAN log")
    p.add_argument("--config", type=Path, help="agent TOML file (as for 'tcu agent')")
    p.add_argument("--rate", type=_rate, default=1.0, help="1 = real time (default), 10 = ten times, 'max'")
    p.add_argument("--start", type=float, default=0.0, metavar="S", help="seconds after the first frame")
    p.add_argument("--end", type=float, default=None, metavar="S", help="seconds after the first frame")
    p.add_argument("--loop", action="store_true", help="start again at --start; run until SIGTERM")
    p.add_argument(
        "--map",
        type=_mapping_arg,
        action="append",
        default=[],
        metavar="CH=BUS",
        help="log channel CH onto the configured bus BUS (repeatable)",
    )
    p.add_argument(
        "--timestamps",
        choices=("original", "now"),
        default="original",
        help="keep the recorded timestamps (default) or stamp frames with the replay clock",
    )
    p.add_argument("--skip-bad", action="store_true", help="replay a log with corrupt records anyway")
    p.add_argument("--stats-file", type=Path, help="write live counters as JSON to this file")
    p.add_argument("--vehicle-id", help="override [vehicle] id")
    p.add_argument("--target", help="override [uplink] target (host:port)")
    quick = p.add_argument_group("without --config (one bus, plain TCP)")
    quick.add_argument("--dbc", type=Path, action="append", default=[], help="DBC file (repeatable)")
    quick.add_argument("--mapping", type=Path, help="DBC→VSS mapping file")
    quick.add_argument("--insecure", action="store_true", help="plain TCP to the ingest (local tests only)")
    p.set_defaults(func=run)


def _quick_config(args: argparse.Namespace) -> AgentConfig:
    missing = [
        flag
        for flag, value in (("--dbc", args.dbc), ("--mapping", args.mapping), ("--target", args.target))
        if not value
    ]
    if missing:
        raise ConfigError(f"give --config, or {' '.join(missing)} (with --insecure)", key="tcu replay")
    if not args.insecure:
        raise ConfigError("without --config only --insecure uploads are supported", key="--insecure")
    for path in [*args.dbc, args.mapping]:
        if not path.is_file():
            raise ConfigError(f"file not found: {path}", key="--dbc" if path != args.mapping else "--mapping")
    return AgentConfig(
        vehicle_id=args.vehicle_id or "WTCUREPLAY0000001",
        buses=(BusConfig(name="can0", interface="replay", channel="can0", dbc=tuple(args.dbc)),),
        mapping=args.mapping,
        uplink=UplinkConfig(target=args.target, insecure=True),
    )


def _options(args: argparse.Namespace) -> ReplayOptions:
    channel_map: dict[str, str] = {}
    for channel, bus in args.map:
        if channel in channel_map:
            raise ConfigError(f"log channel {channel!r} is mapped twice", key="--map")
        channel_map[channel] = bus
    return ReplayOptions(
        log=args.log,
        rate=args.rate,
        start_s=args.start,
        end_s=args.end,
        loop=args.loop,
        channel_map=channel_map,
        timestamps=args.timestamps,
        skip_bad=args.skip_bad,
    )


def run(args: argparse.Namespace) -> int:
    options = _options(args)
    if args.config is not None:
        overrides: dict[str, object] = {}
        if args.vehicle_id:
            overrides["vehicle.id"] = args.vehicle_id
        if args.target:
            overrides["uplink.target"] = args.target
        config = load_agent_config(args.config, env=os.environ, overrides=overrides)
    else:
        config = _quick_config(args)
    survey = survey_log(options.log, options.start_s, options.end_s, skip_bad=options.skip_bad)
    log.info(
        "replay: %s: %d frames over %.3f s, channels %s",
        options.log,
        survey.frames_total,
        survey.duration_s,
        list(survey.channels),
    )
    result = asyncio.run(_main(config, options, survey, args.stats_file))
    print(json.dumps(summary(result, options)), flush=True)
    return 0


def summary(result: ReplayResult, options: ReplayOptions) -> dict[str, Any]:
    """The JSON line ``tcu replay`` prints last."""
    return {
        "event": "stopped",
        **asdict(result.stats),
        "log": str(options.log),
        "frames_replayed": result.frames_replayed,
        "frames_expected": result.frames_expected,
        "log_finished": result.log_finished,
        "wall_s": round(result.wall_s, 3),
        "assignment": result.assignment,
    }


async def _main(
    config: AgentConfig, options: ReplayOptions, survey: LogSurvey, stats_path: Path | None
) -> ReplayResult:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bar = Progress(f"replay {options.log}")  # drawn only when stderr is a terminal
    return await replay(config, options, stop=stop, stats_path=stats_path, survey=survey, progress=bar)
