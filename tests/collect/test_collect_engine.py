"""The campaign engine on scripted series: events, triggers, on-change, periodic, replace()."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping

import numpy as np
import numpy.typing as npt
import pytest

from tcu.collect.campaign import CampaignError, parse_campaigns
from tcu.collect.engine import CampaignEngine, CapturedEvent
from tcu.frames import FrameBatch
from tcu.signals.decoder import SignalColumns
from tcu.signals.mapping import Catalog

SPEED, ACCEL, LAT, SOC, GEAR = 1, 2, 3, 4, 5
MS = 1_000_000
RATES = {SPEED: 50.0, ACCEL: 100.0, LAT: 100.0, SOC: 1.0, GEAR: 10.0}
Series = dict[int, tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]]


def batches(
    series: Mapping[int, tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]], batch_ns: int
) -> Iterator[SignalColumns]:
    """Cut full per-signal series into time slices, like the agent's reader batches."""
    end = max(int(t[-1]) for t, _ in series.values())
    start = 0
    while start <= end:
        cols: SignalColumns = []
        for sid, (t, v) in series.items():
            m = (t >= start) & (t < start + batch_ns)
            if m.any():
                cols.append((sid, t[m], v[m]))
        yield cols
        start += batch_ns


def run(engine: CampaignEngine, series: Series, batch_ns: int) -> tuple[list[CapturedEvent], SignalColumns]:
    events: list[CapturedEvent] = []
    samples: SignalColumns = []
    for cols in batches(series, batch_ns):
        out = engine.process(cols)
        events.extend(out.events)
        samples.extend(out.samples)
    return events, samples


def braking_drive() -> tuple[Series, list[int]]:
    """60 s: accel at 100 Hz with 3 hard-braking episodes (each crossing -6 a few times), speed at 50 Hz."""
    rng = np.random.default_rng(3)
    t_accel = np.arange(0, 60_000, 10, dtype=np.int64) * MS
    accel = rng.normal(0.0, 0.5, len(t_accel))
    triggers = []
    for start_ms in (10_000, 25_000, 40_000):
        idx = np.flatnonzero((t_accel >= start_ms * MS) & (t_accel < (start_ms + 1_500) * MS))
        accel[idx] = -8.0
        accel[idx[20:25]] = -5.0  # bounces above the threshold inside the episode
        triggers.append(int(t_accel[idx[0]]))
    t_speed = np.arange(3, 60_000, 20, dtype=np.int64) * MS  # offset: speed never shares a time with accel
    speed = 80 + 10 * np.sin(t_speed / 7e9)
    return {ACCEL: (t_accel, accel), SPEED: (t_speed, speed)}, triggers


BRAKING = """\
[[campaign]]
name = "hard_braking"
version = 4
priority = 9
signals = ["Vehicle.Speed", "Vehicle.Acceleration.Longitudinal"]
[campaign.condition]
expression = "Vehicle.Acceleration.Longitudinal < -6"
trigger = "{trigger}"
min_trigger_interval_ms = {interval}
pre_trigger_ms = 10000
post_trigger_ms = 5000
"""


def braking(trigger: str = "rising_edge", interval: int = 2000) -> str:
    return BRAKING.format(trigger=trigger, interval=interval)


@pytest.mark.parametrize("batch_ms", [20, 333, 5000])
def test_collect_three_hard_brakings_three_events_exact_windows(catalog: Catalog, batch_ms: int) -> None:
    series, triggers = braking_drive()
    engine = CampaignEngine(parse_campaigns(braking()), catalog, RATES, 1 << 20)
    events, samples = run(engine, series, batch_ms * MS)
    assert samples == []
    assert [e.trigger_t_ns for e in events] == triggers
    for e in events:
        assert (e.campaign, e.version, e.priority) == ("hard_braking", 4, 9)
        assert not e.truncated and not e.history_incomplete
        assert (e.start_t_ns, e.end_t_ns) == (e.trigger_t_ns - 10_000 * MS, e.trigger_t_ns + 5_000 * MS)
        assert [sid for sid, _, _ in e.columns] == [SPEED, ACCEL]
        for sid, t, v in e.columns:
            full_t, full_v = series[sid]
            inside = (full_t >= e.start_t_ns) & (full_t <= e.end_t_ns)
            np.testing.assert_array_equal(t, full_t[inside])
            np.testing.assert_array_equal(v, full_v[inside])
            assert len(t) == {SPEED: 750, ACCEL: 1501}[sid]
    assert engine.flush() == []
    assert engine.stats.triggers == 3


