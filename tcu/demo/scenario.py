"""Demo scenarios: what a ``tcu demo --scenario NAME`` run adds to the plain drive.

A scenario may add simulator arguments, sections of the agent's config, route the
agent's uplink elsewhere than straight to the ingest (the border scenario's simulated
cellular data path), and, after the drive, its own checks, whose keys join the summary.
The plain drive (``drive``) adds nothing. A scenario with processes of its own (the V2N
scenario: seven vehicles, seven agents and a broker) runs the whole demo itself
(``runs_itself``). Scenarios register themselves in
:data:`SCENARIOS` (see :func:`register`); the CLI offers every registered name.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from tcu.signals.mapping import Catalog

if TYPE_CHECKING:
    from tcu.demo.procs import Proc
    from tcu.demo.run import DemoOptions, DemoResult

__all__ = ["SCENARIOS", "CloudContext", "Scenario", "ScenarioContext", "load_scenarios", "register"]


@dataclass(frozen=True, slots=True)
class CloudContext:
    """What a scenario that starts the cloud side itself gets (see :meth:`Scenario.start_cloud`)."""

    workdir: Path
    vehicle_id: str
    security_args: list[str]  # the ingest's --pki DIR or --insecure
    command_keys: Path | None  # a directory with command-signing.key / command-verify.pem (mTLS PKI)
    channel: Callable[[str], grpc.aio.Channel]  # a backend channel to a target (mTLS or plain)
    startup_timeout_s: float
    say: Callable[[str], None]


@dataclass(frozen=True, slots=True)
class ScenarioContext:
    """What a scenario can look at after the drive (the processes are still running)."""

    workdir: Path
    vehicle_id: str
    ready: dict[str, Any]  # the simulator's ready line
    done: dict[str, Any]  # the simulator's done line (ground_truth path, frames, start_us, end_us)
    agent_final: dict[str, Any]  # the agent's last stats line
    catalog: Catalog  # CAN signals of the simulator's DBC and mapping
    ingest_target: str
    channel: Callable[[], grpc.aio.Channel]  # a backend channel to the ingest (mTLS or plain)
    say: Callable[[str], None]


@dataclass(slots=True)
class Scenario:
    """Base scenario: the plain drive. Subclasses override what they need."""

    name: str = "drive"
    duration_s: float | None = None  # overrides --duration when set
    speed: str | None = None  # overrides --speed when set
    sim_args: list[str] = field(default_factory=list)
    #: A scenario with processes of its own (several vehicles, a broker) runs itself: :meth:`run`
    #: replaces the one-vehicle run and the hooks below are not used.
    runs_itself: bool = False

    async def run(self, options: DemoOptions, say: Callable[[str], None]) -> DemoResult:
        """The whole demo, for a scenario with ``runs_itself``."""
        raise NotImplementedError(f"scenario {self.name} does not run itself")

    def prepare(self, workdir: Path) -> None:
        """Write files the scenario needs (campaigns, policies) before anything starts."""

    async def start_cloud(self, ctx: CloudContext) -> str | None:
        """Start the cloud side itself and return the ingest target the backend queries
        (``127.0.0.1:PORT``), or None for the default: one ``tcu ingest`` on an SQLite file.
        What it starts is stopped by :meth:`aclose`."""
        return None

    async def settle(self) -> None:
        """After the agent stopped, before the stored data is read (e.g. an archive catching up)."""

    async def aclose(self) -> None:
        """Stop what :meth:`start_cloud` started (always called, also after a failure)."""

    async def start_peers(self, workdir: Path, say: Callable[[str], None]) -> list[Proc]:
        """Start processes the scenario needs besides ingest, simulator and agent (after :meth:`prepare`).

        They are stopped with the others when the run ends. Raise :class:`~tcu.demo.procs.DemoError`
        when one cannot be started: the run then fails with that message.
        """
        return []

    def ingest_sim_args(self, ingest_target: str) -> list[str]:
        """Simulator arguments that need the ingest's address (``127.0.0.1:PORT``), after ``sim_args``."""
        return []

    def uplink_target(self, ready: dict[str, Any], ingest_target: str) -> str:
        """Where the agent's uplink connects, from the simulator's ready line (default: the ingest)."""
        return ingest_target

    def uplink_toml(self) -> str:
        """Extra keys of the agent's ``[uplink]`` section (``key = value`` lines)."""
        return ""

    def agent_toml(self, workdir: Path, ready: dict[str, Any]) -> str:
        """Extra TOML sections for the agent's config."""
        return ""

    async def summarize(self, ctx: ScenarioContext) -> dict[str, Any]:
        """Checks after the drive; the keys join the summary."""
        return {}

    def ok(self, extra: dict[str, Any]) -> bool:
        """Whether the scenario's own checks passed."""
        return True


SCENARIOS: dict[str, Callable[[], Scenario]] = {"drive": Scenario}


def register(name: str, factory: Callable[[], Scenario]) -> None:
    SCENARIOS[name] = factory


def load_scenarios() -> dict[str, Callable[[], Scenario]]:
    """Import every module of :mod:`tcu.demo` so that each registers its scenarios."""
    import tcu.demo

    for info in pkgutil.iter_modules(tcu.demo.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"tcu.demo.{info.name}")
    return SCENARIOS
