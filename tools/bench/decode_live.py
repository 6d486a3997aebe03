"""Benchmark the agent's live decode path against plain cantools, on the same frames, in one run.

Frames: a simulated drive (``sim.Drive`` over ``sim/data/tcu_sim.dbc``, every message the
simulator sends), cut into batches of ``--batch-frames`` frames as a bus reader hands
them to the agent (72 frames: 20 ms of one bus at 80 % of 500 kbit/s), decoded for the
simulator's VSS mapping (``sim/data/tcu_sim_vss.toml``, 67 signals). With ``--buses N`` the
same frames travel on N buses (``can0`` ... , each with the DBC and the mapping repeated,
``Vehicle.BusI...`` names as in ``agent_load.py``) and each batch holds ``--batch-frames``
frames of *every* bus, as the agent's once-per-tick hand-off gives the decoder one batch of
all buses (288 frames = 4 buses × 72 at 80 % of 500 kbit/s and a 20 ms tick).

* **ours**: :class:`tcu.signals.decoder.SignalDecoder` (the agent's decoder) on the
  :class:`~tcu.frames.FrameBatch` es, as ``Pipeline.feed`` calls it;
* **cantools**: per frame, a dict lookup of the mapped signals by arbitration id and
  ``db.decode_message(id, data, decode_choices=False)``, appending each mapped signal's
  time and value to its lists, then one array pair per signal (the same output).

Both sides take the same frames already in memory (``FrameBatch`` es for ours, the
``can.Message`` s python-can gives for cantools). Runs are interleaved ``ours, cantools,
ours, cantools, ...`` (``--rounds`` of each) so that load on the machine hits both alike;
each run decodes every batch. Before timing, both outputs are checked equal (signal by
signal: same times, same values); the run fails if they differ.

    .venv/bin/python tools/bench/decode_live.py --json                # 60 s drive, 5 rounds
    .venv/bin/python tools/bench/decode_live.py --seconds 10 --json   # quick look

The last line printed is JSON: frames, frames/s min/median/max per side and ``ratio``
(median ours / median cantools frames per second).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import can
import cantools
import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import sim  # noqa: E402
from tcu.can.collector import merge_buses  # noqa: E402
from tcu.frames import FrameBatch  # noqa: E402
from tcu.signals.dbc import load_dbc  # noqa: E402
from tcu.signals.decoder import SignalColumns, SignalDecoder, compile_codecs  # noqa: E402
from tcu.signals.mapping import Catalog, build_catalog, load_mapping  # noqa: E402

Series = dict[int, tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]]


def drive_frames(seconds: float) -> list[can.Message]:
    drive = sim.Drive(sim.DriveConfig(duration_s=seconds, speed=None, seed=11, start_epoch_us=0))
    return list(drive.frames())


def batches(messages: Sequence[can.Message], size: int, buses: int = 1) -> list[FrameBatch]:
    """``size`` frames per bus per batch; several buses are merged as the agent's tick merges them."""
    out: list[FrameBatch] = []
    names = tuple(f"can{i}" for i in range(buses))
    for start in range(0, len(messages), size):
        part = messages[start : start + size]
        one = FrameBatch.of_payloads(
            "can0",
            np.array([round(m.timestamp * 1_000_000) * 1000 for m in part], np.int64),
            np.array([m.arbitration_id for m in part], np.uint32),
            [bytes(m.data) for m in part],
            is_extended=np.array([m.is_extended_id for m in part], np.bool_),
        )
        out.append(one if buses == 1 else merge_buses(names, [[one.renamed((n,))] for n in names]))
    return out


def ours(decoder: SignalDecoder, frame_batches: Sequence[FrameBatch]) -> list[SignalColumns]:
    return [decoder.decode(b) for b in frame_batches]


def cantools_side(
    db: cantools.database.can.Database,
    bus_routes: Sequence[dict[int, list[tuple[str, int]]]],
    messages: Sequence[can.Message],
    size: int,
) -> list[SignalColumns]:
    """Per batch, what the agent would hand on with plain cantools: one column per signal."""
    out: list[SignalColumns] = []
    for start in range(0, len(messages), size):
        times: dict[int, list[int]] = {}
        values: dict[int, list[float]] = {}
        for routes, msg in ((r, m) for r in bus_routes for m in messages[start : start + size]):
            wanted = routes.get(msg.arbitration_id)
            if wanted is None:
                continue
            try:
                # a bytearray decodes as bytes do (cantools' annotation says bytes)
                decoded = db.decode_message(msg.arbitration_id, msg.data, decode_choices=False)  # type: ignore[arg-type]
            except cantools.database.DecodeError:
                continue
            t_ns = round(msg.timestamp * 1_000_000) * 1000
            for name, sid in wanted:
                value = decoded.get(name)  # type: ignore[union-attr]
                if value is not None:
                    times.setdefault(sid, []).append(t_ns)
                    values.setdefault(sid, []).append(float(value))  # type: ignore[arg-type]
        out.append(
            [(sid, np.array(times[sid], np.int64), np.array(values[sid], np.float64)) for sid in times]
        )
    return out