def test_collect_rising_edge_vs_always_and_min_interval(catalog: Catalog) -> None:
    series, triggers = braking_drive()
    t, v = series[ACCEL]
    true_times = t[v < -6]
    # rising edge without min interval: every false->true transition (3 episodes, each re-crossing once).
    engine = CampaignEngine(parse_campaigns(braking(interval=0)), catalog, RATES, 1 << 20)
    events, _ = run(engine, series, 100 * MS)
    truth = v < -6
    edges = t[truth & ~np.concatenate(([False], truth[:-1]))]
    assert [e.trigger_t_ns for e in events] == edges.tolist()
    assert len(events) == 6
    # min interval 2 s keeps only the first edge of each episode.
    engine = CampaignEngine(parse_campaigns(braking(interval=2000)), catalog, RATES, 1 << 20)
    assert [e.trigger_t_ns for e in run(engine, series, 100 * MS)[0]] == triggers
    # always: a trigger at every true evaluation, thinned by the min interval (here 500 ms).
    engine = CampaignEngine(
        parse_campaigns(braking("always", 500)), catalog, RATES, 1 << 20, max_pending_events=1000
    )
    got = [e.trigger_t_ns for e in run(engine, series, 100 * MS)[0]]
    expected: list[int] = []
    for when in true_times.tolist():
        if not expected or when - expected[-1] >= 500 * MS:
            expected.append(when)
    assert got == expected
    assert len(got) == 9  # 0, 500 and 1000 ms into each 1.5 s episode (bounce at 200-250 ms)


def test_collect_evaluation_order_across_signals_and_ties(catalog: Catalog) -> None:
    text = """\
[[campaign]]
name = "fast_braking"
version = 1
signals = ["Vehicle.Speed"]
[campaign.condition]
expression = "Vehicle.Speed > 30 and Vehicle.Acceleration.Longitudinal < -6"
"""
    campaigns = parse_campaigns(text)
    speed = (np.array([0, 100, 300], np.int64), np.array([20.0, 40.0, 10.0]))
    accel = (np.array([50, 150, 300, 400], np.int64), np.array([-7.0, -7.0, -7.0, -1.0]))
    # Both signals in one batch: at t=100 speed is 40 and accel (from t=50) is -7 -> trigger at 100.
    for split in ([], [120], [60, 100, 101]):
        engine = CampaignEngine(campaigns, catalog, RATES, 1 << 20)
        edges = [0, *split, 10_000]
        fired: list[int] = []
        for lo, hi in itertools.pairwise(edges):
            cols: SignalColumns = []
            for sid, (t, v) in ((SPEED, speed), (ACCEL, accel)):
                m = (t >= lo) & (t < hi)
                cols.append((sid, t[m], v[m]))
            fired += [e.trigger_t_ns for e in engine.process(cols).events]
        assert fired == [100], split
        # Evaluations: distinct times 0, 50, 100, 150, 300 (tie: speed and accel both at 300), 400.
        assert engine.stats.evaluations == 6


def test_collect_flush_marks_truncated_and_keeps_samples(catalog: Catalog) -> None:
    series, triggers = braking_drive()
    cut = triggers[0] + 2_000 * MS  # stop 2 s into the 5 s post-trigger window
    part = {sid: (t[t < cut], v[t < cut]) for sid, (t, v) in series.items()}
    engine = CampaignEngine(parse_campaigns(braking()), catalog, RATES, 1 << 20)
    events, _ = run(engine, part, 20 * MS)
    assert events == []
    (event,) = engine.flush()
    assert event.truncated and event.trigger_t_ns == triggers[0]
    for sid, t, _ in event.columns:
        full_t = series[sid][0]
        np.testing.assert_array_equal(t, full_t[(full_t >= event.start_t_ns) & (full_t < cut)])
    assert engine.flush() == []


def test_collect_history_incomplete_when_rate_underestimated(catalog: Catalog) -> None:
    series, triggers = braking_drive()
    rates = {**RATES, SPEED: 5.0}  # real rate is 50 Hz: the buffer holds about 1.1 s, not 10 s
    engine = CampaignEngine(parse_campaigns(braking()), catalog, rates, 1 << 20)
    events, _ = run(engine, series, 20 * MS)
    assert [e.trigger_t_ns for e in events] == triggers
    assert all(e.history_incomplete for e in events)
    speed_t = events[0].columns[0][1]
    assert speed_t[0] > events[0].start_t_ns


