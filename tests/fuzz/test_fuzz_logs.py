"""Fuzz the CAN log readers (harness: tools/fuzz/fuzz_logs.py), plus regression tests for
what the fuzzer found (or writing it showed) in the log readers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcu.can.logs import open_log
from tcu.errors import LogFormatError
from tools.fuzz import fuzz_logs as harness
from tools.fuzz._hypothesis import check_input, fuzz_settings, mutated
from tools.shared_data import shared_path


def test_fuzz_logs_every_seed_gives_frames(tmp_path):
    seeds = harness.seeds()
    assert {seed[0] for seed in seeds} == {0, 1, 2, 3}  # every format has a seed
    for index, seed in enumerate(seeds):
        fmt, suffix = harness.FORMATS[seed[0]]
        path = tmp_path / f"seed{index}{suffix}"
        path.write_bytes(seed[1:])
        assert sum(len(chunk) for chunk in open_log(path, fmt=fmt)) > 0, f"seed {index} ({fmt})"
        check_input(harness, seed)


@fuzz_settings(300)
@given(st.binary(max_size=4096))
def test_fuzz_logs_random_bytes(data):
    check_input(harness, data)


@fuzz_settings(1200)
@given(mutated(harness.seeds()))
def test_fuzz_logs_mutated_seeds(data):
    check_input(harness, data)


def test_fuzz_logs_candump_timestamp_beyond_int64_is_a_reported_line(tmp_path):
    # Found by the fuzzer: a timestamp with more seconds than int64 nanoseconds hold raised
    # OverflowError (slow path) or wrapped silently (fast path, up to 12 digits).
    path = tmp_path / "big.log"
    path.write_text(
        "(1436509052.249713) can0 123#11223344\n"
        "(9223372036.000001) can0 123#11\n"  # fast path shape, one second too many
        "(999999999999.5) can0 124#22 R\n"  # 12 digits
        f"({'9' * 5000}.1) can0 125#33\n"  # int() refuses over 4300 digits
        "(9223372035.999999) can0 126#44\n"  # the largest whole second that fits
    )
    reader = open_log(path)
    chunks = list(reader)
    t_ns = [int(t) for chunk in chunks for t in chunk.t_ns]
    assert t_ns == [1436509052249713000, 9223372035999999000]
    assert [p.line for p in reader.stats.problems] == [2, 3, 4]
    assert all("beyond int64 nanoseconds" in p.problem for p in reader.stats.problems)


def test_fuzz_logs_python_can_frames_out_of_range_are_reported(tmp_path):
    # Found by the fuzzer: python-can's TRC reader returns ids beyond 32 bits (and infinite
    # times), which made frames_from_messages raise OverflowError.
    path = tmp_path / "odd.trc"
    path.write_text(
        ";$FILEVERSION=1.1\n"
        ";$STARTTIME=44548.6028595139\n"
        "     1)     17535.4  Tx     00000100  8  00 00 00 00 00 00 00 00\n"
        "     2)     17536.0  Tx     AAAAAAAAA000100  8  00 00 00 00 00 00 00 00\n"
        "     3)     1e400  Tx     00000102  8  00 00 00 00 00 00 00 00\n"
        "     4)     17537.0  Tx     00000101  2  01 02\n"
    )
    reader = open_log(path)
    ids = [int(i) for chunk in reader for i in chunk.arbitration_id]
    assert ids == [0x100, 0x101]
    problems = [p.problem for p in reader.stats.problems]
    assert problems == [
        "frame 2: arbitration_id 0xaaaaaaaaa000100 is beyond 29 bits; skipped",
        "frame 2: timestamp inf s is beyond int64 nanoseconds; skipped",
    ]


def test_fuzz_logs_too_many_channel_names_is_a_log_format_error(tmp_path):
    # Noticed while writing the harness: the 32768th distinct channel name raised ValueError.
    path = tmp_path / "channels.log"
    path.write_text("".join(f"(1.{i % 1000:06d}) c{i} 123#11\n" for i in range(32769)))
    with pytest.raises(LogFormatError, match=r"channels\.log: more than 32767 distinct channel names"):
        for _chunk in open_log(path):
            pass


def test_fuzz_logs_trc_start_time_beyond_timedelta_is_reported(tmp_path):
    """python-can's TRC reader raised OverflowError on a huge STARTTIME (found by a 10-minute atheris run)."""
    path = tmp_path / "huge.trc"
    path.write_text(
        ";$FILEVERSION=1.1\n;$STARTTIME=8444028595139\n;\n      1)         0.0  Rx    0100  8  00 00\n"
    )
    reader = open_log(path)
    frames = sum(len(chunk) for chunk in reader)
    assert frames == 0
    assert reader.stats.bad_records >= 1
    assert "reader failed" in str(reader.stats.problems[0])


