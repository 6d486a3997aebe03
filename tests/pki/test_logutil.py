"""tcu.logutil.RateLimitedLog: refusal log lines a peer can trigger at will are bounded per key."""

from __future__ import annotations

import logging

import pytest

from tcu.logutil import RateLimitedLog


def test_burst_per_key_then_suppressed_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    limited = RateLimitedLog(logging.getLogger("t.rl"), burst=2, interval_s=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="t.rl"):
        logged = [limited.log("veh-1", logging.WARNING, "refused %s", i) for i in range(5)]
        assert logged == [True, True, False, False, False]
        assert limited.log("veh-2", logging.WARNING, "refused other")  # other keys have their own budget
        now[0] = 10.0
        assert limited.log("veh-1", logging.WARNING, "refused again")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "refused 0",
        "refused 1",
        "refused other",
        "refused again (3 similar lines suppressed in the last 10 s)",
    ]
    assert limited.suppressed_total == 3


def test_keys_are_bounded() -> None:
    limited = RateLimitedLog(logging.getLogger("t.rl2"), burst=1, max_keys=3, clock=lambda: 0.0)
    for key in range(10):
        assert limited.log(key, logging.INFO, "line")
    assert len(limited._windows) == 3
