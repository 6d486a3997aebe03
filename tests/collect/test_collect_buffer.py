"""Ring buffers and their sizing from campaigns, rates and a memory budget."""

from __future__ import annotations

import numpy as np
import pytest

from tcu.collect.buffer import (
    BYTES_PER_FRAME,
    BYTES_PER_SAMPLE,
    FrameRing,
    RingBuffer,
    buffer_needs,
    plan_buffers,
)
from tcu.collect.campaign import CampaignError, parse_campaigns
from tcu.signals.mapping import Catalog

SPEED, ACCEL, LAT, SOC, GEAR = 1, 2, 3, 4, 5

CAMPAIGNS = """\
[[campaign]]
name = "braking"
version = 1
priority = 10
signals = ["Vehicle.Speed"]
[campaign.condition]
expression = "Vehicle.Acceleration.Longitudinal < -6 and avg(Vehicle.Acceleration.Lateral, 2s) > 1"
pre_trigger_ms = 10000
post_trigger_ms = 5000

[[campaign]]
name = "long_history"
version = 1
priority = 1
signals = ["Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"]
[campaign.condition]
expression = "changed(Vehicle.Powertrain.Transmission.SelectedGear)"
pre_trigger_ms = 60000

[[campaign]]
name = "minutely"
version = 1
signals = ["Vehicle.Speed"]
periodic = {period_ms = 60000}
"""

RATES = {SPEED: 100.0, ACCEL: 100.0, LAT: 50.0, SOC: 1.0, GEAR: 10.0}


def test_collect_ring_buffer_wraps_in_order() -> None:
    buf = RingBuffer(5)
    assert len(buf) == 0 and buf.last_t_ns() is None
    buf.push(np.array([1, 2, 3], np.int64), np.array([10.0, 20.0, 30.0]))
    t, v = buf.view()
    assert t.tolist() == [1, 2, 3] and v.tolist() == [10.0, 20.0, 30.0]
    buf.push(np.array([4, 5, 6, 7], np.int64), np.array([40.0, 50.0, 60.0, 70.0]))
    t, v = buf.view()
    assert t.tolist() == [3, 4, 5, 6, 7] and v.tolist() == [30.0, 40.0, 50.0, 60.0, 70.0]
    assert buf.overwritten == 2 and buf.full and buf.last_t_ns() == 7
    buf.push(np.arange(100, 112, dtype=np.int64), np.arange(12, dtype=np.float64))
    t, v = buf.view()
    assert t.tolist() == [107, 108, 109, 110, 111] and v.tolist() == [7.0, 8.0, 9.0, 10.0, 11.0]
    assert buf.overwritten == 14
    assert buf.nbytes == 5 * BYTES_PER_SAMPLE
    # view() hands out copies: pushing more does not change what a caller holds.
    buf.push(np.array([200], np.int64), np.array([1.0]))
    assert t.tolist() == [107, 108, 109, 110, 111]


def test_collect_buffer_needs_and_sizing(catalog: Catalog) -> None:
    campaigns = parse_campaigns(CAMPAIGNS)
    assert buffer_needs(campaigns[0]) == {
        "Vehicle.Speed": 10_000_000_000,
        "Vehicle.Acceleration.Longitudinal": 0,
        "Vehicle.Acceleration.Lateral": 2_000_000_000,
    }
    assert buffer_needs(campaigns[2]) == {}
    plan = plan_buffers(campaigns, catalog, RATES, 1 << 20)
    # capacity = ceil(history_s * rate_hz * 1.1) + 2
    assert dict(plan.capacity) == {
        SPEED: 1102,  # 10 s pre-trigger at 100 Hz
        ACCEL: 2,  # read by the expression only: latest samples
        LAT: 112,  # avg over 2 s at 50 Hz
        SOC: 68,  # 60 s pre-trigger at 1 Hz
        GEAR: 2,
    }
    assert plan.total_bytes == (1102 + 2 + 112 + 68 + 2) * 16
    assert plan.campaign_bytes["braking"] == (1102 + 2 + 112) * 16
    assert plan.campaign_bytes["minutely"] == 0


