"""A real ``kill -9`` of a process that appends in a loop loses nothing it reported as appended."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tcu.spool import Spool, SpoolConfig

CHILD = textwrap.dedent(
    """
    import hashlib, sys, time
    from pathlib import Path
    from tcu.spool import Spool, SpoolConfig

    def payload_for(seq):
        size = 2048 + (seq * 7919) % (18 * 1024)
        block = hashlib.sha256(seq.to_bytes(8, "little")).digest()
        return (block * (size // 32 + 1))[:size]

    spool = Spool.open(SpoolConfig(Path(sys.argv[1]), durability=sys.argv[2], segment_bytes=64 * 1024,
                                   compression=sys.argv[3]))
    out = sys.stdout
    out.write(f"epoch {spool.boot_epoch}\\n")
    out.flush()
    seq = 0
    while True:
        seq = spool.append(payload_for(seq + 1), priority=seq % 4, created_ns=time.time_ns()).seq
        if seq % 50 == 0:
            spool.ack(seq - 40)
        out.write(f"{seq}\\n")
        out.flush()
    """
)


def payload_for(seq: int) -> bytes:
    size = 2048 + (seq * 7919) % (18 * 1024)
    block = hashlib.sha256(seq.to_bytes(8, "little")).digest()
    return (block * (size // 32 + 1))[:size]


@pytest.mark.parametrize(
    ("durability", "compression"), [("crash", "none"), ("crash", "zstd"), ("power-loss", "none")]
)
def test_kill_9_loses_nothing_reported_as_appended(tmp_path: Path, durability: str, compression: str) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    directory = tmp_path / "spool"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(directory), durability, compression],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    epoch = int(proc.stdout.readline().split()[1])
    reported: list[int] = []
    deadline = time.monotonic() + 30
    while len(reported) < 400 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        assert line, "child exited early"
        reported.append(int(line))
    os.kill(proc.pid, signal.SIGKILL)  # mid-loop, possibly mid-write
    proc.wait(timeout=10)
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert len(reported) == 400

    highest = reported[-1]
    with Spool.open(SpoolConfig(directory, durability=durability)) as spool:  # type: ignore[arg-type]
        assert spool.boot_epoch == epoch
        stats = spool.stats()
        # The child acks at every 50th seq before it reports that seq; it may have run ahead of what
        # we read from its pipe before the kill, so the watermark is at least what it reported.
        acked = stats.acked_seq
        assert acked >= (highest // 50) * 50 - 40
        assert acked % 50 == 10
        assert stats.tombstones == 0
        assert stats.lost_to_corruption == 0
        records = list(spool.pending())
        seqs = [r.seq for r in records]
        # Gapless from the ack watermark; every reported seq is there with its exact bytes.
        assert seqs == list(range(acked + 1, acked + 1 + len(seqs)))
        assert seqs[-1] >= highest
        for record in records:
            assert record.payload == payload_for(record.seq), record.seq
        # The spool carries on with the next seq after whatever the child last stored.
        assert spool.append(b"after the crash", priority=0, created_ns=time.time_ns()).seq == seqs[-1] + 1
