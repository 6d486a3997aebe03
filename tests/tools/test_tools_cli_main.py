"""The ``tcu`` entry point: imports only the chosen subcommand, checks --log-level."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tcu.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("can", "cantools", "asammdf", "numpy", "grpc", "matplotlib", "pyarrow", "cryptography")


def _imported_after(argv: list[str]) -> tuple[list[str], str]:
    code = (
        "import sys\n"
        "from tcu.cli.main import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    *_, last = result.stderr.strip().splitlines()
    return eval(last), result.stdout  # a list literal printed by the child


def test_version_imports_no_heavy_library() -> None:
    heavy, out = _imported_after(["--version"])
    assert out.startswith("tcu ") and heavy == []


def test_a_subcommand_imports_only_what_it_needs() -> None:
    heavy, out = _imported_after(["dbc", "--help"])
    assert "list" in out and "grpc" not in heavy and "asammdf" not in heavy
    heavy, out = _imported_after(["--help"])  # the full help still lists every command
    for command in ("agent", "dbc", "decode", "demo", "fleet", "ingest", "mapping", "send", "sim", "watch"):
        assert f"    {command}" in out, command


def test_log_level_must_be_a_level(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--log-level", "verbose", "dbc", "list", "x.dbc"])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "argument --log-level: invalid choice: 'verbose' (choose from debug, info," in err
    with pytest.raises(SystemExit):
        main(["--log-level=loud", "--version"])
    assert "loud" in capsys.readouterr().err
