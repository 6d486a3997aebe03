"""The fuzz targets by name: ``TARGETS[name]`` is the harness module's import path."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["TARGETS", "load"]

TARGETS: dict[str, str] = {
    "dbc": "tools.fuzz.fuzz_dbc",
    "logs": "tools.fuzz.fuzz_logs",
    "es10": "tools.fuzz.fuzz_es10",
    "modem": "tools.fuzz.fuzz_modem",
    "ingest": "tools.fuzz.fuzz_ingest",
    "commands": "tools.fuzz.fuzz_commands",
    "campaign": "tools.fuzz.fuzz_campaign",
    "v2x": "tools.fuzz.fuzz_v2x",
}


def load(name: str) -> ModuleType:
    """Import the harness module of target ``name`` (``KeyError`` for an unknown name)."""
    return importlib.import_module(TARGETS[name])
