"""The fleet demo drives the border route: its simulator gets the border drive's card credentials
(the SM-DP+'s CI) as well as the handover as the modem's data path."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from tcu.demo.fleet import FleetScenario


def test_the_fleet_simulator_keeps_the_cards_smdp_credentials(tmp_path: Path) -> None:
    scenario = FleetScenario()
    scenario.smdpp = SimpleNamespace(generated=tmp_path / "generated")  # type: ignore[assignment]
    scenario._handover_port = 41000
    args = scenario.ingest_sim_args("127.0.0.1:9")
    assert args[args.index("--data-proxy") + 1] == "127.0.0.1:41000"
    assert args[args.index("--euicc-credentials") + 1] == str(tmp_path / "generated")
