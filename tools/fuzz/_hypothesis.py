"""Hypothesis side of the harnesses: a seed-mutation strategy and a checked call.

Used by ``tests/fuzz``; the strategy shrinks toward the unmutated seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from tools.fuzz._common import HangError, mutate, time_limit

__all__ = ["HANG_LIMIT_S", "check_input", "fuzz_settings", "mutated"]

#: An input that takes longer than this fails the test as a hang.
HANG_LIMIT_S = 2.0

_OPS = st.lists(
    st.tuples(st.integers(0, 6), st.integers(0, 1 << 20), st.integers(0, 1 << 16)), min_size=1, max_size=8
)


def fuzz_settings(max_examples: int) -> settings:
    """``max_examples`` inputs, no per-example deadline (:func:`check_input` guards hangs)."""
    return settings(max_examples=max_examples, deadline=None, suppress_health_check=list(HealthCheck))


def mutated(seeds: Sequence[bytes]) -> st.SearchStrategy[bytes]:
    """Bytes made from one of ``seeds`` by up to 8 flips, inserts, deletions, truncations."""
    return st.builds(mutate, st.sampled_from(list(seeds)), _OPS)


def check_input(harness: ModuleType, data: bytes, *, limit_s: float = HANG_LIMIT_S) -> None:
    """Run ``harness.one_input(data)``; a hang over ``limit_s`` fails as an ``AssertionError``."""
    try:
        with time_limit(limit_s):
            harness.one_input(data)
    except HangError as exc:
        raise AssertionError(f"{harness.__name__}: {exc}; input {data[:200]!r}") from None
