"""The import-linter contracts (pyproject [tool.importlinter]) name every adapter there is."""

from __future__ import annotations

import tomllib
from pathlib import Path

import tcu

ROOT = Path(__file__).resolve().parents[1]
ADAPTERS = ("can", "spool", "uplink", "modem", "esim", "v2x")


def test_every_adapter_package_is_in_the_independence_contract() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["type"] == "independence"]
    package = Path(tcu.__file__).parent
    present = {f"tcu.{name}" for name in ADAPTERS if (package / name / "__init__.py").is_file()}
    assert present <= set(contract["modules"]), "add the new adapter to the independence contract"
    assert {"tcu.can", "tcu.spool", "tcu.uplink", "tcu.modem", "tcu.esim"} <= present
