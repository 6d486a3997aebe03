"""Benchmark CAN log decoding: python-can reader + cantools per frame vs tcu's bulk path.

One synthetic log (fixed seed) is generated from ``hyundai_2015_ccan.dbc``: frames of
random messages of that DBC (payloads random bytes of the message's length, 1 ms
apart, 5 % frames with ids the DBC does not have), written once as candump ``-L`` and
once as BLF with python-can's writers. Then, per format, two worker subprocesses run
one after the other on the same file:

* baseline: ``can.LogReader`` and ``Database.decode_message(id, data,
  decode_choices=False)`` for every frame, counting the values;
* ours: ``tcu.can.logs.open_log`` chunks through ``FrameDecoder`` (precompiled numpy
  codecs), counting the values.

Both decode every frame into values held in memory and then drop them (streaming), and
both must report the same number of decoded frames and values, or the run fails.
Throughput is frames / wall time of the read+decode loop (imports and DBC loading
excluded). Memory is the worker's peak RSS (``VmHWM``); both workers import the
same modules (python-can, cantools, numpy, tcu) and load the DBC before the loop, so the
difference is the loop's own memory. "Ours" is also run on the first quarter of the log
to show that its peak does not grow with the log's length.

    .venv/bin/python tools/bench/decode.py --json                  # 1 M frames, ~30 s here
    .venv/bin/python tools/bench/decode.py --frames 100000 --json  # quick look

The last line printed is JSON with ``ratio_blf`` and ``ratio_candump`` (ours / baseline
frames per second) and the raw numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parents[2]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from tools.shared_data import shared_path  # noqa: E402 - after the sys.path fix above

DBC = shared_path("can/dbc/hyundai_2015_ccan.dbc")
SEED = 20261122
UNKNOWN_SHARE = 0.05


def generate(path_log: Path, path_blf: Path, frames: int) -> dict[str, Any]:
    import can
    import cantools
    import numpy as np

    db = cantools.database.load_file(str(DBC))
    assert isinstance(db, cantools.database.can.Database)
    messages = list(db.messages)
    known_ids = {m.frame_id for m in messages}
    rng = np.random.default_rng(SEED)
    unknown = [i for i in range(0x100, 0x7FF) if i not in known_ids][:40]
    choice = rng.integers(0, len(messages), frames)
    is_unknown = rng.random(frames) < UNKNOWN_SHARE
    pick_unknown = rng.integers(0, len(unknown), frames)
    raw = rng.integers(0, 256, (frames, 8), dtype=np.uint8)
    t0 = 1_700_000_000.0
    with (
        can.CanutilsLogWriter(str(path_log), channel="can0") as log_writer,
        can.BLFWriter(str(path_blf)) as blf_writer,
    ):
        for i in range(frames):
            if is_unknown[i]:
                ident, length = unknown[int(pick_unknown[i])], 8
            else:
                message = messages[int(choice[i])]
                ident, length = message.frame_id, message.length
            msg = can.Message(
                timestamp=t0 + i * 0.001,
                arbitration_id=ident,
                is_extended_id=False,
                data=raw[i, :length].tobytes(),
                channel=0,
            )
            log_writer.on_message_received(msg)
            blf_writer.on_message_received(msg)
    return {"frames": frames, "messages_in_dbc": len(messages), "seed": SEED}


def _status_kb(field: str) -> int:
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM), in KiB.

    VmHWM is the peak RSS of this process image. (``ru_maxrss`` is not used: Linux carries
    the parent's peak over ``execve``, so a worker would report the generator's peak.)
    """
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(side: str, log: Path, limit: int | None) -> dict[str, Any]:
    # Same imports on both sides, so peak RSS compares the loops, not the libraries.
    import can
    import cantools
    import numpy as np

    from tcu.can.logs import open_log
    from tcu.signals import compile_database, load_dbc
    from tcu.signals.decoder import FrameDecoder

    frames = decoded = values = 0
    if side == "baseline":
        db = cantools.database.load_file(str(DBC))
        assert isinstance(db, cantools.database.can.Database)
        rss_before = _status_kb("VmRSS")
        started = time.perf_counter()
        with can.LogReader(str(log)) as reader:
            for msg in reader:
                frames += 1
                try:
                    # a bytearray decodes as bytes do (cantools' annotation says bytes)
                    result = db.decode_message(msg.arbitration_id, msg.data, decode_choices=False)  # type: ignore[arg-type]
                except (KeyError, cantools.database.DecodeError):
                    result = None
                if result is not None:
                    decoded += 1
                    values += len(result)
                if limit is not None and frames >= limit:
                    break
        elapsed = time.perf_counter() - started
    else:
        decoder = FrameDecoder({None: compile_database(load_dbc(DBC))})
        rss_before = _status_kb("VmRSS")
        started = time.perf_counter()
        for whole in open_log(log):
            chunk = whole
            if limit is not None and frames + len(whole) > limit:
                chunk = whole.select(np.arange(limit - frames))
            frames += len(chunk)
            for block in decoder.decode(chunk):
                values += sum(int(p.sum()) for p in block.decoded.present.values())
            if limit is not None and frames >= limit:
                break
        decoded = decoder.counts.decoded
        elapsed = time.perf_counter() - started
    peak = _status_kb("VmHWM")
    return {
        "side": side,
        "frames": frames,
        "decoded": decoded,
        "values": values,
        "seconds": round(elapsed, 3),
        "frames_per_s": round(frames / elapsed),
        "rss_before_loop_kb": rss_before,
        "rss_peak_kb": peak,
    }


