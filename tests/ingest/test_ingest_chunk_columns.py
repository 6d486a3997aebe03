"""The whole-batch packer (``encode_double_columns``) writes exactly the blobs of the per-column one."""

from __future__ import annotations

import numpy as np
import pytest

from tcu.ingest._chunks import (
    decode_chunk,
    decode_double_chunks,
    encode_double_columns,
    encode_doubles,
    sort_column,
)


def _columns(seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    times: list[np.ndarray] = []
    values: list[np.ndarray] = []
    for i in range(60):
        n = int(rng.choice([1, 2, 3, 5, 10, 10, 10, 37, 200]))
        t = np.cumsum(rng.integers(0, 2_000_000, n)).astype(np.int64) + 1_700_000_000 * 10**9
        if i % 7 == 3:  # out of order, with equal times (stable: arrival order kept)
            t = rng.permutation(t)
            t[: n // 2] = t[0]
        v = np.round(rng.normal(0, 50, n), 1) if i % 3 else rng.normal(0, 1, n)  # compressible or not
        if i % 11 == 5:
            v[0] = np.nan
        times.append(t)
        values.append(v)
    return times, values


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_batch_blobs_equal_per_column_blobs(seed: int) -> None:
    times, values = _columns(seed)
    blobs, lows, highs = encode_double_columns(times, values)
    assert len(blobs) == len(times)
    formats = set()
    for t, v, blob, low, high in zip(times, values, blobs, lows, highs, strict=True):
        sorted_t, sorted_v = sort_column(t, v)
        assert not isinstance(sorted_v, list)
        assert blob == encode_doubles(sorted_t, sorted_v)
        assert (low, high) == (int(sorted_t[0]), int(sorted_t[-1]))
        back_t, back_v = decode_chunk(low, len(t), blob)
        assert back_t.tolist() == sorted_t.tolist()
        assert np.array_equal(np.asarray(back_v), sorted_v, equal_nan=True)
        formats.add(blob[0])
    assert formats == {0, 1}  # both raw and compressed chunks were compared


def test_no_columns() -> None:
    assert encode_double_columns([], []) == ([], [], [])


@pytest.mark.parametrize("seed", [1, 2])
def test_batch_decode_equals_per_chunk_decode(seed: int) -> None:
    times, values = _columns(seed)
    blobs, lows, _ = encode_double_columns(times, values)
    packed = zip(times, lows, blobs, strict=True)
    rows = [(low, 100 + i, len(t), blob) for i, (t, low, blob) in enumerate(packed)]
    t_all, v_all, ids = decode_double_chunks(rows)
    expected: dict[int, tuple[list[int], np.ndarray]] = {}
    for t_first, chunk_id, count, blob in rows:
        t, v = decode_chunk(t_first, count, blob)
        assert not isinstance(v, list)
        expected[chunk_id] = (t.tolist(), v)
    assert sorted(set(ids.tolist())) == sorted(expected)
    for chunk_id, (t, v) in expected.items():
        mine = ids == chunk_id
        assert t_all[mine].tolist() == t  # in the chunk's stored order
        assert np.array_equal(v_all[mine], v, equal_nan=True)