def _mapping(path: Path, buses: int) -> Path:
    """The simulator's mapping once per bus (as ``tools/bench/agent_load.py`` writes it)."""
    import tomllib

    entries = tomllib.loads(sim.DEFAULT_MAPPING_PATH.read_text())["signal"]
    out = ["version = 1\n"]
    for i in range(buses):
        for e in entries:
            name = e["name"] if i == 0 else e["name"].replace("Vehicle.", f"Vehicle.Bus{i}.", 1)
            out.append(
                f'[[signal]]\nname = "{name}"\nmessage = "{e["message"]}"\nsignal = "{e["signal"]}"\n'
                f'period_ms = {e["period_ms"]}\nbus = "can{i}"\n'
            )
    path.write_text("\n".join(out))
    return path


def merged(outputs: Sequence[SignalColumns]) -> Series:
    parts: dict[int, list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]]] = {}
    for columns in outputs:
        for sid, t, v in columns:
            parts.setdefault(sid, []).append((t, v))
    series: Series = {}
    for sid, pieces in parts.items():
        t = np.concatenate([p[0] for p in pieces])
        v = np.concatenate([p[1] for p in pieces])
        order = np.argsort(t, kind="stable")
        series[sid] = (t[order], v[order])
    return series


def check_equal(a: Series, b: Series) -> int:
    if a.keys() != b.keys():
        raise SystemExit(f"signals differ: {sorted(a.keys() ^ b.keys())}")
    values = 0
    for sid in a:
        if not np.array_equal(a[sid][0], b[sid][0]):
            raise SystemExit(f"signal {sid}: times differ")
        if not np.array_equal(a[sid][1], b[sid][1], equal_nan=True):
            raise SystemExit(f"signal {sid}: values differ")
        values += len(a[sid][0])
    return values


def _stats(rates: list[float]) -> dict[str, int]:
    return {"min": round(min(rates)), "median": round(statistics.median(rates)), "max": round(max(rates))}


def run(args: argparse.Namespace) -> dict[str, Any]:
    db = load_dbc(sim.DEFAULT_DBC_PATH)
    names = [f"can{i}" for i in range(args.buses)]
    databases = {n: [db] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        mapping = _mapping(Path(tmp) / "vss.toml", args.buses) if args.buses > 1 else sim.DEFAULT_MAPPING_PATH
        catalog: Catalog = build_catalog(load_mapping(mapping), databases)
    codecs = compile_codecs(databases)
    bus_routes: list[dict[int, list[tuple[str, int]]]] = [{} for _ in names]
    for spec in catalog.signals:
        frame_id = db.get_message_by_name(spec.message).frame_id
        bus_routes[names.index(spec.bus)].setdefault(frame_id, []).append((spec.signal, spec.signal_id))
    messages = drive_frames(args.seconds)
    frame_batches = batches(messages, args.batch_frames, args.buses)
    values = check_equal(
        merged(ours(SignalDecoder(catalog, codecs), frame_batches)),
        merged(cantools_side(db, bus_routes, messages, args.batch_frames)),
    )
    total = len(messages) * args.buses
    rates: dict[str, list[float]] = {"ours": [], "cantools": []}
    for _ in range(args.rounds):
        decoder = SignalDecoder(catalog, codecs)
        started = time.perf_counter()
        ours(decoder, frame_batches)
        rates["ours"].append(total / (time.perf_counter() - started))
        started = time.perf_counter()
        cantools_side(db, bus_routes, messages, args.batch_frames)
        rates["cantools"].append(total / (time.perf_counter() - started))
    return {
        "bench": "decode_live",
        "dbc": sim.DEFAULT_DBC_PATH.name,
        "frames": total,
        "buses": args.buses,
        "batch_frames": args.batch_frames,
        "frames_per_decode_call": args.batch_frames * args.buses,
        "batches": len(frame_batches),
        "signals": len(catalog.signals),
        "values_checked": values,
        "rounds": args.rounds,
        "order": "interleaved: ours, cantools, ours, cantools, ...",
        "ours_frames_per_s": _stats(rates["ours"]),
        "cantools_frames_per_s": _stats(rates["cantools"]),
        "ratio": round(statistics.median(rates["ours"]) / statistics.median(rates["cantools"]), 2),
        "python": platform.python_version(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="simulated drive length (default 60)")
    parser.add_argument("--batch-frames", type=int, default=72, help="frames per batch (default 72)")
    parser.add_argument("--rounds", type=int, default=5, help="timed runs per side (default 5)")
    parser.add_argument("--buses", type=int, default=1, help="buses merged into each batch (default 1)")
    parser.add_argument("--json", action="store_true", help="print the JSON line last (always printed)")
    args = parser.parse_args()
    result = run(args)
    print(
        f"{result['frames']} frames in batches of {args.batch_frames} x {args.buses} buses: ours "
        f"{result['ours_frames_per_s']['median']:,} frames/s, cantools "
        f"{result['cantools_frames_per_s']['median']:,} frames/s (median of {args.rounds}): "
        f"x{result['ratio']}",
        file=sys.stderr,
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