def run_worker(side: str, log: Path, limit: int | None = None) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", side, "--log", str(log)]
    if limit is not None:
        cmd += ["--limit", str(limit)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=1_000_000, help="frames in the synthetic log")
    parser.add_argument("--json", action="store_true", help="print the JSON line last (always printed)")
    parser.add_argument("--workdir", type=Path, help="keep the generated logs here (default: temp dir)")
    parser.add_argument("--worker", choices=("baseline", "ours"), help=argparse.SUPPRESS)
    parser.add_argument("--log", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.log, args.limit)))
        return 0

    with tempfile.TemporaryDirectory(prefix="tcu-bench-decode-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        log_path, blf_path = workdir / "synthetic.log", workdir / "synthetic.blf"
        started = time.perf_counter()
        info = generate(log_path, blf_path, args.frames)
        print(f"generated {args.frames} frames in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        results: dict[str, Any] = {
            "bench": "decode",
            "dbc": DBC.name,
            **info,
            "sizes_bytes": {"candump": log_path.stat().st_size, "blf": blf_path.stat().st_size},
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "memory": "peak RSS (VmHWM) of one worker subprocess per side; same imports on both sides",
        }
        for fmt, path in (("candump", log_path), ("blf", blf_path)):
            base = run_worker("baseline", path)
            ours = run_worker("ours", path)
            quarter = run_worker("ours", path, limit=max(1, args.frames // 4))
            if (base["decoded"], base["values"]) != (ours["decoded"], ours["values"]):
                raise SystemExit(f"{fmt}: baseline and ours disagree: {base} vs {ours}")
            ratio = ours["frames_per_s"] / base["frames_per_s"]
            memory_ratio = ours["rss_peak_kb"] / base["rss_peak_kb"]
            results[fmt] = {"baseline": base, "ours": ours, "ours_first_quarter": quarter}
            results[f"ratio_{fmt}"] = round(ratio, 2)
            results[f"memory_ratio_{fmt}"] = round(memory_ratio, 3)
            print(
                f"{fmt:8s} baseline {base['frames_per_s']:>10,} frames/s "
                f"peak {base['rss_peak_kb'] / 1024:.0f} MiB | "
                f"ours {ours['frames_per_s']:>10,} frames/s peak {ours['rss_peak_kb'] / 1024:.0f} MiB "
                f"(first quarter: {quarter['rss_peak_kb'] / 1024:.0f} MiB) | x{ratio:.1f}",
                file=sys.stderr,
            )
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