def test_fuzz_logs_blf_start_year_beyond_int64_ns_reads_without_overflow(tmp_path):
    """A BLF header dated in the year 9999 overflowed the frames' int64 ns times (found by atheris)."""
    import struct

    raw = bytearray(shared_path("can/logs/test_CanFdMessage.blf").read_bytes())
    struct.pack_into("<8H", raw, 40, 9999, 1, 5, 1, 0, 0, 0, 0)  # SYSTEMTIME start: 9999-01-01
    path = tmp_path / "future.blf"
    path.write_bytes(bytes(raw))
    reader = open_log(path)
    chunks = list(reader)
    assert sum(len(c) for c in chunks) > 0
    assert all(int(c.t_ns.min()) >= 0 for c in chunks)


def test_fuzz_logs_trc_negative_dlc_is_a_reported_frame(tmp_path):
    """python-can's TRC reader returns a frame with DLC -1 for a mangled line (found by hypothesis)."""
    path = tmp_path / "dlc.trc"
    path.write_text(
        ";$FILEVERSION=1.1\n;$STARTTIME=44548.6028595139\n;\n"
        "     1)     17535.4  Tx     00000100  8  00 00 00 00 00 00 00 00 \n"
        "     2)     17873.8  Tx     00000100 -1 8  00 00 00 00 00 00 00 00 \n"
    )
    reader = open_log(path)
    frames = sum(len(chunk) for chunk in reader)
    assert frames == 1
    assert any("DLC -1" in str(p) for p in reader.stats.problems)


# The logs target ran out of memory under atheris after about 95 k runs (RSS 184 MB → 2 GB):
# atheris's native _trace_cmp keeps a reference to every comparison result, and the readers'
# numpy comparisons (``arr == 10``) return arrays the size of the input.

_MEASURE = """
import gc, hashlib, json, os, sys
from pathlib import Path
import logging
import atheris
logging.getLogger().addHandler(logging.NullHandler())  # as run.py: no warning floods
if sys.argv[1] == "guarded":
    from tools.fuzz.run import instrumented
    _, one_input = instrumented("logs")          # what tools/fuzz/run.py fuzzes
else:
    with atheris.instrument_imports(include=["tcu", "tools"]):
        from tools.fuzz import fuzz_logs as harness
    one_input = harness.one_input
from tools.fuzz import fuzz_logs  # after the instrumented import, which it must not precede
assert any(c is atheris for c in fuzz_logs.one_input.__code__.co_consts), "not instrumented"
corpus = Path(sys.argv[2])
corpus.mkdir()
for seed in fuzz_logs.seeds():
    (corpus / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
WARM, RUNS = 200, 500
runs = 0
before = 0
def test_one(data):
    global runs, before
    one_input(data)
    runs += 1
    if runs == WARM:
        gc.collect(); before = sys.getallocatedblocks()
    elif runs == WARM + RUNS:
        gc.collect()
        print(json.dumps({"blocks_per_run": (sys.getallocatedblocks() - before) / RUNS}), flush=True)
        os._exit(0)
atheris.Setup([sys.argv[0], str(corpus), "-seed=7", "-rss_limit_mb=4000", "-max_total_time=300"], test_one)
atheris.Fuzz()
"""


