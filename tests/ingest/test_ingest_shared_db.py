"""Two writers on one database (two ``tcu ingest`` workers, each with its own SqliteSink): a vehicle
that reconnects to the other writer resumes from its acked watermark, dedup stays exact, and chunk ids
keep growing in commit order across both."""

from __future__ import annotations

from pathlib import Path

from ingest_helpers import rows

from tcu.ingest import IngestConfig
from tcu.ingest.model import Batch, Catalog, Column, SignalDef, ValueKind
from tcu.ingest.store import SqliteSink

SPEED = SignalDef(signal_id=1, name="Vehicle.Speed", unit="km/h", kind=ValueKind.DOUBLE)
CATALOG = Catalog("c", {1: SPEED})


def _batch(seq: int) -> Batch:
    t_ns, values = [seq * 10, seq * 10 + 1], [float(seq), seq + 0.5]
    column = Column(signal=SPEED, t_ns=t_ns, double_values=values, string_values=[])
    return Batch("veh-1", 1, seq, CATALOG, 0, 0, (column,), payload=b"x")


async def test_two_writers_share_the_watermark_dedup_and_chunk_ids(tmp_path: Path) -> None:
    config = IngestConfig(insecure=True, db_path=tmp_path / "shared.db")
    first = await SqliteSink.open(config)
    second = await SqliteSink.open(config)
    try:
        assert [(await first.store(_batch(s))).acked_seq for s in (1, 2)] == [1, 2]
        # The vehicle reconnects to the other writer and resends 2 (unacked there), then 3 and 4.
        again = await second.store(_batch(2))
        assert (again.duplicate, again.acked_seq) == (True, 2)
        assert [(await second.store(_batch(s))).acked_seq for s in (3, 4)] == [3, 4]
        # ... and back to the first, whose cache last saw acked_seq 2.
        back = await first.store(_batch(5))
        assert (back.duplicate, back.acked_seq) == (False, 5)
        retry = await first.store(_batch(4))
        assert (retry.duplicate, retry.acked_seq) == (True, 5)
    finally:
        await first.aclose()
        await second.aclose()
    db = config.db_path
    assert rows(db, "SELECT acked_seq FROM epochs WHERE vehicle_id = 'veh-1'") == [(5,)]
    assert rows(db, "SELECT seq FROM batches ORDER BY seq") == [(s,) for s in range(1, 6)]
    assert rows(db, "SELECT batches, samples FROM vehicles") == [(5, 10)]
    # One chunk per batch, ids distinct and growing with the commit order (seq order here).
    chunks = rows(db, "SELECT seq, chunk_id FROM chunks ORDER BY chunk_id")
    assert [seq for seq, _ in chunks] == [1, 2, 3, 4, 5]
    assert len({chunk_id for _, chunk_id in chunks}) == 5
