"""tcu.fsutil.write_atomic: the helper behind the spool state, catalog files and PKI files."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tcu.fsutil import write_atomic


def test_replaces_content_and_mode_even_over_a_leftover_tmp(tmp_path: Path) -> None:
    target = tmp_path / "key.pem"
    target.write_bytes(b"old")
    leftover = tmp_path / "key.pem.tmp"
    leftover.write_bytes(b"half-written by a crash")
    leftover.chmod(0o644)
    write_atomic(target, b"new", mode=0o600)
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert not leftover.exists()


def test_a_failed_write_keeps_the_old_file_and_no_tmp(tmp_path: Path) -> None:
    target = tmp_path / "missing-dir" / "state.json"
    with pytest.raises(FileNotFoundError):
        write_atomic(target, b"x")
    assert list(tmp_path.iterdir()) == []
    target = tmp_path / "state.json"
    target.write_bytes(b"old")
    (tmp_path / "state.json.tmp").mkdir()  # the tmp path cannot be opened as a file
    with pytest.raises(IsADirectoryError):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old"
