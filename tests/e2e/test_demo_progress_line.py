"""The demo's progress line says why nothing moves yet instead of printing zeros."""

from __future__ import annotations

from tcu.demo.run import progress_line


def test_before_the_first_frame_it_says_the_agent_is_starting() -> None:
    assert progress_line({}).startswith("agent starting (stats file not written yet)")
    assert progress_line({"frames": 0, "batches_acked": 0}).startswith("agent starting (bus not read yet)")
    assert "frames        0" not in progress_line({"frames": 0})


def test_once_frames_flow_it_counts_them() -> None:
    stats = {"frames": 19571, "signals_decoded": 75257, "batches_acked": 2, "batches_unacked": 0}
    line = progress_line(stats)
    assert line == "frames    19571  signals     75257  batches acked     2  unacked 0"
