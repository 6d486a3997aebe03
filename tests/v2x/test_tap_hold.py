"""The stationary trigger's hold is judged at the frame time that satisfies it, not at the batch end."""

from __future__ import annotations

import time

import numpy as np
import pytest
from test_agent_v2x import DBC, LAT, LON, MAPPING, _v2x

from tcu.agent.v2x import V2X_SIGNALS, V2xTap
from tcu.signals.dbc import load_dbc
from tcu.signals.decoder import SignalColumns
from tcu.signals.mapping import build_catalog, load_mapping
from tcu.v2x.denm import Outgoing
from tcu.v2x.messages import its_time_ms

S = 1_000_000_000
MS = 1_000_000


@pytest.mark.parametrize("per_batch", [5, 50])  # 0.5 s batches, one 5 s batch (an agent that lags)
def test_the_hold_is_judged_at_the_satisfying_frame(per_batch: int) -> None:
    catalog = build_catalog(
        load_mapping(MAPPING), {"can0": [load_dbc(DBC)]}, mapping_path=MAPPING, extra=list(V2X_SIGNALS)
    )
    tap = V2xTap(_v2x(None), catalog)
    tap._ready = True  # the ASN.1 compile is another test's business
    sent: list[Outgoing] = []
    real = tap.station.client.publish_denm
    ids = {spec.name: spec.signal_id for spec in catalog.signals}
    t0 = time.time_ns() // S * S - 10 * S
    # One batch of 5 s at 10 Hz: standing, hazard lights on from 0.5 s (hold 2 s: due at 2.5 s).
    t = t0 + np.arange(50, dtype=np.int64) * 100 * MS
    hazard = (t >= t0 + 500 * MS).astype(np.float64)
    batches: list[SignalColumns] = [
        [
            (ids["Vehicle.CurrentLocation.Latitude"], t[i : i + 1], np.array([LAT])),
            (ids["Vehicle.CurrentLocation.Longitude"], t[i : i + 1], np.array([LON])),
            (ids["Vehicle.Speed"], t[i : i + per_batch], np.zeros(len(t[i : i + per_batch]))),
            (ids["Vehicle.Body.Lights.Hazard.IsSignaling"], t[i : i + per_batch], hazard[i : i + per_batch]),
        ]
        for i in range(0, len(t), per_batch)
    ]

    def spy(denm: object, *, source_ns: int | None = None) -> None:
        sent.append(Outgoing(denm, "", str(source_ns)))  # type: ignore[arg-type]
        real(denm, source_ns=source_ns)  # type: ignore[arg-type]

    tap.station.client.publish_denm = spy  # type: ignore[method-assign]
    for columns in batches:
        tap.feed(columns)
    assert tap.errors == 0, tap.errors
    assert sent, "no DENM"
    first = sent[0].denm
    assert first.cause_code == 94
    assert first.reference_time_ms == its_time_ms(t0 + 2500 * MS)  # not the batch end (4.9 s)
