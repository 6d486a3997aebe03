"""The systemd unit files of ``tcu agent`` and ``tcu ingest``, shipped as package data.

``tcu units`` prints where they are; ``tcu units --install DIR`` copies them into
``DIR`` (``/etc/systemd/system``) with ``ExecStart=`` pointing at the ``tcu`` that runs the
command (a venv or ``/usr/local/bin``), and the sysusers file beside them when asked.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["SYSUSERS", "UNITS", "render", "unit_text"]

UNITS: tuple[str, ...] = ("tcu-agent.service", "tcu-ingest.service")
SYSUSERS = "tcu.sysusers.conf"
"""The ``tcu`` system user of the agent (``/usr/lib/sysusers.d/tcu.conf``)."""

_DEFAULT_EXEC = "/usr/local/bin/tcu"


def unit_text(name: str) -> str:
    """The text of a shipped file (:data:`UNITS` or :data:`SYSUSERS`)."""
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


def render(name: str, tcu_executable: Path | None = None) -> str:
    """The unit with ``ExecStart=`` running ``tcu_executable`` instead of ``/usr/local/bin/tcu``."""
    text = unit_text(name)
    if tcu_executable is not None:
        text = text.replace(f"ExecStart={_DEFAULT_EXEC} ", f"ExecStart={tcu_executable} ")
    return text
