"""Long fuzz runs: each target under atheris (libFuzzer), the minutes split across targets.

    .venv/bin/python tools/fuzz/run.py --minutes 10                 # all targets
    .venv/bin/python tools/fuzz/run.py --minutes 2 --target es10    # one target

(``tools/fuzz/run.sh`` runs this with the project's venv.) For every target a child
process writes the seeds into ``tools/fuzz/corpus/<target>/`` (built at run time from the
shared data) and fuzzes for its share of the time; libFuzzer writes a crashing input to
``tools/fuzz/crashes/<target>/crash-<sha1>`` (``timeout-`` for an input over 10 s,
``oom-`` over 2 GB) and stops that target. The summary gives executions and crashes per
target; the exit status is 1 if any target crashed (2 for a usage error).

Without atheris (``--engine mutate``, or automatically when it cannot be imported) the
child runs a plain loop instead: a random seed, mutated with the same operators the
hypothesis tests use (``_common.mutate``), each input under a 10 s limit; a failing input
is written to the same crash folder and the loop goes on.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

_HERE = Path(__file__).resolve().parent
_REPO = _HERE.parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from tools.fuzz.targets import TARGETS, load  # noqa: E402 - after the sys.path fix above

_TIMEOUT_S = 10
_RSS_LIMIT_MB = 2048
_RUNS_RE = re.compile(r"stat::number_of_executed_units:\s*(\d+)")
_DONE_RE = re.compile(r"Done (\d+) runs in")


def _write_corpus(name: str, corpus: Path) -> None:
    corpus.mkdir(parents=True, exist_ok=True)
    for seed in load(name).seeds():
        (corpus / f"seed-{hashlib.sha1(seed).hexdigest()}").write_bytes(seed)


def instrumented(name: str) -> tuple[ModuleType, Callable[[bytes], None]]:
    """atheris and the test function for target ``name``: its harness, imported with ``tcu``
    and ``tools`` instrumented, behind :func:`~tools.fuzz._common.guard_trace_cmp`."""
    import atheris  # type: ignore[import-untyped]  # no stubs published

    from tools.fuzz._common import guard_trace_cmp

    with atheris.instrument_imports(include=["tcu", "tools"]):
        harness = load(name)

    def test_one_input(data: bytes) -> None:
        # atheris.Fuzz() binds its native _trace_cmp when it starts, so the guard goes in
        # here (a no-op after the first input); without it every numpy comparison leaks.
        guard_trace_cmp(atheris)
        harness.one_input(data)

    return atheris, test_one_input


def _child_atheris(name: str, seconds: int, corpus: Path, crashes: Path) -> None:
    atheris, test_one_input = instrumented(name)
    _write_corpus(name, corpus)  # after the instrumented import: load() imports the harness
    crashes.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.argv[0],
        str(corpus),
        f"-max_total_time={seconds}",
        f"-timeout={_TIMEOUT_S}",
        f"-rss_limit_mb={_RSS_LIMIT_MB}",
        f"-artifact_prefix={crashes}/",
        "-print_final_stats=1",
        "-report_slow_units=1000000",
    ]
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


def _child_mutate(name: str, seconds: int, corpus: Path, crashes: Path) -> None:
    from tools.fuzz._common import HangError, mutate, random_ops, time_limit

    harness = load(name)
    seeds = harness.seeds()
    _write_corpus(name, corpus)
    rng = random.Random()
    deadline = time.monotonic() + seconds
    runs = found = 0
    while time.monotonic() < deadline:
        data = (
            mutate(rng.choice(seeds), random_ops(rng))
            if rng.random() < 0.9
            else rng.randbytes(rng.randrange(512))
        )
        runs += 1
        try:
            with time_limit(_TIMEOUT_S):
                harness.one_input(data)
        except (Exception, HangError):  # every escape is a finding here
            found += 1
            crashes.mkdir(parents=True, exist_ok=True)
            (crashes / f"crash-{hashlib.sha1(data).hexdigest()}").write_bytes(data)
            traceback.print_exc()
    print(f"stat::number_of_executed_units: {runs}", file=sys.stderr)


def _child(args: argparse.Namespace) -> int:
    logging.getLogger().addHandler(logging.NullHandler())  # no warning floods on stderr
    corpus = args.out / "corpus" / args.child
    crashes = args.out / "crashes" / args.child
    engine = args.engine
    if engine == "auto":
        try:
            import atheris  # noqa: F401
        except ImportError:
            engine = "mutate"
        else:
            engine = "atheris"
    print(f"engine: {engine}", file=sys.stderr, flush=True)
    if engine == "atheris":
        _child_atheris(args.child, args.seconds, corpus, crashes)
    else:
        _child_mutate(args.child, args.seconds, corpus, crashes)
    return 0


def _run_target(name: str, seconds: int, engine: str, out: Path) -> dict[str, object]:
    crashes = out / "crashes" / name
    before = set(crashes.iterdir()) if crashes.is_dir() else set()
    log_file = out / "crashes" / f"{name}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"tcu-fuzz-{name}-"))
    env = {**os.environ, "TMPDIR": str(scratch)}
    command = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--seconds", str(seconds)]
    command += ["--engine", engine, "--out", str(out)]
    started = time.monotonic()
    try:
        with log_file.open("w") as log:
            result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    text = log_file.read_text(errors="replace")
    runs = _RUNS_RE.findall(text) or _DONE_RE.findall(text)
    new = sorted(p.name for p in crashes.iterdir() if p not in before) if crashes.is_dir() else []
    engine_used = re.search(r"engine: (\w+)", text)
    return {
        "target": name,
        "engine": engine_used.group(1) if engine_used else engine,
        "seconds": round(time.monotonic() - started, 1),
        "executions": int(runs[-1]) if runs else None,
        "crashes": len(new),
        "crash_files": new,
        "exit_status": result.returncode,
        "log": str(log_file),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="total time, split across targets")
    parser.add_argument("--target", choices=sorted(TARGETS), help="fuzz only this target")
    parser.add_argument("--engine", choices=("auto", "atheris", "mutate"), default="auto")
    parser.add_argument(
        "--out", type=Path, default=_HERE, help="folder for corpus/ and crashes/ (default: tools/fuzz)"
    )
    parser.add_argument("--child", choices=sorted(TARGETS), help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=int, default=60, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    args = parser.parse_args(argv)
    if args.child:
        return _child(args)
    names = [args.target] if args.target else list(TARGETS)
    seconds = max(1, int(args.minutes * 60 / len(names)))
    results = []
    for name in names:
        print(f"fuzzing {name} for {seconds} s ...", flush=True)
        result = _run_target(name, seconds, args.engine, args.out.resolve())
        results.append(result)
        print(
            f"  {name}: {result['executions']} executions, {result['crashes']} crashes "
            f"({result['engine']}, {result['seconds']} s, log {result['log']})",
            flush=True,
        )
        for crash in result["crash_files"]:  # type: ignore[attr-defined]
            print(f"    {args.out / 'crashes' / name / crash}", flush=True)
    if args.json:
        print(json.dumps(results))
    failed = [r for r in results if r["crashes"] or r["executions"] is None]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
