"""Benchmark CAN log decoding, value for value: python-can reader + cantools per frame vs tcu's bulk path.

Scenarios (``--only`` picks some; all by default):

* ``comma2k19``: the real comma2k19 RAV4 candump log (135,468 frames, two buses, most ids
  unknown), ``can0`` with ``toyota_new_mc_pt_flattened.dbc`` and ``can1`` with
  ``toyota_adas.dbc``;
* ``ford-candump``, ``ford-blf``: a synthetic log (fixed seed) of the largest shared DBC,
  ``ford_lincoln_base_pt.dbc`` (331 messages, 49 extended, 31 CAN FD of up to 64 bytes);
* ``hyundai-candump``, ``hyundai-blf``: a synthetic log of ``hyundai_2015_ccan.dbc``;
* ``shared-asc-blf``: python-can's real ASC and BLF files from the shared data, each with the
  shared DBC that decodes the most of its frames (these files are small: a value check of
  the ASC/BLF readers, no speed target).

A synthetic log holds frames of random messages of the DBC (random payload bytes of the
message's length, CAN FD for messages longer than 8 bytes, 1 ms apart, 5 % frames with
standard ids the DBC does not have), written as candump ``-L`` and as BLF by python-can's
writers.

Per scenario:

1. **Value check** (untimed): both sides decode the whole log and keep every value; every
   decoded frame (by its index in the log), its channel, message, and every signal's
   presence and value must be equal (values as float64 bit patterns, NaN equal to NaN), as
   must the counts of decoded, unknown, refused (cantools ``DecodeError``) and skipped
   (error and remote) frames and the frame times (within 1 µs). Any difference is printed
   and the benchmark exits 1. ``--corrupt`` flips the lowest bit of one value on our side
   before the check, to show that it fails.
2. **Timing**: ``--rounds`` runs of each side, interleaved baseline, ours, baseline, ours, …
   in this process (read + decode, values counted and dropped; the DBCs are loaded before).
   Each run's decoded-frame and value counts must equal the check's. Frames/s min, median
   and max per side; ``ratio`` = median ours / median baseline frames/s.

* baseline: ``can.LogReader``, a dict lookup of the message by (id, extended) and
  ``Database.decode_message(id, data, decode_choices=False)`` per frame (error and remote
  frames skipped);
* ours: ``tcu.can.logs.open_log`` chunks through ``FrameDecoder``.

Targets (issue 13): ratio >= 10 on ``comma2k19`` and on the Ford synthetic log (both
formats), and ours above 2 M frames/s on the synthetic BLF (``hyundai-blf``); ``targets``
in the JSON says which are met. ``--require-targets`` exits 2 when one is missed.

    .venv/bin/python tools/bench/decode.py --json                       # all, 9 min at load 9-16
    .venv/bin/python tools/bench/decode.py --only comma2k19 --json      # one scenario
    .venv/bin/python tools/bench/decode.py --only ford-blf --frames 20000 --rounds 1 --corrupt  # exits 1

``--memory`` also runs the old per-side subprocess workers on the Hyundai synthetic logs
and reports their peak RSS (``VmHWM``). The last line printed is the JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

_REPO = Path(__file__).resolve().parents[2]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from tools.shared_data import shared_path  # noqa: E402 - after the sys.path fix above

SEED = 20261122
UNKNOWN_SHARE = 0.05
TARGET_RATIO = 10.0
TARGET_BLF_FRAMES_PER_S = 2_000_000

DBC_DIR = "can/dbc"
LOG_DIR = "can/logs"
HYUNDAI = "hyundai_2015_ccan.dbc"
FORD = "ford_lincoln_base_pt.dbc"
RAV4 = "comma2k19_rav4_2017_seg40.log"
#: python-can's real ASC/BLF files, each with the shared DBC that decodes most of its frames
#: (found by decoding each with all eight; the BLFs match none, they check the readers' counts).
SHARED_FILES = (
    ("issue_1256.asc", HYUNDAI),
    ("issue_1299.asc", "toyota_adas.dbc"),
    ("logfile.asc", "acura_ilx_2016_nidec.dbc"),
    ("test_CanFdMessage.blf", FORD),
    ("test_CanErrorFrameExt.blf", FORD),
)
SCENARIOS = ("comma2k19", "ford-candump", "ford-blf", "hyundai-candump", "hyundai-blf", "shared-asc-blf")


@dataclass(frozen=True)
class Part:
    """One log and the DBC file per channel (key None: every channel)."""

    log: Path
    dbcs: dict[str | None, Path]


@dataclass(frozen=True)
class Scenario:
    name: str
    parts: tuple[Part, ...]
    info: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- synthetic logs


def generate(dbc: Path, path_log: Path, path_blf: Path, frames: int) -> dict[str, Any]:
    """Write the synthetic log of ``dbc`` as candump and BLF (see the module docstring)."""
    import can
    import cantools

    db = cantools.database.load_file(str(dbc), strict=False)
    assert isinstance(db, cantools.database.can.Database)
    messages = [m for m in db.messages if not m.is_container]
    known_ids = {m.frame_id for m in messages if not m.is_extended_frame}
    rng = np.random.default_rng(SEED)
    unknown = [i for i in range(0x100, 0x7FF) if i not in known_ids][:40]
    choice = rng.integers(0, len(messages), frames)
    is_unknown = rng.random(frames) < UNKNOWN_SHARE
    pick_unknown = rng.integers(0, len(unknown), frames)
    width = max(8, *(m.length for m in messages))
    raw = rng.integers(0, 256, (frames, width), dtype=np.uint8)
    t0 = 1_700_000_000.0
    with (
        can.CanutilsLogWriter(str(path_log), channel="can0") as log_writer,
        can.BLFWriter(str(path_blf)) as blf_writer,
    ):
        for i in range(frames):
            if is_unknown[i]:
                ident, length, extended = unknown[int(pick_unknown[i])], 8, False
            else:
                message = messages[int(choice[i])]
                ident, length, extended = message.frame_id, message.length, message.is_extended_frame
            msg = can.Message(
                timestamp=t0 + i * 0.001,
                arbitration_id=ident,
                is_extended_id=extended,
                is_fd=length > 8,
                data=raw[i, :length].tobytes(),
                channel=0,
            )
            log_writer.on_message_received(msg)
            blf_writer.on_message_received(msg)
    return {
        "frames": frames,
        "messages_in_dbc": len(messages),
        "fd_messages_in_dbc": sum(m.length > 8 for m in messages),
        "seed": SEED,
    }


def synthetic_logs(
    family: str, dbc_name: str, workdir: Path, frames: int
) -> tuple[Path, Path, dict[str, Any]]:
    """The candump and BLF logs of one DBC, generated once per size into ``workdir``."""
    stem = workdir / f"{family}-{frames}"
    log_path, blf_path, info_path = (
        stem.with_suffix(".log"),
        stem.with_suffix(".blf"),
        stem.with_suffix(".json"),
    )
    if info_path.is_file() and log_path.is_file() and blf_path.is_file():
        info: dict[str, Any] = json.loads(info_path.read_text())
        return log_path, blf_path, info
    started = time.perf_counter()
    info = generate(shared_path(f"{DBC_DIR}/{dbc_name}"), log_path, blf_path, frames)
    print(f"generated {family}: {frames} frames in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    info_path.write_text(json.dumps(info))
    return log_path, blf_path, info


def scenarios(names: Iterable[str], workdir: Path, frames: int) -> list[Scenario]:
    out: list[Scenario] = []
    generated: dict[str, tuple[Path, Path, dict[str, Any]]] = {}
    for name in names:
        if name == "comma2k19":
            part = Part(
                shared_path(f"{LOG_DIR}/{RAV4}"),
                {
                    "can0": shared_path(f"{DBC_DIR}/toyota_new_mc_pt_flattened.dbc"),
                    "can1": shared_path(f"{DBC_DIR}/toyota_adas.dbc"),
                },
            )
            out.append(Scenario(name, (part,), {"log": RAV4}))
        elif name == "shared-asc-blf":
            parts = tuple(
                Part(shared_path(f"{LOG_DIR}/{log}"), {None: shared_path(f"{DBC_DIR}/{dbc}")})
                for log, dbc in SHARED_FILES
            )
            out.append(Scenario(name, parts, {"files": [f"{log} with {dbc}" for log, dbc in SHARED_FILES]}))
        else:
            family, fmt = name.split("-")
            dbc_name = FORD if family == "ford" else HYUNDAI
            if family not in generated:
                generated[family] = synthetic_logs(family, dbc_name, workdir, frames)
            log_path, blf_path, info = generated[family]
            path = log_path if fmt == "candump" else blf_path
            dbc = shared_path(f"{DBC_DIR}/{dbc_name}")
            out.append(Scenario(name, (Part(path, {None: dbc}),), {"dbc": dbc_name, **info}))
    return out


# ---------------------------------------------------------------- the two sides


@dataclass
class Outcome:
    """What one side made of a scenario: counts, and with ``keep`` every decoded value."""

    frames: int = 0
    decoded: int = 0
    unknown: int = 0
    errors: int = 0
    skipped: int = 0
    values: int = 0
    seconds: float = 0.0
    # (part, channel, message) -> frame indices, signal -> values (NaN: absent), signal -> present
    rows: dict[tuple[int, str, str], list[npt.NDArray[np.int64]]] = field(default_factory=dict)
    signals: dict[tuple[int, str, str], dict[str, list[npt.NDArray[np.float64]]]] = field(
        default_factory=dict
    )
    present: dict[tuple[int, str, str], dict[str, list[npt.NDArray[np.bool_]]]] = field(default_factory=dict)
    t_ns: list[npt.NDArray[np.int64]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {
            "frames": self.frames,
            "decoded": self.decoded,
            "unknown": self.unknown,
            "errors": self.errors,
            "skipped": self.skipped,
            "values": self.values,
        }


class Baseline:
    """python-can's reader and cantools' ``decode_message`` per frame."""

    def __init__(self, scenario: Scenario) -> None:
        import cantools

        self.parts = []
        for part in scenario.parts:
            dbs: dict[str | None, Any] = {}
            for chan, path in part.dbcs.items():
                db = cantools.database.load_file(str(path), strict=False)
                assert isinstance(db, cantools.database.can.Database)
                keys = {
                    (m.frame_id, bool(m.is_extended_frame)): m.name for m in db.messages if not m.is_container
                }
                dbs[chan] = (db, keys)
            self.parts.append((part.log, dbs))

    def run(self, *, keep: bool) -> Outcome:
        import can
        import cantools

        out = Outcome()
        started = time.perf_counter()
        for number, (log, dbs) in enumerate(self.parts):
            default = dbs.get(None)
            rows: dict[tuple[int, str, str], list[int]] = {}
            values: dict[tuple[int, str, str], list[dict[str, Any]]] = {}
            times: list[float] = []
            index = -1
            # ASC: the header's absolute start, as tcu's reader keeps it (python-can's option)
            options = {"relative_timestamp": False} if log.suffix.lower() == ".asc" else {}
            with can.LogReader(str(log), **options) as reader:
                for msg in reader:
                    index += 1
                    if keep:
                        times.append(msg.timestamp)
                    if msg.is_error_frame or msg.is_remote_frame:
                        out.skipped += 1
                        continue
                    chan = "" if msg.channel is None else str(msg.channel)
                    found = dbs.get(chan, default)
                    if found is None:
                        out.skipped += 1
                        continue
                    db, keys = found
                    name = keys.get((msg.arbitration_id, msg.is_extended_id))
                    if name is None:
                        out.unknown += 1
                        continue
                    try:
                        # a bytearray decodes as bytes do (cantools' annotation says bytes)
                        result = db.decode_message(
                            msg.arbitration_id,
                            msg.data,
                            decode_choices=False,
                            force_extended_id=msg.is_extended_id,
                        )
                    except cantools.database.DecodeError:
                        out.errors += 1
                        continue
                    out.decoded += 1
                    out.values += len(result)
                    if keep:
                        key = (number, chan, name)
                        rows.setdefault(key, []).append(index)
                        values.setdefault(key, []).append(result)
            out.frames += index + 1
            if keep:
                out.t_ns.append(np.array([round(t * 1e9) for t in times], dtype=np.int64))
                for key, frame_rows in rows.items():
                    out.rows[key] = [np.array(frame_rows, dtype=np.int64)]
                    names = {s for result in values[key] for s in result}
                    out.signals[key] = {
                        s: [np.array([float(r.get(s, math.nan)) for r in values[key]], dtype=np.float64)]
                        for s in names
                    }
                    out.present[key] = {
                        s: [np.array([s in r for r in values[key]], dtype=np.bool_)] for s in names
                    }
        out.seconds = time.perf_counter() - started
        return out


class Ours:
    """tcu's bulk readers and the one decoder."""

    def __init__(self, scenario: Scenario) -> None:
        from tcu.signals import compile_database, load_dbc

        self.parts = []
        compiled: dict[Path, Any] = {}
        for part in scenario.parts:
            codecs: dict[str | None, Any] = {}
            for chan, path in part.dbcs.items():
                if path not in compiled:
                    compiled[path] = compile_database(load_dbc(path))
                codecs[chan] = compiled[path]
            self.parts.append((part.log, codecs))
        self.corrupt = False

    def run(self, *, keep: bool) -> Outcome:
        from tcu.can.logs import open_log
        from tcu.signals.decoder import FrameDecoder

        out = Outcome()
        started = time.perf_counter()
        for number, (log, codecs) in enumerate(self.parts):
            decoder = FrameDecoder(codecs)
            offset = 0
            for chunk in open_log(log):
                for block in decoder.decode(chunk):
                    present = block.decoded.present
                    if block.decoded.complete:
                        out.values += len(block.rows) * len(present)
                    else:
                        out.values += sum(int(np.count_nonzero(p)) for p in present.values())
                    if keep:
                        self._keep(out, number, offset, block)
                if keep:
                    out.t_ns.append(chunk.t_ns.copy())
                offset += len(chunk)
            counts = decoder.counts
            out.frames += counts.frames
            out.decoded += counts.decoded
            out.unknown += counts.unknown
            out.errors += counts.errors
            out.skipped += counts.skipped
        out.seconds = time.perf_counter() - started
        if keep:
            out.t_ns = [np.concatenate(out.t_ns)] if out.t_ns else []
        return out

    def _keep(self, out: Outcome, number: int, offset: int, block: Any) -> None:
        ok = block.decoded.ok
        rows = block.rows if ok.all() else block.rows[ok]
        if len(rows) == 0:  # refused frames only (counted in errors)
            return
        key = (number, block.bus, block.codec.name)
        out.rows.setdefault(key, []).append(rows.astype(np.int64) + offset)
        signals = out.signals.setdefault(key, {})
        presence = out.present.setdefault(key, {})
        for name, values in block.decoded.values.items():
            here = block.decoded.present[name][ok]
            value = np.where(here, values[ok], np.nan)
            if self.corrupt and here.any():
                first = int(np.argmax(here))
                value[first] = (value[first : first + 1].view(np.uint64) ^ np.uint64(1)).view(np.float64)[0]
                print(
                    f"--corrupt: flipped the lowest bit of {block.codec.name}.{name} in frame "
                    f"{int(rows[first]) + offset}",
                    file=sys.stderr,
                )
                self.corrupt = False
            signals.setdefault(name, []).append(value)
            presence.setdefault(name, []).append(here)