def _blocks_per_run(mode: str, tmp_path) -> float:
    """Python memory blocks held per input after ``mode`` ran the logs target under atheris.Fuzz()."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(repo)}
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, mode, str(tmp_path / f"corpus-{mode}")],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        cwd=repo,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0 and lines, done.stderr[-2000:]
    return float(json.loads(lines[-1])["blocks_per_run"])


def test_fuzz_logs_memory_under_atheris_stays_bounded(tmp_path):
    pytest.importorskip("atheris")  # the `fuzz` extra; the fake-module test below always runs
    leaking = _blocks_per_run("bare", tmp_path)
    guarded = _blocks_per_run("guarded", tmp_path)
    # Measured here (atheris 3.0.0): 35 blocks per run bare, 0.1 guarded (1,200 runs after 300).
    assert leaking > 5, f"bare atheris no longer leaks ({leaking:.2f} blocks/run): guard_trace_cmp can go"
    assert guarded < 0.5, f"{guarded:.2f} Python blocks still held per run"


def test_fuzz_logs_trace_cmp_guard_keeps_no_array_results():
    import types

    import numpy as np

    from tools.fuzz._common import guard_trace_cmp

    held: list[object] = []  # what the native function keeps (one reference per result)

    def native(left, right, op, counter, is_const):
        result = (left < right, left <= right, left == right, left != right, left > right, left >= right)[op]
        held.append(result)
        return result

    fake = types.ModuleType("fake_atheris")
    fake._trace_cmp = native  # type: ignore[attr-defined]
    guard_trace_cmp(fake)
    guard_trace_cmp(fake)  # idempotent: not wrapped twice
    trace_cmp = fake._trace_cmp  # type: ignore[attr-defined]
    assert trace_cmp is not native and getattr(trace_cmp, "_tcu_guarded", False)

    arr = np.arange(5)
    for op, want in enumerate([arr < 2, arr <= 2, arr == 2, arr != 2, arr > 2, arr >= 2]):
        assert (trace_cmp(arr, 2, op, 0, False) == want).all()
    assert trace_cmp(np.int64(3), 3, 2, 0, False)
    assert held == []  # no numpy result reached the leaking native function
    assert trace_cmp(3, 4, 0, 1, False) is True
    assert trace_cmp(b"LOGG", b"LOGG", 2, 2, True) is True
    assert trace_cmp("a", "b", 3, 3, False) is True
    assert held == [True, True, True]  # plain scalars still feed libFuzzer's compare hooks


def test_fuzz_logs_run_py_guards_the_trace_cmp_that_fuzz_binds(monkeypatch):
    """run.py's test function installs the guard on every input, so also over the native
    _trace_cmp that atheris.Fuzz() binds when it starts (a guard set before Fuzz is lost)."""
    import contextlib
    import sys
    import types

    import numpy as np

    from tools.fuzz import run

    fake = types.ModuleType("atheris")
    fake.instrument_imports = lambda include: contextlib.nullcontext()  # type: ignore[attr-defined]
    fake._trace_cmp = lambda *args: None  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "atheris", fake)
    _atheris, test_one_input = run.instrumented("logs")

    held: list[object] = []

    def bound_by_fuzz(left, right, op, counter, is_const):
        result = (left < right, left <= right, left == right, left != right, left > right, left >= right)[op]
        held.append(result)
        return result

    fake._trace_cmp = bound_by_fuzz  # type: ignore[attr-defined]
    test_one_input(harness.seeds()[0])
    arr = np.arange(3)
    assert (fake._trace_cmp(arr, 1, 2, 0, False) == (arr == 1)).all()  # type: ignore[attr-defined]
    assert fake._trace_cmp(1, 1, 2, 0, False) is True  # type: ignore[attr-defined]
    assert held == [True]