def test_collect_buffer_budget_names_campaigns_that_do_not_fit(catalog: Catalog) -> None:
    campaigns = parse_campaigns(CAMPAIGNS, path="c.toml")
    need = (1102 + 2 + 112 + 68 + 2) * 16
    plan_buffers(campaigns, catalog, RATES, need)  # exactly fits
    with pytest.raises(CampaignError) as info:
        plan_buffers(campaigns, catalog, RATES, need - 1)
    text = str(info.value)
    # Higher priority first: "braking" fits, "long_history" does not.
    assert text.startswith("c.toml:11: ring buffers exceed the memory budget of 20575 bytes")
    assert "'long_history' (1120 bytes alone)" in text
    assert "'braking'" not in text
    with pytest.raises(CampaignError) as both:
        plan_buffers(campaigns, catalog, RATES, 1000)
    assert "'braking' (19456 bytes alone), 'long_history' (1120 bytes alone)" in str(both.value)


def test_collect_buffer_rate_required_for_history(catalog: Catalog) -> None:
    campaigns = parse_campaigns(CAMPAIGNS, path="c.toml")
    rates = {k: v for k, v in RATES.items() if k != LAT}
    with pytest.raises(
        CampaignError, match=r"c.toml:1: campaign 'braking': signal 'Vehicle.Acceleration.Lateral'"
    ):
        plan_buffers(campaigns, catalog, rates, 1 << 20)
    # A signal that is only read (no history) needs no rate.
    rates = {k: v for k, v in RATES.items() if k != ACCEL}
    assert plan_buffers(campaigns, catalog, rates, 1 << 20).capacity[ACCEL] == 2


def test_collect_frame_ring_keeps_payloads_in_order() -> None:
    ring = FrameRing(4)
    payloads = [bytes([i]) * (i % 9) for i in range(6)] + [bytes(range(64))]
    ring.push(np.arange(3, dtype=np.int64), payloads[:3])
    t, data = ring.view()
    assert t.tolist() == [0, 1, 2] and data == payloads[:3]
    ring.push(np.arange(3, 7, dtype=np.int64), payloads[3:])
    t, data = ring.view()
    assert t.tolist() == [3, 4, 5, 6] and data == payloads[3:]
    assert ring.overwritten == 3
    ring.push(np.arange(10, 20, dtype=np.int64), [bytes([k]) * 8 for k in range(10)])
    t, data = ring.view()
    assert t.tolist() == [16, 17, 18, 19] and data == [bytes([k]) * 8 for k in range(6, 10)]


FRAMES = """\
[[campaign]]
name = "braking_frames"
version = 1
signals = ["Vehicle.Speed"]
[campaign.condition]
expression = "Vehicle.Acceleration.Longitudinal < -6"
pre_trigger_ms = 2000
raw_frames = [{bus = "can0", arbitration_id = 0x123}, {bus = "can1", arbitration_id = 0x7FF}]
"""


def test_collect_frame_buffers_in_plan(catalog: Catalog) -> None:
    campaigns = parse_campaigns(FRAMES, path="f.toml")
    rates = {("can0", 0x123): 100.0, ("can1", 0x7FF): 10.0}
    plan = plan_buffers(campaigns, catalog, {SPEED: 100.0}, 1 << 20, frame_rate_hz=rates)
    assert dict(plan.frame_capacity) == {("can0", 0x123): 222, ("can1", 0x7FF): 24}
    assert plan.total_bytes == (222 + 2) * BYTES_PER_SAMPLE + (222 + 24) * BYTES_PER_FRAME
    with pytest.raises(CampaignError, match=r"raw frame can1/0x7FF needs 2000 ms of history"):
        plan_buffers(campaigns, catalog, {SPEED: 100.0}, 1 << 20, frame_rate_hz={("can0", 0x123): 100.0})
