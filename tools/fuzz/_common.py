"""Shared pieces of the fuzz harnesses: where seeds live, a scratch directory, a seed
mutator (used by the hypothesis tests and by the fallback long run) and a hang guard.

Every harness module in this folder exposes::

    NAME: str                      # the target name used by run.sh
    def seeds() -> list[bytes]     # seed inputs, built at run time from the shared data
    def one_input(data: bytes) -> None   # raises only on a real bug

so atheris (``run.py``) and hypothesis (``tests/fuzz``) drive the same code.
"""

from __future__ import annotations

import atexit
import contextlib
import random
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType

__all__ = [
    "REPO",
    "HangError",
    "mutate",
    "random_ops",
    "scratch_dir",
    "time_limit",
]

REPO = Path(__file__).resolve().parents[2]
# Seeds from the shared third-party data come through tools.shared_data.shared_path.

_SCRATCH: Path | None = None


def scratch_dir() -> Path:
    """A private temporary directory for this process, removed at exit."""
    global _SCRATCH  # noqa: PLW0603 - one directory per process, created lazily
    if _SCRATCH is None:
        _SCRATCH = Path(tempfile.mkdtemp(prefix="tcu-fuzz-"))
        atexit.register(shutil.rmtree, _SCRATCH, True)
    return _SCRATCH


class HangError(BaseException):
    """One input took longer than the time limit (raised by :func:`time_limit`).

    A ``BaseException``, so that no ``except Exception`` in the code under test swallows it.
    """


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`HangError` inside the block once ``seconds`` have passed.

    Uses ``SIGALRM`` (main thread only; elsewhere the block simply runs). A Python-level
    infinite loop is interrupted; a hang inside one C call is interrupted when it returns.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise HangError(f"one input took more than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


_INTERESTING = (
    b"\x00",
    b"\xff",
    b"\x7f",
    b"\x80",
    b"\xff\xff\xff\xff",
    b"\x00\x00\x00\x80",
    b"\x81\xff",
    b"\x84\xff\xff\xff\xff",
    b"-1",
    b"99999999999999999999",
    b"\n",
    b"\r\n",
    b",",
    b'"',
    b"(",
    b"\xc3\xa9",
)


def mutate(seed: bytes, ops: Sequence[tuple[int, int, int]]) -> bytes:
    """Apply ``ops`` to ``seed``; each op is ``(kind, position, value)`` with any ints.

    Kinds (modulo 7): flip a bit, overwrite a byte, insert a byte, delete a run of up to
    16 bytes, truncate, duplicate a run of up to 64 bytes, insert an "interesting" token.
    """
    buf = bytearray(seed)
    for op, position, value in ops:
        kind = op % 7
        size = len(buf)
        pos = position % (size + 1)
        if kind == 0 and size:
            buf[pos % size] ^= 1 << (value % 8)
        elif kind == 1 and size:
            buf[pos % size] = value % 256
        elif kind == 2:
            buf.insert(pos, value % 256)
        elif kind == 3:
            del buf[pos : pos + 1 + value % 16]
        elif kind == 4:
            del buf[pos:]
        elif kind == 5:
            buf[pos:pos] = buf[pos : pos + 1 + value % 64]
        elif kind == 6:
            buf[pos:pos] = _INTERESTING[value % len(_INTERESTING)]
    return bytes(buf)


def random_ops(rng: random.Random, max_ops: int = 8) -> list[tuple[int, int, int]]:
    """Random mutation ops for :func:`mutate` (the fallback long run uses these)."""
    return [
        (rng.randrange(7), rng.randrange(1 << 30), rng.randrange(1 << 16))
        for _ in range(rng.randint(1, max_ops))
    ]
