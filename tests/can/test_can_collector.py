"""Per-bus frame buffers: one hand-off per tick for all buses, bounded, overflow counted."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from tcu.can.collector import FrameCollector
from tcu.frames import FrameBatch


def _frames(bus: str, ids: list[int], t0: int = 0, width: int = 8) -> FrameBatch:
    payloads = [bytes([i & 0xFF]) * width for i in ids]
    return FrameBatch.of_payloads(
        bus, np.arange(t0, t0 + len(ids), dtype=np.int64), np.array(ids, np.uint32), payloads
    )


def test_take_hands_out_every_bus_in_one_batch_in_arrival_order_per_bus() -> None:
    col = FrameCollector(["can0", "can1", "can2"])
    assert col.take() is None
    assert col.put("can1", _frames("can1", [1, 2])) == "ok"
    assert col.put("can0", _frames("can0", [3])) == "ok"
    assert col.put("can1", _frames("can1", [4], t0=10, width=12)) == "ok"  # a CAN FD payload widens the batch
    batch = col.take()
    assert batch is not None
    assert batch.channels == ("can0", "can1", "can2")
    assert batch.channel.tolist() == [0, 1, 1, 1]
    assert batch.arbitration_id.tolist() == [3, 1, 2, 4]
    assert batch.t_ns.tolist() == [0, 0, 1, 10]
    assert (
        batch.data.shape == (4, 64)
        and batch.payload(3) == bytes([4]) * 12
        and batch.payload(0) == b"\x03" * 8
    )
    assert batch.dlc.tolist() == [8, 8, 8, 12]
    assert col.take() is None and col.takes == 1 and col.taken_frames == 4


def test_a_full_buffer_drops_the_new_batch_and_counts_it() -> None:
    col = FrameCollector(["a", "b"], max_frames=4)
    assert col.put("a", _frames("a", [1, 2, 3])) == "ok"
    assert col.put("a", _frames("a", [4, 5])) == "dropped"  # 3 + 2 > 4: drop newest, whole
    assert col.put("b", _frames("b", [6, 7, 8, 9])) == "ok"  # the other bus has its own bound
    assert col.overflow == {"a": 2, "b": 0}
    loss = col.take_overflow()
    assert loss is not None and loss.frames == {"a": 2} and loss.total == 2 and loss.payload_bytes == 16
    assert loss.first_ns > 0 and col.take_overflow() is None
    batch = col.take()
    assert batch is not None and batch.arbitration_id.tolist() == [1, 2, 3, 6, 7, 8, 9]
    assert col.put("a", _frames("a", [4, 5, 6, 7, 8])) == "ok"  # larger than the bound, into an empty buffer


def test_a_blocking_bus_waits_for_the_take_instead_of_dropping() -> None:
    col = FrameCollector(["replay"], max_frames=2, block=["replay"])
    assert col.put("replay", _frames("replay", [1, 2])) == "ok"
    results: list[str] = []
    thread = threading.Thread(target=lambda: results.append(col.put("replay", _frames("replay", [3]))))
    thread.start()
    time.sleep(0.2)
    assert results == []  # waiting for room
    first = col.take()
    thread.join(5)
    assert results == ["ok"] and first is not None and first.arbitration_id.tolist() == [1, 2]
    second = col.take()
    assert second is not None and second.arbitration_id.tolist() == [3]
    assert col.overflow == {"replay": 0}
    # Stopped while full: nothing added, nothing counted as dropped.
    col.put("replay", _frames("replay", [4, 5]))
    stopped = threading.Event()
    stopped.set()
    assert col.put("replay", _frames("replay", [6]), stopped=stopped) == "stopped"
    assert col.put("replay", _frames("replay", [6]), deadline=time.monotonic() + 0.05) == "stopped"


def test_bus_names_must_be_unique() -> None:
    with pytest.raises(ValueError, match="unique"):
        FrameCollector(["a", "a"])
