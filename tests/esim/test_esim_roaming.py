"""Full loop over a pty: simulated modem + eUICC → Modem/AtApduTransport → RoamingPolicy → ProfileManager."""

from __future__ import annotations

import ast
import asyncio
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.euicc import EuiccConfig, ProfileSpec, SimulatedEuicc
from sim.modem import SimModemConfig, SimulatedModem
from tcu.esim import (
    AuditLog,
    Decision,
    DecisionKind,
    Observation,
    ProfileClass,
    ProfileManager,
    RoamingPolicy,
    parse_policy,
    verify,
)
from tcu.modem import AtApduTransport, AtChannel, AtConfig, Modem, modem_profile

ROOT = Path(__file__).resolve().parents[2]
BOOT = "8988211000000000001"
HOME = "89490200001234567890"
LOCAL = "89430100001234567891"

RULES = f"""
[policy]
min_dwell_s = 0
min_border_distance_m = 0
attach_deadline_s = 5
fallback_after_s = 60
fallback = "bootstrap"

[profiles]
bootstrap = "{BOOT}"
home-de = "{HOME}"
local-at = "{LOCAL}"

[countries.DE]
preferred = "home-de"

[countries.AT]
preferred = "local-at"
"""


@dataclass
class Rig:
    sim: SimulatedModem
    modem: Modem
    manager: ProfileManager
    policy: RoamingPolicy
    audit_path: Path
    t_s: float = 0.0

    async def tick(self) -> Decision | None:
        """One control-loop iteration; simulated time advances 1 s per tick."""
        self.t_s += 1.0
        await asyncio.sleep(0.08)  # let the simulated modem attach
        reg = await self.modem.registration()
        enabled = await self.manager.enabled()
        decision = self.policy.step(
            Observation(int(self.t_s * 1e9), enabled.iccid if enabled else None, reg.registered, reg.mcc)
        )
        if decision is not None:
            outcome = await self.manager.execute(decision)
            self.policy.record_outcome(decision, outcome.ok)
        return decision


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    card = SimulatedEuicc(
        EuiccConfig(
            profiles=(
                ProfileSpec(BOOT, "Bootstrap", "Global", ProfileClass.provisioning),
                ProfileSpec(HOME, "Home DE", "OpDE", enabled=True),
                ProfileSpec(LOCAL, "Local AT", "OpAT"),
            )
        )
    )
    config = SimModemConfig(home_plmn={HOME: "26201", LOCAL: "23203", BOOT: "90128"}, attach_delay_s=0.03)
    profile = modem_profile("generic")
    with SimulatedModem(card, config) as sim:
        async with AtChannel(AtConfig(port=sim.port, command_timeout_s=2.0)) as channel:
            modem = Modem(channel, profile)
            audit_path = tmp_path / "audit.jsonl"
            manager = ProfileManager(
                AtApduTransport(channel, profile),
                audit=AuditLog(audit_path),
                refresh=profile.refresh_flag,
                after_switch=modem.after_profile_switch,
            )
            await modem.wait_registered(timeout_s=3)
            yield Rig(sim, modem, manager, RoamingPolicy(parse_policy(RULES)), audit_path)


async def test_border_crossing_localizes_and_reattaches(rig: Rig) -> None:
    assert await rig.tick() is None
    rig.sim.set_country("AT")
    await rig.modem.wait_registered(timeout_s=3)
    decisions = [await rig.tick() for _ in range(3)]
    switch = decisions[0]
    assert switch is not None and switch.kind is DecisionKind.switch and switch.target_iccid == LOCAL
    assert decisions[1:] == [None, None]
    reg = await rig.modem.wait_registered(timeout_s=3)
    assert (reg.mcc, reg.mnc, reg.roaming) == ("232", "03", False)  # home network of the local profile
    assert rig.sim.card.enabled_iccids == [LOCAL]
    rig.sim.set_country("DE")
    await rig.modem.wait_registered(timeout_s=3)
    back = await rig.tick()
    assert back is not None and back.target_iccid == HOME
    assert verify(rig.audit_path) > 10


async def test_attach_failure_rolls_back(rig: Rig) -> None:
    rig.sim.never_attach.add((LOCAL, "AT"))
    rig.sim.set_country("AT")
    await rig.modem.wait_registered(timeout_s=3)
    first = await rig.tick()
    assert first is not None and first.target_iccid == LOCAL
    kinds = [await rig.tick() for _ in range(6)]
    rollback = [d for d in kinds if d is not None]
    assert (
        len(rollback) == 1 and rollback[0].kind is DecisionKind.rollback and rollback[0].target_iccid == HOME
    )
    reg = await rig.modem.wait_registered(timeout_s=3)
    assert reg.roaming and rig.sim.card.enabled_iccids == [HOME]
    assert [await rig.tick() for _ in range(3)] == [None, None, None]  # no retry within retry_after_s
    text = rig.audit_path.read_text()
    assert '"decision":"rollback"' in text and verify(rig.audit_path) > 0


async def test_coverage_hole_leads_to_fallback(rig: Rig) -> None:
    rig.policy = RoamingPolicy(parse_policy(RULES.replace("fallback_after_s = 60", "fallback_after_s = 3")))
    assert await rig.tick() is None
    rig.sim.set_coverage(False)
    decisions = [await rig.tick() for _ in range(5)]
    fallback = [d for d in decisions if d is not None]
    assert fallback and fallback[0].kind is DecisionKind.fallback and fallback[0].target_iccid == BOOT
    assert rig.sim.card.enabled_iccids == [BOOT]


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_import_directions() -> None:
    for path in (ROOT / "tcu" / "esim").glob("*.py"):
        assert not any(n.startswith("tcu.modem") for n in _imports(path)), path
    for path in (ROOT / "tcu" / "modem").glob("*.py"):
        assert not any(n.startswith("tcu.esim") for n in _imports(path)), path
    for name in ("euicc.py", "modem.py"):
        for module in _imports(ROOT / "sim" / name):
            top = module.split(".")[0]
            # the card signs with real keys (SGP.22 notifications, certificates): cryptography
            allowed = ("tcu", "sim", "numpy") + (("cryptography",) if name == "euicc.py" else ())
            assert top in sys.stdlib_module_names or top in allowed, (name, module)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=40))
def test_simulated_card_answers_any_apdu_with_a_status_word(apdu: bytes) -> None:
    card = SimulatedEuicc(EuiccConfig(profiles=(ProfileSpec(HOME, "Home", "Op", enabled=True),)))
    card.transmit(bytes.fromhex("0070000001"))
    answer = card.transmit(apdu)
    assert len(answer) >= 2
    assert card.enabled_iccids == [HOME]  # nothing is selected, so nothing may change


def test_public_api_is_guarded() -> None:
    import tcu.esim
    import tcu.modem

    for package in (tcu.esim, tcu.modem):
        assert len(set(package.__all__)) == len(package.__all__)
        for name in package.__all__:
            assert getattr(package, name) is not None, (package.__name__, name)
    assert {"ProfileManager", "RoamingPolicy", "AuditLog", "verify", "ApduTransport"} <= set(tcu.esim.__all__)
    assert {"AtChannel", "AtApduTransport", "Modem", "ModemProfile", "PRESETS"} <= set(tcu.modem.__all__)
