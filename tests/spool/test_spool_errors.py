"""Storage failures raise SpoolError subclasses that name the path; the spool stays readable."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tcu.errors import SpoolError
from tcu.spool import Spool, SpoolConfig, SpoolUnavailableError


def test_directory_that_cannot_be_created_names_the_path(tmp_path: Path) -> None:
    # Tests run as root, where chmod does not stop writes: a directory below a regular file
    # cannot exist for anyone.
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    target = blocker / "spool"
    with pytest.raises(
        SpoolUnavailableError, match=re.escape(f"{target}: cannot create spool directory")
    ) as info:
        Spool.open(SpoolConfig(target))
    assert isinstance(info.value, SpoolError)
    assert isinstance(info.value.__cause__, OSError)


def test_directory_path_that_is_a_file_names_the_path(tmp_path: Path) -> None:
    target = tmp_path / "spool"
    target.write_text("x")
    with pytest.raises(SpoolUnavailableError, match=re.escape(f"{target}: cannot create spool directory")):
        Spool.open(SpoolConfig(target))


FULL_DISK_CHILD = textwrap.dedent(
    """
    import json, resource, signal, sys, time
    from pathlib import Path
    from tcu.spool import Spool, SpoolConfig, SpoolFullError

    directory = Path(sys.argv[1])
    config = SpoolConfig(directory, durability="power-loss", segment_bytes=1 << 20)
    spool = Spool.open(config)
    # The kernel refuses writes past 64 KiB in any file (EFBIG), like a full disk would.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    _soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    stored = []
    error = None
    for i in range(1, 20):
        try:
            stored.append(spool.append(bytes([i]) * 10_000, priority=1, created_ns=time.time_ns()).seq)
        except SpoolFullError as exc:
            error = str(exc)
            break
    readable = [(r.seq, r.payload == bytes([r.seq]) * 10_000) for r in spool.pending()]
    spool.ack(2)
    after_ack = [r.seq for r in spool.pending()]
    spool.close()
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    with Spool.open(config) as spool:
        reopened = [r.seq for r in spool.pending()]
        repaired = spool.stats().repaired_regions
        next_seq = spool.append(b"more", priority=1, created_ns=time.time_ns()).seq
    print(json.dumps(dict(stored=stored, error=error, readable=readable, after_ack=after_ack,
                          reopened=reopened, repaired=repaired, next_seq=next_seq)))
    """
)


def test_write_refused_by_the_kernel_raises_spool_full_and_keeps_the_spool_usable(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(FULL_DISK_CHILD)
    directory = tmp_path / "spool"
    out = subprocess.run(
        [sys.executable, str(script), str(directory)], capture_output=True, text=True, timeout=60, check=True
    )
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["stored"] == [1, 2, 3, 4, 5, 6]  # 6 x 10036 bytes fit below 64 KiB
    segment = directory / "seg-00000000000000000001.log"
    assert result["error"].startswith(f"{segment}: cannot append record seq 7 (10036 bytes): File too large")
    assert result["readable"] == [[seq, True] for seq in range(1, 7)]
    assert result["after_ack"] == [3, 4, 5, 6]
    # The half-written record was cut off at once: nothing to repair, seq 7 was never used.
    assert result["reopened"] == [3, 4, 5, 6]
    assert result["repaired"] == 0
    assert result["next_seq"] == 7
