"""`tcu demo` options as the CLI hands them to run_demo (the demo itself runs in tests/e2e)."""

from __future__ import annotations

from typing import Any

import pytest

import tcu.cli.demo
from tcu.cli.main import main
from tcu.demo import DemoOptions


class _Result:
    ok = True

    def as_dict(self) -> dict[str, Any]:
        return {"audit_log": "/somewhere/esim-audit.jsonl"}


@pytest.mark.parametrize("extra", [[], ["--json"]])
def test_border_demo_keeps_the_work_directory_whose_audit_log_it_names(
    monkeypatch: pytest.MonkeyPatch, extra: list[str]
) -> None:
    seen: list[DemoOptions] = []

    async def fake_run_demo(options: DemoOptions, progress: Any = None) -> _Result:
        seen.append(options)
        return _Result()

    monkeypatch.setattr(tcu.cli.demo, "run_demo", fake_run_demo)
    assert main(["demo", "--scenario", "border", *extra]) == 0
    assert seen[0].keep  # the summary's audit_log must still exist after the demo
    assert main(["demo", "--scenario", "drive", *extra]) == 0
    assert not seen[1].keep