# ---------------------------------------------------------------- the value check


def _same_values(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
    """Element-wise: the same float64 bit pattern, or both NaN."""
    same: npt.NDArray[np.bool_] = (a.view(np.uint64) == b.view(np.uint64)) | (np.isnan(a) & np.isnan(b))
    return same


def compare(base: Outcome, ours: Outcome, limit: int = 10) -> list[str]:
    """Every difference between the two sides' kept outcomes (up to ``limit`` listed per kind)."""
    problems: list[str] = []
    for name in ("frames", "decoded", "unknown", "errors", "skipped", "values"):
        if getattr(base, name) != getattr(ours, name):
            problems.append(f"{name}: baseline {getattr(base, name)}, ours {getattr(ours, name)}")
    base_t = np.concatenate(base.t_ns) if base.t_ns else np.zeros(0, np.int64)
    ours_t = np.concatenate(ours.t_ns) if ours.t_ns else np.zeros(0, np.int64)
    if len(base_t) == len(ours_t):
        far = np.flatnonzero(np.abs(base_t - ours_t) > 1000)
        if len(far):
            i = int(far[0])
            problems.append(
                f"{len(far)} frame times differ by > 1 µs, first frame {i}: {base_t[i]} vs {ours_t[i]} ns"
            )
    for key in sorted(set(base.rows) | set(ours.rows)):
        where = f"log {key[0]} channel {key[1]!r} message {key[2]}"
        if key not in base.rows or key not in ours.rows:
            side = "ours only" if key not in base.rows else "baseline only"
            problems.append(f"{where}: decoded by {side}")
            continue
        b_rows, o_rows = np.concatenate(base.rows[key]), np.concatenate(ours.rows[key])
        if not np.array_equal(b_rows, o_rows):
            problems.append(f"{where}: frames decoded differ ({len(b_rows)} vs {len(o_rows)})")
            continue
        for signal in sorted(set(base.signals[key]) | set(ours.signals[key])):
            b_here = np.concatenate(base.present[key][signal]) if signal in base.present[key] else None
            o_here = np.concatenate(ours.present[key][signal]) if signal in ours.present[key] else None
            if b_here is None:
                b_here = np.zeros(len(b_rows), np.bool_)
            if o_here is None:
                o_here = np.zeros(len(o_rows), np.bool_)
            if not np.array_equal(b_here, o_here):
                i = int(np.argmax(b_here != o_here))
                problems.append(f"{where} signal {signal}: present differs, first in frame {int(b_rows[i])}")
                continue
            if not b_here.any():
                continue
            b_val = np.concatenate(base.signals[key][signal])[b_here]
            o_val = np.concatenate(ours.signals[key][signal])[o_here]
            bad = np.flatnonzero(~_same_values(b_val, o_val))
            if len(bad):
                i = int(bad[0])
                frame = int(b_rows[np.flatnonzero(b_here)[i]])
                problems.append(
                    f"{where} signal {signal}: {len(bad)} values differ, first in frame {frame}: "
                    f"baseline {b_val[i]!r}, ours {o_val[i]!r}"
                )
    return problems if len(problems) <= limit * 5 else [*problems[: limit * 5], f"... {len(problems)} in all"]


# ---------------------------------------------------------------- timing


def _spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def bench(scenario: Scenario, rounds: int, *, corrupt: bool) -> dict[str, Any]:
    base_side, ours_side = Baseline(scenario), Ours(scenario)
    ours_side.corrupt = corrupt
    started = time.perf_counter()
    base_kept, ours_kept = base_side.run(keep=True), ours_side.run(keep=True)
    problems = compare(base_kept, ours_kept)
    check_s = time.perf_counter() - started
    result: dict[str, Any] = {
        **scenario.info,
        "counts": base_kept.counts(),
        "counts_ours": ours_kept.counts(),
        "values_equal": not problems,
        "problems": problems,
        "check_seconds": round(check_s, 1),
    }
    if problems:
        return result
    sides: dict[str, Callable[..., Outcome]] = {"baseline": base_side.run, "ours": ours_side.run}
    fps: dict[str, list[float]] = {"baseline": [], "ours": []}
    for _ in range(rounds):
        for side, run in sides.items():
            outcome = run(keep=False)
            want = base_kept if side == "baseline" else ours_kept
            if (outcome.decoded, outcome.values) != (want.decoded, want.values):
                problems.append(f"{side}: a timed run decoded {outcome.counts()}, the check {want.counts()}")
            fps[side].append(outcome.frames / outcome.seconds)
    result["problems"] = problems
    result["values_equal"] = not problems
    for side, values in fps.items():
        result[side] = {k: round(v) for k, v in _spread(values).items()} | {
            "runs": [round(v) for v in values]
        }
    result["ratio"] = round(statistics.median(fps["ours"]) / statistics.median(fps["baseline"]), 2)
    result["ratio_per_round"] = [round(o / b, 2) for o, b in zip(fps["ours"], fps["baseline"], strict=True)]
    return result


def targets(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in ("comma2k19", "ford-candump", "ford-blf"):
        if name in results and "ratio" in results[name]:
            ratio = results[name]["ratio"]
            out[name] = {"ratio": ratio, "target_ratio": TARGET_RATIO, "met": ratio >= TARGET_RATIO}
    if "hyundai-blf" in results and "ours" in results["hyundai-blf"]:
        fps = results["hyundai-blf"]["ours"]["median"]
        out["hyundai-blf"] = {
            "frames_per_s": fps,
            "target_frames_per_s": TARGET_BLF_FRAMES_PER_S,
            "met": fps > TARGET_BLF_FRAMES_PER_S,
        }
    return out


# ---------------------------------------------------------------- memory (--memory)


def _status_kb(name: str) -> int:
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM), in KiB.

    VmHWM is the peak RSS of this process image. (``ru_maxrss`` is not used: Linux carries
    the parent's peak over ``execve``, so a worker would report the generator's peak.)
    """
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{name} not in /proc/self/status")


def memory_worker(side: str, log: Path) -> dict[str, Any]:
    # Same imports on both sides, so peak RSS compares the loops, not the libraries.
    import can  # noqa: F401
    import cantools  # noqa: F401

    import tcu.can.logs
    import tcu.signals.decoder  # noqa: F401

    scenario = Scenario("memory", (Part(log, {None: shared_path(f"{DBC_DIR}/{HYUNDAI}")}),))
    runner = Baseline(scenario) if side == "baseline" else Ours(scenario)
    rss_before = _status_kb("VmRSS")
    outcome = runner.run(keep=False)
    return {
        "side": side,
        **outcome.counts(),
        "rss_before_loop_kb": rss_before,
        "rss_peak_kb": _status_kb("VmHWM"),
    }


def run_memory_worker(side: str, log: Path) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--memory-worker", side, "--log", str(log)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=SCENARIOS, help="run this scenario (repeatable)")
    parser.add_argument("--frames", type=int, default=300_000, help="frames in each synthetic log")
    parser.add_argument("--rounds", type=int, default=5, help="timed runs per side, interleaved")
    parser.add_argument("--workdir", type=Path, help="keep the generated logs here (default: temp dir)")
    parser.add_argument("--corrupt", action="store_true", help="flip one decoded value of ours: must exit 1")
    parser.add_argument("--require-targets", action="store_true", help="exit 2 when a target is missed")
    parser.add_argument("--memory", action="store_true", help="also peak RSS per side (Hyundai synthetic)")
    parser.add_argument("--json", action="store_true", help="print the JSON line last (always printed)")
    parser.add_argument("--memory-worker", choices=("baseline", "ours"), help=argparse.SUPPRESS)
    parser.add_argument("--log", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_worker:
        print(json.dumps(memory_worker(args.memory_worker, args.log)))
        return 0
    if args.rounds < 1 or args.frames < 1:
        parser.error("--rounds and --frames must be >= 1")
    import logging

    logging.basicConfig(level=logging.ERROR)  # the decoder's once-per-message warnings are expected here
    names = args.only or list(SCENARIOS)
    with tempfile.TemporaryDirectory(prefix="tcu-bench-decode-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        load = os.getloadavg()
        results: dict[str, Any] = {
            "bench": "decode",
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average_before": [round(x, 1) for x in load],
            "rounds": args.rounds,
            "synthetic_frames": args.frames,
            "ratio": "median ours frames/s / median baseline frames/s, runs interleaved",
        }
        per: dict[str, dict[str, Any]] = {}
        failed = False
        for scenario in scenarios(names, workdir, args.frames):
            result = bench(scenario, args.rounds, corrupt=args.corrupt)
            per[scenario.name] = result
            if result["problems"]:
                failed = True
                print(f"{scenario.name}: VALUES DIFFER:", file=sys.stderr)
                for problem in result["problems"]:
                    print(f"  {problem}", file=sys.stderr)
                continue
            base, ours = result["baseline"], result["ours"]
            print(
                f"{scenario.name:16s} {result['counts']['frames']:>9,} frames, "
                f"{result['counts']['decoded']:>9,} decoded, values equal | baseline "
                f"{base['min']:>9,}/{base['median']:>9,}/{base['max']:>9,} | ours "
                f"{ours['min']:>10,}/{ours['median']:>10,}/{ours['max']:>10,} frames/s "
                f"(min/median/max) | x{result['ratio']:.1f}",
                file=sys.stderr,
            )
        results["scenarios"] = per
        results["targets"] = targets(per)
        results["load_average_after"] = [round(x, 1) for x in os.getloadavg()]
        if args.memory and not failed:
            log_path, blf_path, _info = synthetic_logs("hyundai", HYUNDAI, workdir, args.frames)
            memory: dict[str, Any] = {}
            for fmt, path in (("candump", log_path), ("blf", blf_path)):
                base_m, ours_m = run_memory_worker("baseline", path), run_memory_worker("ours", path)
                memory[fmt] = {
                    "baseline": base_m,
                    "ours": ours_m,
                    "ratio": round(ours_m["rss_peak_kb"] / base_m["rss_peak_kb"], 3),
                }
            results["memory"] = memory
        results["ok"] = not failed
        print(json.dumps(results))
    if failed:
        return 1
    if args.require_targets and not all(t["met"] for t in results["targets"].values()):
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