def test_collect_max_pending_events_drops_and_counts(catalog: Catalog) -> None:
    series, _ = braking_drive()
    engine = CampaignEngine(
        parse_campaigns(braking("always", 0)), catalog, RATES, 1 << 20, max_pending_events=4
    )
    events, _ = run(engine, series, 20 * MS)
    assert len(events) == engine.stats.triggers
    assert engine.stats.triggers_dropped > 0
    assert engine.stats.triggers + engine.stats.triggers_dropped == int((series[ACCEL][1] < -6).sum())


ON_CHANGE = """\
[[campaign]]
name = "speed_changes"
version = 1
signals = ["Vehicle.Speed"]
[campaign.on_change]
min_interval_ms = {interval}
deadband = {{"Vehicle.Speed" = 0.5}}
"""


@pytest.mark.parametrize(("interval", "kept"), [(0, [0, 2, 4, 5]), (250, [0, 3, 6])])
def test_collect_on_change_deadband(catalog: Catalog, interval: int, kept: list[int]) -> None:
    t = np.arange(7, dtype=np.int64) * 100 * MS
    v = np.array([10.0, 10.2, 10.6, 10.7, 11.2, 9.0, 9.0])
    engine = CampaignEngine(parse_campaigns(ON_CHANGE.format(interval=interval)), catalog, RATES, 1 << 20)
    # One sample per call: the state carries across calls.
    got: list[int] = []
    for i in range(len(t)):
        out = engine.process([(SPEED, t[i : i + 1], v[i : i + 1])])
        got += [int(x) // (100 * MS) for _, ts, _ in out.samples for x in ts]
    assert got == kept
    engine = CampaignEngine(parse_campaigns(ON_CHANGE.format(interval=interval)), catalog, RATES, 1 << 20)
    ((sid, ts, vs),) = engine.process([(SPEED, t, v)]).samples
    assert sid == SPEED and ts.tolist() == t[kept].tolist() and vs.tolist() == v[kept].tolist()


PERIODIC = """\
[[campaign]]
name = "slow"
version = 1
signals = ["Vehicle.Speed", "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"]
periodic = {period_ms = 1000}

[[campaign]]
name = "fast_speed"
version = 1
signals = ["Vehicle.Speed", "Vehicle.Acceleration.Lateral"]
[campaign.periodic]
period_ms = 60000
groups = [{signals = ["Vehicle.Speed"], period_ms = 500}]
"""


def test_collect_periodic_union_appears_once(catalog: Catalog) -> None:
    t = np.arange(5, 10_000, 20, dtype=np.int64) * MS  # 50 Hz for 10 s
    v = np.arange(len(t), dtype=np.float64)
    series: Series = {SPEED: (t, v), SOC: (t, v * 2), LAT: (t, -v)}
    engine = CampaignEngine(parse_campaigns(PERIODIC), catalog, RATES, 1 << 20)
    _, samples = run(engine, series, 30 * MS)
    got: dict[int, list[int]] = {}
    for sid, ts, vs in samples:
        got.setdefault(sid, []).extend(ts.tolist())
        np.testing.assert_array_equal(vs, series[sid][1][np.isin(series[sid][0], ts)])
    # Speed: the 1 s and 500 ms windows; the 500 ms windows include the 1 s ones: each sample once.
    assert got[SPEED] == [int(t[(t // (500 * MS)) == w][0]) for w in range(20)]
    assert got[SOC] == [int(t[(t // (1000 * MS)) == w][0]) for w in range(10)]
    assert got[LAT] == [int(t[0])]
    assert engine.stats.samples_out == 20 + 10 + 1


def test_collect_replace_keeps_old_set_on_error(catalog: Catalog) -> None:
    series, triggers = braking_drive()
    old = parse_campaigns(braking())
    engine = CampaignEngine(old, catalog, RATES, 1 << 20)
    first = {
        sid: (t[t < triggers[0] + 1_000 * MS], v[t < triggers[0] + 1_000 * MS])
        for sid, (t, v) in series.items()
    }
    events, _ = run(engine, first, 20 * MS)
    assert events == [] and engine.active() == [("hard_braking", 4)]
    bad = parse_campaigns(
        braking().replace('["Vehicle.Speed", ', '["Vehicle.Sped", ').replace("version = 4", "version = 5")
    )
    with pytest.raises(CampaignError, match=r"Vehicle\.Sped"):
        engine.replace(bad)
    too_big = parse_campaigns(braking().replace("version = 4", "version = 5"))
    engine.memory_budget_bytes = 100  # the new set's buffers do not fit: refused, old set runs on
    with pytest.raises(CampaignError, match="memory budget"):
        engine.replace(too_big)
    engine.memory_budget_bytes = 1 << 20
    assert engine.active() == [("hard_braking", 4)]
    # Unchanged campaign kept with its open capture; a new periodic campaign joins.
    closed = engine.replace([*old, *parse_campaigns(PERIODIC)])
    assert closed == []
    assert engine.active() == [("hard_braking", 4), ("slow", 1), ("fast_speed", 1)]
    rest = {
        sid: (t[t >= triggers[0] + 1_000 * MS], v[t >= triggers[0] + 1_000 * MS])
        for sid, (t, v) in series.items()
    }
    events, samples = run(engine, rest, 20 * MS)
    assert [e.trigger_t_ns for e in events] == triggers
    full_t = series[SPEED][0]
    e = events[0]
    np.testing.assert_array_equal(e.columns[0][1], full_t[(full_t >= e.start_t_ns) & (full_t <= e.end_t_ns)])
    assert samples
    # A changed definition (new version) closes the old campaign's open capture as truncated.
    cut = {
        sid: (t[t < triggers[1] + 100 * MS], v[t < triggers[1] + 100 * MS]) for sid, (t, v) in series.items()
    }
    engine = CampaignEngine(old, catalog, RATES, 1 << 20)
    run(engine, cut, 20 * MS)
    (closed_event,) = engine.replace(too_big)
    assert closed_event.truncated and closed_event.trigger_t_ns == triggers[1]
    assert engine.active() == [("hard_braking", 5)]


@pytest.mark.parametrize(
    "expression",
    [
        "avg(Vehicle.Acceleration.Longitudinal, 500ms) < -6",
        "max(Vehicle.Acceleration.Longitudinal, 300ms) - min(Vehicle.Acceleration.Longitudinal, 300ms) > 2.5",
        "min(Vehicle.Acceleration.Longitudinal, 1s) < -7 and avg(Vehicle.Speed, 2s) > 75",
    ],
)
def test_collect_windows_across_batches_match_whole_series(catalog: Catalog, expression: str) -> None:
    """Windows read the ring buffers: 20 ms batches give the triggers of one evaluation over everything."""
    series, _ = braking_drive()
    text = braking(interval=0).replace('"Vehicle.Acceleration.Longitudinal < -6"', f'"{expression}"')
    (campaign,) = parse_campaigns(text.replace("post_trigger_ms = 5000", "post_trigger_ms = 0"))
    engine = CampaignEngine([campaign], catalog, RATES, 1 << 20)
    got = [e.trigger_t_ns for e in run(engine, series, 20 * MS)[0]]
    names = {SPEED: "Vehicle.Speed", ACCEL: "Vehicle.Acceleration.Longitudinal"}
    expr = campaign.mode.expression  # type: ignore[union-attr]
    reads = [sid for sid in (SPEED, ACCEL) if names[sid] in expr.signals]
    times = np.unique(np.concatenate([series[sid][0] for sid in reads]))
    truth = expr.evaluate({names[sid]: series[sid] for sid in (SPEED, ACCEL)}, times)
    expected = times[truth & ~np.concatenate(([False], truth[:-1]))].tolist()
    assert len(expected) >= 3
    assert got == expected
    assert engine.stats.triggers_dropped == 0


def test_collect_raw_frames_captured_with_the_window(catalog: Catalog) -> None:
    series, triggers = braking_drive()
    text = braking().replace(
        "post_trigger_ms = 5000",
        'post_trigger_ms = 5000\nraw_frames = [{bus = "can0", arbitration_id = 0x123}]',
    )
    frame_t = np.arange(1, 60_000, 10, dtype=np.int64) * MS  # 0x123 at 100 Hz; 0x124 and can1 are noise
    payload = [int(i).to_bytes(4, "little") + b"\xaa" * (i % 5) for i in range(len(frame_t))]
    engine = CampaignEngine(
        parse_campaigns(text), catalog, RATES, 1 << 20, frame_rates={("can0", 0x123): 100.0}
    )
    events: list[CapturedEvent] = []
    for cols in batches(series, 20 * MS):
        if cols:
            lo = int(min(t[0] for _, t, _ in cols))
            sel = np.flatnonzero(
                (frame_t >= lo // (20 * MS) * 20 * MS) & (frame_t < (lo // (20 * MS) + 1) * 20 * MS)
            )
            if len(sel):
                ids = np.array([0x123, 0x124] * len(sel), np.uint32)
                t2 = np.repeat(frame_t[sel], 2)
                data = [payload[i] if k == 0 else b"\x00" for i in sel.tolist() for k in (0, 1)]
                engine.record_frames(FrameBatch.of_payloads("can0", t2, ids, data))
                engine.record_frames(
                    FrameBatch.of_payloads(
                        "can1", frame_t[sel], np.full(len(sel), 0x123, np.uint32), [b"x"] * len(sel)
                    )
                )
        events.extend(engine.process(cols).events)
    assert [e.trigger_t_ns for e in events] == triggers
    for e in events:
        (frames,) = e.frames
        assert (frames.bus, frames.arbitration_id) == ("can0", 0x123)
        inside = np.flatnonzero((frame_t >= e.start_t_ns) & (frame_t <= e.end_t_ns))
        np.testing.assert_array_equal(frames.t_ns, frame_t[inside])
        assert list(frames.data) == [payload[i] for i in inside.tolist()]
        assert len(frames.data) == 1500 and not e.history_incomplete


def test_collect_out_of_order_samples_of_buffered_signals_dropped(catalog: Catalog) -> None:
    engine = CampaignEngine(parse_campaigns(braking()), catalog, RATES, 1 << 20)
    t = np.array([100, 200, 300], np.int64) * MS
    engine.process([(ACCEL, t, np.array([0.0, 0.0, 0.0]))])
    late = np.array([250, 300, 310], np.int64) * MS  # 250 ms is older than the buffered 300 ms
    out = engine.process([(ACCEL, late, np.array([-9.0, -9.0, -9.0]))])
    assert engine.stats.out_of_order_dropped == 1
    assert out.events == [] and engine.watermark_ns == 310 * MS
    (event,) = engine.flush()
    assert event.trigger_t_ns == 300 * MS and event.truncated
    np.testing.assert_array_equal(event.columns[1][1], np.array([100, 200, 300, 300, 310]) * MS)


def test_collect_raw_frames_of_a_multi_bus_batch_go_to_their_own_bus(catalog: Catalog) -> None:
    """One batch holding several buses (the agent's tick): each bus's frames are captured under its name."""
    series, triggers = braking_drive()
    text = braking().replace(
        "post_trigger_ms = 5000",
        "post_trigger_ms = 5000\nraw_frames = ["
        '{bus = "can0", arbitration_id = 0x123}, {bus = "can1", arbitration_id = 0x124}]',
    )
    frame_t = np.arange(1, 60_000, 10, dtype=np.int64) * MS
    engine = CampaignEngine(
        parse_campaigns(text),
        catalog,
        RATES,
        1 << 20,
        frame_rates={("can0", 0x123): 100.0, ("can1", 0x124): 100.0},
    )
    events: list[CapturedEvent] = []
    for cols in batches(series, 20 * MS):
        if cols:
            lo = int(min(t[0] for _, t, _ in cols)) // (20 * MS) * 20 * MS
            sel = np.flatnonzero((frame_t >= lo) & (frame_t < lo + 20 * MS))
            if len(sel):
                n = len(sel)
                # Channel 0 is can1 and channel 1 is can0: the names decide, not the position.
                # Both buses carry 0x123 and 0x124; only (can0, 0x123) and (can1, 0x124) are captured.
                t = np.concatenate([frame_t[sel]] * 4)
                ids = np.array([0x123] * n + [0x124] * n + [0x123] * n + [0x124] * n, np.uint32)
                chan = np.array([0] * (2 * n) + [1] * (2 * n), np.int16)
                payloads = [b"1-123"] * n + [b"1-124"] * n + [b"0-123"] * n + [b"0-124"] * n
                one = FrameBatch.of_payloads("x", t, ids, payloads)
                engine.record_frames(
                    FrameBatch(
                        one.t_ns,
                        one.arbitration_id,
                        one.is_extended,
                        chan,
                        ("can1", "can0"),
                        one.dlc,
                        one.data,
                        one.is_fd,
                        one.bitrate_switch,
                        one.is_error,
                        one.is_remote,
                        one.is_rx,
                    )
                )
        events.extend(engine.process(cols).events)
    assert [e.trigger_t_ns for e in events] == triggers
    for e in events:
        got = {(f.bus, f.arbitration_id): f for f in e.frames}
        assert sorted(got) == [("can0", 0x123), ("can1", 0x124)]
        inside = np.flatnonzero((frame_t >= e.start_t_ns) & (frame_t <= e.end_t_ns))
        for (bus, arb), payload in {("can0", 0x123): b"0-123", ("can1", 0x124): b"1-124"}.items():
            np.testing.assert_array_equal(got[bus, arb].t_ns, frame_t[inside])
            assert set(got[bus, arb].data) == {payload}
