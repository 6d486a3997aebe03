"""The committed generated code matches proto/; the API keeps the shapes the agent relies on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tcu.api.v1 import ingest_pb2 as ingest_pb
from tcu.api.v1 import telemetry_pb2 as telemetry_pb
from tcu.uplink.client import wrap_batch

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_not_stale() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gen_protos.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hand_wrapped_batch_carries_the_identity_it_was_given() -> None:
    batch = telemetry_pb.TelemetryBatch(vehicle_id="V", base_time_ns=5)
    batch.columns.add(signal_id=1, t_offset_ns=[0, 10] * 100, double_values=[1.0, 2.0] * 100)
    payload = batch.SerializeToString()
    assert len(payload) > 300  # a multi-byte length prefix
    wrapped = wrap_batch(payload, boot_epoch=1_763_800_000_123_456_789, seq=300)
    parsed = ingest_pb.UploadRequest.FromString(wrapped)
    assert parsed.WhichOneof("kind") == "batch"
    expected = telemetry_pb.TelemetryBatch()
    expected.CopyFrom(batch)
    expected.boot_epoch, expected.seq = 1_763_800_000_123_456_789, 300
    assert parsed.batch == expected
