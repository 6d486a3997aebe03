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
import importlib
import operator
import random
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

__all__ = [
    "REPO",
    "HangError",
    "guard_trace_cmp",
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


#: Operand types whose comparisons atheris's native ``_trace_cmp`` sees (it feeds ints,
#: strings and bytes to libFuzzer's compare hooks); their result is always a bool.
_TRACED_TYPES = frozenset({int, bool, float, str, bytes, bytearray, type(None)})
#: ``dis.cmp_op`` order, as ``COMPARE_OP`` numbers them.
_COMPARE = (operator.lt, operator.le, operator.eq, operator.ne, operator.gt, operator.ge)


def guard_trace_cmp(atheris: ModuleType) -> None:
    """Stop atheris from leaking the result of every comparison that is not a bool.

    ``atheris.instrument_imports`` replaces each ``a < b`` / ``a == b`` in the instrumented
    modules by ``atheris._trace_cmp(a, b, op, counter, is_const)``, looked up at every call.
    The native ``_trace_cmp`` (atheris 2.3 and 3.0.0 at least) keeps one reference too many
    to the result: harmless for ``True``/``False``, but a numpy comparison returns an array,
    so every ``arr == 10`` in the log readers leaked an array the size of the input. That is
    why the ``logs`` target ran out of memory after about 95 k runs (RSS 184 MB → 2 GB;
    tests/fuzz/test_fuzz_logs.py measures it). This wrapper passes only comparisons of
    plain scalars (:data:`_TRACED_TYPES`, the ones libFuzzer's hooks use) to the native
    function and compares everything else itself. ``atheris.Fuzz()`` binds its own native
    ``_trace_cmp`` when it starts, so call this from the test function (``run.py`` does);
    it is idempotent and cheap once installed.
    """
    native: Any = atheris._trace_cmp
    if getattr(native, "_tcu_guarded", False):
        return
    try:  # Python 3.12+ keeps flags in the low bits of COMPARE_OP's argument
        shift: int = importlib.import_module(f"{atheris.__name__}.version_dependent").CMP_OP_SHIFT_AMOUNT
    except (ImportError, AttributeError):
        shift = 0

    def trace_cmp(left: object, right: object, op: int, counter: int, is_const: bool) -> Any:
        if type(left) in _TRACED_TYPES and type(right) in _TRACED_TYPES:
            return native(left, right, op, counter, is_const)
        compare: Any = _COMPARE[op >> shift]
        return compare(left, right)

    trace_cmp._tcu_guarded = True  # type: ignore[attr-defined]
    module: Any = atheris
    module._trace_cmp = trace_cmp
