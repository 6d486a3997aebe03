"""tools/check_paths.py (part of ``make test``) and tools/shared_data.py (issue 18).

The planted paths are built from pieces, so that this file itself passes the check.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tools import check_paths
from tools.shared_data import ENV, SharedDataMissing, shared_path, shared_root

REPO = Path(__file__).resolve().parents[2]
S = "/"  # the root, kept apart from the folder names below

PLANTED = {
    "tests/test_x.py": f'LOG = Path("{S}work/shared/data/can/logs/x.log")\n',
    "tools/bench/y.py": f"out = '{S}home/alice/bench.json'\n",
    "tcu/z.py": f'"""Example: tcu ingest --db {S}tmp/ingest.db"""\n',
    "sim/s.py": f'scratch = Path("{S}tmp")\nkey = "{S}root/.ssh/id"\n',
    "Makefile": f"test:\n\tcp x {S}Users/bob/y\n",
}

FINE = (
    'port = "/dev/ttyUSB2"\n'
    'status = Path("/proc/self/status")\n'
    'spool = "/var/lib/tcu/spool"\n'
    "config = '/etc/tcu/agent.toml'\n"
    '[ -x /usr/sbin/mosquitto ]\n'
    'url = "https://example.com/home/work/tmp/x"\n'
    'data = "../shared/data"; other = "../work/x"\n'
    'scratch = tmp_path / "gt.npz"; env = "$TMPDIR/x"\n'
    "# the tmp_path fixture, not a /tmp folder; a workspace at work/\n"
)


def _plant(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_check_paths_finds_every_planted_path(tmp_path: Path) -> None:
    _plant(tmp_path, PLANTED)
    _plant(tmp_path, {"docs/elsewhere.md": f"{S}home/alice is outside the checked folders\n"})
    _read, findings = check_paths.check(tmp_path)  # not a git checkout: every file in scope
    got = sorted((f.path, f.line, f.text) for f in findings)
    assert got == [
        ("Makefile", 2, f"{S}Users/bob/y"),
        ("sim/s.py", 1, f"{S}tmp"),
        ("sim/s.py", 2, f"{S}root/.ssh/id"),
        ("tcu/z.py", 1, f"{S}tmp/ingest.db"),
        ("tests/test_x.py", 1, f"{S}work/shared/data/can/logs/x.log"),
        ("tools/bench/y.py", 1, f"{S}home/alice/bench.json"),
    ]
    assert str(findings[0]).startswith(f"{findings[0].path}:{findings[0].line}:")


def test_check_paths_leaves_system_paths_urls_and_relative_paths_alone(tmp_path: Path) -> None:
    _plant(tmp_path, {"tcu/fine.py": FINE})
    read, findings = check_paths.check(tmp_path)
    assert read == 1
    assert findings == []


def test_check_paths_reads_only_tracked_files_in_a_git_checkout(tmp_path: Path) -> None:
    _plant(tmp_path, {"tcu/tracked.py": FINE, "tests/untracked.py": PLANTED["tests/test_x.py"]})
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "add", "tcu/tracked.py"], check=True)
    assert check_paths.check(tmp_path) == (1, [])
    subprocess.run(["git", "-C", str(tmp_path), "add", "tests/untracked.py"], check=True)
    assert [f.path for f in check_paths.check(tmp_path)[1]] == ["tests/untracked.py"]


def test_check_paths_command_fails_on_a_planted_path_and_passes_on_the_tree(tmp_path: Path) -> None:
    _plant(tmp_path, {"tests/test_x.py": PLANTED["tests/test_x.py"]})
    script = REPO / "tools" / "check_paths.py"
    bad = subprocess.run(
        [sys.executable, script, "--root", tmp_path], check=False, capture_output=True, text=True
    )
    assert bad.returncode == 1
    assert "tests/test_x.py:1:" in bad.stdout
    good = subprocess.run([sys.executable, script], check=False, capture_output=True, text=True, cwd=REPO)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "no machine-specific absolute paths" in good.stdout


def test_check_paths_an_empty_folder_is_not_a_pass(tmp_path: Path) -> None:
    assert check_paths.main(["--root", str(tmp_path)]) == 1


def test_shared_path_finds_the_data_and_names_the_variable_when_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert shared_path("can/dbc/toyota_adas.dbc").is_file()
    with pytest.raises(SharedDataMissing, match=rf"no such file; {ENV}=") as missing:
        shared_path("can/dbc/no_such.dbc")
    assert str(shared_root() / "can/dbc/no_such.dbc") in str(missing.value)

    monkeypatch.setenv(ENV, str(tmp_path / "nowhere"))
    with pytest.raises(SharedDataMissing, match=rf"folder itself is missing; {ENV}=.*nowhere"):
        shared_path("can/dbc/toyota_adas.dbc")
    monkeypatch.delenv(ENV)
    assert shared_root() == REPO.parent / "shared" / "data"
