"""Decoder → default periodic campaign → batch builder, on frames encoded with cantools."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from tcu.api.v1 import telemetry_pb2 as telemetry_pb
from tcu.collect import BatchBuilder
from tcu.collect.engine import CampaignEngine
from tcu.frames import FrameBatch
from tcu.signals.dbc import load_dbc
from tcu.signals.decoder import SignalDecoder, compile_codecs
from tcu.signals.mapping import Catalog, build_catalog, load_mapping


def _setup(dbc: Path, mapping: Path) -> tuple[Catalog, SignalDecoder, object]:
    db = load_dbc(dbc)
    catalog = build_catalog(load_mapping(mapping), {"can0": [db]})
    return catalog, SignalDecoder(catalog, compile_codecs({"can0": [db]})), db


def test_decoder_routes_groups_and_counts(
    small_dbc: Path, small_mapping: Path, caplog: pytest.LogCaptureFixture
) -> None:
    catalog, decoder, db = _setup(small_dbc, small_mapping)
    ids = catalog.by_name()
    frames = [
        (1_000, 256, False, db.encode_message("Dyn", {"Speed": 50.5, "Accel": -1.25, "Gear": 3})),  # type: ignore[attr-defined]
        (2_000, 512, False, db.encode_message("Mux", {"Sel": 0, "PressFL": 240})),  # type: ignore[attr-defined]
        (3_000, 0x18FEF1FE, True, db.encode_message("Ext", {"Odometer": 12345.6})),  # type: ignore[attr-defined]
        (4_000, 512, False, db.encode_message("Mux", {"Sel": 1, "PressFR": 250})),  # type: ignore[attr-defined]
        (5_000, 0x7FF, False, b"\x00" * 8),  # unknown id
        (6_000, 256, False, b"\x00" * 4),  # length mismatch
        (7_000, 256, False, b"\x00" * 3),  # length mismatch, same id: logged once
    ]
    with caplog.at_level(logging.WARNING):
        columns = decoder.decode(
            FrameBatch.of_payloads(
                "can0",
                np.array([f[0] for f in frames], np.int64),
                np.array([f[1] for f in frames], np.uint32),
                [f[3] for f in frames],
                is_extended=np.array([f[2] for f in frames], np.bool_),
            )
        )
    got = {sid: (t.tolist(), v.tolist()) for sid, t, v in columns}
    assert got[ids["Vehicle.Speed"].signal_id] == ([1_000], [50.5])
    assert got[ids["Vehicle.Acceleration.Longitudinal"].signal_id] == ([1_000], [-1.25])
    assert got[ids["Vehicle.TraveledDistance"].signal_id][0] == [3_000]
    assert got[ids["Vehicle.TraveledDistance"].signal_id][1] == pytest.approx([12345.6])
    # The multiplexed signals only appear in frames whose selector carries them.
    assert got[ids["Vehicle.Chassis.Axle.Row1.Wheel.Left.Tire.Pressure"].signal_id] == ([2_000], [240.0])
    assert got[ids["Vehicle.Chassis.Axle.Row1.Wheel.Right.Tire.Pressure"].signal_id] == ([4_000], [250.0])
    s = decoder.counts
    assert (s.frames, s.decoded, s.unknown, s.short) == (7, 4, 1, 2)
    assert s.unknown_ids == {("can0", 0x7FF)}
    assert s.signals == 5  # Speed, Accel, Odometer, PressFL, PressFR (Gear is unmapped)
    assert sum("have [3, 4] bytes" in r.getMessage() for r in caplog.records) == 1


def test_periodic_sampler_keeps_first_sample_per_window_across_batches(
    small_dbc: Path, small_mapping: Path
) -> None:
    catalog, _decoder, _db = _setup(small_dbc, small_mapping)
    sid = catalog.by_name()["Vehicle.Speed"].signal_id  # 100 ms
    sampler = CampaignEngine((), catalog, {}, 0, default_periodic=True)  # the default periodic campaign
    t = np.arange(0, 350, 10, dtype=np.int64) * 1_000_000  # every 10 ms for 350 ms
    v = np.arange(len(t), dtype=np.float64)
    first = sampler.process([(sid, t[:12], v[:12])]).samples  # 0..110 ms
    second = sampler.process([(sid, t[12:], v[12:])]).samples  # 120..340 ms
    kept = np.concatenate([first[0][1], second[0][1]]) // 1_000_000
    assert kept.tolist() == [0, 100, 200, 300]
    assert sampler.stats.samples_in == len(t) and sampler.stats.samples_out == 4


def test_batch_builder_is_columnar_with_source_time_offsets(small_dbc: Path, small_mapping: Path) -> None:
    builder = BatchBuilder(vehicle_id="V1", catalog_id="abc", max_samples=5, max_age_ms=1000)
    base = 1_700_000_000_000_000_000
    builder.add([(1, np.array([base + 10, base + 20], np.int64), np.array([1.5, 2.5]))])
    builder.add([(2, np.array([base], np.int64), np.array([-3.0]))])
    builder.add([(1, np.array([base + 30], np.int64), np.array([4.5]))])
    assert not builder.full() and builder.samples == 4
    payload, count = builder.build()
    batch = telemetry_pb.TelemetryBatch.FromString(payload)
    assert (batch.vehicle_id, batch.boot_epoch, batch.seq, batch.catalog_id, count) == ("V1", 0, 0, "abc", 4)
    assert batch.base_time_ns == base
    cols = {c.signal_id: (list(c.t_offset_ns), list(c.double_values)) for c in batch.columns}
    assert cols == {1: ([10, 20, 30], [1.5, 2.5, 4.5]), 2: ([0], [-3.0])}
    assert builder.samples == 0 and not builder.due()


def test_j1939_pgn_matching_is_a_per_bus_option(small_dbc: Path, small_mapping: Path) -> None:
    catalog, _decoder, db = _setup(small_dbc, small_mapping)
    sid = catalog.by_name()["Vehicle.TraveledDistance"].signal_id
    payload = db.encode_message("Ext", {"Odometer": 12345.6})  # type: ignore[attr-defined]
    # 0x18FEF1FE in the DBC; the same PGN from another source address and priority:
    frames = FrameBatch.of_payloads(
        "can0",
        np.array([1_000], np.int64),
        np.array([0x0CFEF103], np.uint32),
        [payload],
        is_extended=np.array([True]),
    )
    codecs = compile_codecs({"can0": [db]})
    plain = SignalDecoder(catalog, codecs)
    assert plain.decode(frames) == [] and plain.counts.unknown == 1
    j1939 = SignalDecoder(catalog, codecs, j1939=["can0"])
    ((got_sid, t, v),) = j1939.decode(frames)
    assert (got_sid, t.tolist()) == (sid, [1_000]) and v.tolist() == pytest.approx([12345.6])
    assert j1939.counts.decoded == 1 and j1939.counts.unknown == 0


def test_pipeline_feeds_hooks_every_decoded_sample_then_batches_the_kept_ones(
    small_dbc: Path, small_mapping: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio

    from tcu.agent.pipeline import Pipeline

    catalog, decoder, db = _setup(small_dbc, small_mapping)
    sid = catalog.by_name()["Vehicle.Speed"].signal_id  # 100 ms period
    payloads = [db.encode_message("Dyn", {"Speed": float(i), "Accel": 0.0, "Gear": 1}) for i in range(20)]  # type: ignore[attr-defined]
    t = np.arange(20, dtype=np.int64) * 10_000_000  # every 10 ms
    frames = FrameBatch.of_payloads("can0", t, np.full(20, 256, np.uint32), payloads)
    seen: list[list[float]] = []
    sunk: list[tuple[bytes, int]] = []

    def hook(columns: object) -> None:
        seen.append([v for s, _t, vs in columns if s == sid for v in vs.tolist()])  # type: ignore[attr-defined]

    def broken(columns: object) -> None:
        raise RuntimeError("consumer bug")

    async def sink(payload: bytes, priority: int) -> None:
        sunk.append((payload, priority))

    pipeline = Pipeline(
        decoder,
        CampaignEngine((), catalog, {}, 0, default_periodic=True),
        BatchBuilder(vehicle_id="V1", catalog_id=catalog.catalog_id, max_samples=1000, max_age_ms=60_000),
        sink,
        event_batch=lambda event: b"",
        on_decoded=[broken, hook],
    )

    async def run() -> None:
        await pipeline.feed(frames)
        assert sunk == []  # neither full nor old: nothing handed on yet
        await pipeline.close()

    with caplog.at_level(logging.ERROR):
        asyncio.run(run())
    assert seen == [[float(i) for i in range(20)]]  # every decoded sample, before selection
    assert pipeline.stats.hook_errors == 1 and "consumer bug" in caplog.text
    ((payload, priority),) = sunk
    batch = telemetry_pb.TelemetryBatch.FromString(payload)
    speed = next(c for c in batch.columns if c.signal_id == sid)
    assert list(speed.double_values) == [0.0, 10.0] and priority == 0  # windows 0 and 100 ms
    assert pipeline.stats.batches_built == 1 and pipeline.stats.frames == 20


def test_a_large_batch_is_carried_in_parts_so_built_batches_stay_near_max_samples(
    small_dbc: Path, small_mapping: Path
) -> None:
    """A tick after a stall (or of a simulator faster than real time) can hold many seconds of frames."""
    import asyncio

    from tcu.agent.pipeline import Pipeline

    catalog, decoder, db = _setup(small_dbc, small_mapping)
    n = 2000  # 20 s of Dyn every 10 ms: Speed (100 ms) and Accel (50 ms) keep 600 samples
    payloads = [db.encode_message("Dyn", {"Speed": 1.0, "Accel": 0.0, "Gear": 1})] * n  # type: ignore[attr-defined]
    frames = FrameBatch.of_payloads(
        "can0", np.arange(n, dtype=np.int64) * 10_000_000, np.full(n, 256, np.uint32), payloads
    )
    sizes: list[int] = []

    async def sink(payload: bytes, priority: int) -> None:
        batch = telemetry_pb.TelemetryBatch.FromString(payload)
        sizes.append(sum(len(c.t_offset_ns) for c in batch.columns))

    pipeline = Pipeline(
        decoder,
        CampaignEngine((), catalog, {}, 0, default_periodic=True),
        BatchBuilder(vehicle_id="V1", catalog_id=catalog.catalog_id, max_samples=50, max_age_ms=60_000),
        sink,
        event_batch=lambda event: b"",
        chunk_frames=100,
    )

    async def run() -> None:
        await pipeline.feed(frames)
        await pipeline.close()

    asyncio.run(run())
    assert sum(sizes) == 600 and pipeline.stats.frames == n
    assert max(sizes) <= 50 + 30  # at most one part's samples (1 s: 10 + 20) past the bound
    assert len(sizes) >= 600 // 80


def test_per_bus_counts_of_a_batch_of_several_buses(small_dbc: Path, small_mapping: Path) -> None:
    """The agent's tick hands on all buses in one batch; decoded/unknown stay counted per bus."""
    import asyncio
    import dataclasses

    from tcu.agent.pipeline import Pipeline

    db = load_dbc(small_dbc)
    catalog = build_catalog(load_mapping(small_mapping), {"can0": [db]})  # can1's Dyn: unmapped
    decoder = SignalDecoder(catalog, compile_codecs({"can0": [db], "can1": [db]}))
    dyn = db.encode_message("Dyn", {"Speed": 1.0, "Accel": 0.0, "Gear": 1})  # type: ignore[attr-defined]
    ids = [256, 256, 0x7FF, 256, 0x7FE, 0x7FE, 256]
    owner = [0, 1, 1, 0, 1, 0, 0]  # can0: 3 decoded + 1 unknown; can1: 1 unmapped + 2 unknown
    frames = FrameBatch.of_payloads(
        "can0", np.arange(7, dtype=np.int64) * 1_000_000, np.array(ids, np.uint32), [dyn] * 7
    )
    frames = dataclasses.replace(frames, channel=np.array(owner, np.int16), channels=("can0", "can1"))

    async def sink(payload: bytes, priority: int) -> None:
        pass

    pipeline = Pipeline(
        decoder,
        CampaignEngine((), catalog, {}, 0, default_periodic=True),
        BatchBuilder(vehicle_id="V1", catalog_id=catalog.catalog_id, max_samples=1000, max_age_ms=60_000),
        sink,
        event_batch=lambda event: b"",
    )

    async def run() -> None:
        await pipeline.feed(frames)
        await pipeline.feed(frames.select(np.array([0, 3])))  # a later batch of can0 alone
        await pipeline.close()

    asyncio.run(run())
    got = {name: (c.frames, c.decoded, c.unknown) for name, c in pipeline.stats.by_bus.items()}
    assert got == {"can0": (6, 5, 1), "can1": (3, 0, 2)}
