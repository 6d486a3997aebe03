"""The agent's connectivity source against the simulated modem and eUICC on a pty.

Simulated time comes from NMEA fixes the test writes (2 simulated seconds per 50 ms of
wall time), so the policy's dwell times and deadlines run in simulated seconds.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest

from sim.border import PROFILES, build_card, build_modem, nmea_fix
from sim.modem import SimulatedModem
from sim.route import metz_luxembourg_trier
from tcu.agent.commands import CommandRefused
from tcu.agent.connectivity import (
    SIGNALS,
    ConnectivityConfig,
    ConnectivitySource,
    EsimOrder,
    GnssClock,
    build_connectivity_source,
    fix_time_ns,
    parse_connectivity,
)
from tcu.agent.sources import Emitter
from tcu.config import AgentConfig, UplinkConfig
from tcu.errors import ConfigError
from tcu.esim import DecisionKind, parse_policy, verify
from tcu.modem import parse_nmea

ICCID = {p.label: p.iccid for p in PROFILES}
T0_US = 1_830_000_000_000_000  # 2027-12-28, simulated start (after the wall clock)

POLICY = f"""
[policy]
min_dwell_s = 10
min_border_distance_m = 0
attach_deadline_s = 30
fallback_after_s = 120
retry_after_s = 3600
fallback = "bootstrap"

[profiles]
bootstrap = "{ICCID["bootstrap"]}"
fr-orange = "{ICCID["fr-orange"]}"
lu-post = "{ICCID["lu-post"]}"
de-telekom = "{ICCID["de-telekom"]}"

[countries.FR]
preferred = "fr-orange"

[countries.LU]
preferred = "lu-post"

[countries.DE]
preferred = "de-telekom"
"""


@dataclass
class Recorder:
    """Stands in for the agent's Emitter: records (name, value, t_ns)."""

    samples: list[tuple[str, float | str, int]] = field(default_factory=list)

    def emit(self, name: str, value: float | str, *, t_ns: int | None = None) -> None:
        assert t_ns is not None
        self.samples.append((name, value, t_ns))

    def values(self, suffix: str) -> list[float | str]:
        return [v for n, v, _ in self.samples if n == "Vehicle.Connectivity." + suffix]


@dataclass
class Rig:
    sim: SimulatedModem
    source: ConnectivitySource
    recorder: Recorder
    audit: Path
    sim_s: float = 0.0

    async def until(self, check: Callable[[], bool], wall_s: float = 10.0) -> None:
        async with asyncio.timeout(wall_s):
            while not check():  # noqa: ASYNC110 - the simulator is a thread; poll its state
                await asyncio.sleep(0.02)


async def _gnss_feed(rig: Rig) -> None:
    route = metz_luxembourg_trier()
    pose = route.pose_at(0.0)
    while True:
        for sentence in nmea_fix(T0_US + round(rig.sim_s * 1e6), pose, 0.0):
            rig.sim.emit_raw(b"\r\n" + sentence.encode() + b"\r\n")
        await asyncio.sleep(0.05)
        rig.sim_s += 2.0


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    card = build_card()
    with build_modem(card, country="FR", attach_delay_s=0.03) as sim:
        config = ConnectivityConfig(
            port=sim.port,
            policy=tmp_path / "roaming.toml",
            audit_log=tmp_path / "audit.jsonl",
            poll_interval_s=0.05,
            command_timeout_s=1.0,
            apdu_timeout_s=0.5,
            card_refresh_s=5.0,
            reopen_backoff_s=0.1,
        )
        source = ConnectivitySource(config, parse_policy(POLICY))
        rig = Rig(sim, source, Recorder(), config.audit_log)
        feed = asyncio.create_task(_gnss_feed(rig))
        task = asyncio.create_task(source.run(cast(Emitter, rig.recorder)))
        try:
            await rig.until(lambda: rig.recorder.values("RegistrationStatus")[-1:] == ["home"])
            yield rig
            assert not task.done(), "the source must run until cancelled"
        finally:
            task.cancel()
            feed.cancel()
            await asyncio.gather(task, feed, return_exceptions=True)


def _kinds(rig: Rig) -> list[tuple[DecisionKind, str | None, bool]]:
    return [(d.kind, d.target_iccid, ok) for d, ok in rig.source.decisions]


async def test_border_crossing_switches_to_the_preferred_profile(rig: Rig) -> None:
    assert rig.recorder.values("Iccid")[-1] == ICCID["fr-orange"]
    assert rig.recorder.values("Plmn")[-1] == "208-01"
    rig.sim.set_country("DE")
    await rig.until(lambda: bool(rig.source.decisions))
    await rig.until(lambda: rig.recorder.values("Plmn")[-1:] == ["262-01"])
    assert _kinds(rig) == [(DecisionKind.switch, ICCID["de-telekom"], True)]
    assert rig.sim.card.enabled_iccids == [ICCID["de-telekom"]]
    switch = rig.recorder.values("ProfileSwitch")
    assert len(switch) == 1 and isinstance(switch[0], str)
    assert switch[0].startswith(f"switch enable {ICCID['de-telekom']} (de-telekom) reason=in DE")
    assert rig.recorder.values("Iccid")[-1] == ICCID["de-telekom"]
    # roaming on the French profile in DE first (1.0), then home on the German one (0.0)
    assert rig.recorder.values("IsRoaming")[-2:] == [1.0, 0.0]
    assert rig.recorder.values("RegistrationStatus")[-1] == "home"
    # the decision waited for min_dwell_s = 10 simulated seconds, not wall seconds
    decision = rig.source.decisions[0][0]
    assert "in DE for" in decision.reason
    assert verify(rig.audit) > 5


async def test_failed_attach_is_rolled_back_once(rig: Rig) -> None:
    rig.sim.set_country("LU")  # lu-post never attaches in LU (sim.border.FAILING_ATTACH)
    await rig.until(lambda: len(rig.source.decisions) >= 2)
    start = rig.sim_s
    await rig.until(lambda: rig.sim_s - start > 60)  # two attach deadlines more: no retry
    assert _kinds(rig) == [
        (DecisionKind.switch, ICCID["lu-post"], True),
        (DecisionKind.rollback, ICCID["fr-orange"], True),
    ]
    assert rig.sim.card.enabled_iccids == [ICCID["fr-orange"]]
    rollback = rig.recorder.values("Rollback")
    assert len(rollback) == 1
    assert str(rollback[0]).startswith(f"rollback enable {ICCID['fr-orange']} (fr-orange)")
    assert rig.recorder.values("IsRoaming")[-1] == 1.0  # back on the French profile, roaming in LU
    lines = [json.loads(x) for x in rig.audit.read_text().splitlines()]
    decisions = [e["decision"] for e in lines if e["kind"] == "decision"]
    assert decisions == ["switch", "rollback"]
    assert any(e["kind"] == "es10" and e["function"] == "EnableProfile" for e in lines)
    assert verify(rig.audit) == len(lines)


async def test_long_coverage_hole_falls_back_to_bootstrap(rig: Rig) -> None:
    rig.sim.set_coverage(False)
    await rig.until(lambda: bool(rig.source.decisions))
    hole_s = rig.sim_s
    assert _kinds(rig) == [(DecisionKind.fallback, ICCID["bootstrap"], True)]
    assert rig.sim.card.enabled_iccids == [ICCID["bootstrap"]]
    assert hole_s >= 120  # fallback_after_s, in simulated seconds
    assert rig.recorder.values("RegistrationStatus")[-1] == "searching"
    assert rig.recorder.values("Plmn")[-1] == ""
    assert str(rig.recorder.values("ProfileSwitch")[-1]).startswith(f"fallback enable {ICCID['bootstrap']}")
    rig.sim.set_coverage(True)
    await rig.until(lambda: rig.recorder.values("Plmn")[-1:] == ["208-10"])  # bootstrap roams in FR


async def test_signals_have_the_declared_types(rig: Rig) -> None:
    rig.sim.set_country("DE")
    await rig.until(lambda: bool(rig.recorder.values("ProfileSwitch")))
    kinds = {s.name: s.value_type for s in SIGNALS}
    seen = {name for name, _, _ in rig.recorder.samples}
    assert {
        "Vehicle.Connectivity.Iccid",
        "Vehicle.Connectivity.Plmn",
        "Vehicle.Connectivity.AccessTechnology",
        "Vehicle.Connectivity.SignalStrength",
        "Vehicle.Connectivity.IsRoaming",
        "Vehicle.Connectivity.ProfileSwitch",
    } <= seen
    for name, value, t_ns in rig.recorder.samples:
        assert (kinds[name] == "string") == isinstance(value, str), (name, value)
        assert T0_US * 1000 <= t_ns <= T0_US * 1000 + 3600 * 10**9, "stamped with the GNSS clock"
    assert rig.recorder.values("SignalStrength")[0] == -86.0  # RSRP index 55
    assert "eutran" in rig.recorder.values("AccessTechnology")
    times = [t for _, _, t in rig.recorder.samples]
    assert times == sorted(times)


async def test_modem_and_card_errors_do_not_stop_the_source(rig: Rig) -> None:
    rig.sim.inject_cme("AT+CEREG?", 10, count=3)
    rig.sim.inject_no_answer("AT+CSQ", count=1)
    await rig.until(lambda: rig.source.errors >= 4)
    rig.sim.card.mute = True  # the card stops answering: re-reads fail, the port is reopened
    await rig.until(lambda: rig.source.reopens >= 1)
    rig.sim.card.mute = False
    rig.sim.card.cat_busy = True  # EnableProfile answers catBusy
    rig.sim.set_country("DE")
    await rig.until(lambda: bool(rig.source.decisions))
    assert _kinds(rig) == [(DecisionKind.switch, ICCID["de-telekom"], False)]
    assert "catBusy" in str(rig.recorder.values("SwitchError"))
    assert rig.sim.card.enabled_iccids == [ICCID["fr-orange"]]
    # still polling: roaming on the French profile in DE
    await rig.until(lambda: rig.recorder.values("Plmn")[-1:] == ["262-02"])
    text = rig.audit.read_text()
    assert '"kind":"error"' in text and '"ok":false' in text
    assert verify(rig.audit) > 0


async def test_a_bug_in_the_loop_does_not_end_the_source(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unexpected exception (not a TcuError) is logged and audited; the port is reopened."""
    real_poll = ConnectivitySource.poll
    calls = 0

    async def buggy_poll(self: ConnectivitySource, *args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("coroutine raised StopIteration")
        return await real_poll(self, *args)

    monkeypatch.setattr(ConnectivitySource, "poll", buggy_poll)
    errors = rig.source.errors
    await rig.until(lambda: calls >= 3)
    assert rig.source.errors == errors + 1
    assert "RuntimeError: coroutine raised StopIteration" in rig.audit.read_text()
    assert verify(rig.audit) > 0


async def test_late_modem_answers_are_not_misread(rig: Rig) -> None:
    """A modem that answers after the timeout: polls fail, none reads another command's answer."""
    errors = rig.source.errors
    rig.sim.inject_delay("AT+CSQ", 1.5, count=2)
    await rig.until(lambda: rig.source.errors >= errors + 2)
    samples = len(rig.recorder.samples)
    rig.sim.set_country("DE")
    await rig.until(lambda: rig.recorder.values("Plmn")[-1:] == ["262-02"])
    assert "ModemParseError" not in rig.audit.read_text()
    assert len(rig.recorder.samples) > samples


async def _order(rig: Rig, label: str, command_id: str, reason: str = "") -> str:
    async with asyncio.timeout(10):
        return await rig.source.order(EsimOrder(ICCID[label], reason), command_id=command_id)


def _audit(rig: Rig) -> list[dict[str, Any]]:
    return [json.loads(x) for x in rig.audit.read_text().splitlines()]


async def test_ordered_switch_is_executed_audited_and_held_in_the_country(rig: Rig) -> None:
    note = await _order(rig, "de-telekom", "order-1", "fleet test")
    assert note == f"enabled {ICCID['de-telekom']} (de-telekom), registered on 208-10"  # roaming in FR
    assert rig.sim.card.enabled_iccids == [ICCID["de-telekom"]]
    assert _kinds(rig) == [(DecisionKind.order, ICCID["de-telekom"], True)]
    assert rig.recorder.values("ProfileSwitch") == [
        f"order enable {ICCID['de-telekom']} (de-telekom) "
        "reason=ordered by backend (command order-1): fleet test"
    ]
    assert rig.recorder.values("Iccid")[-1] == ICCID["de-telekom"]
    lines = _audit(rig)
    decisions = [e for e in lines if e["kind"] == "decision"]
    assert [(e["decision"], e["command_id"], e["target"], e["previous"]) for e in decisions] == [
        ("order", "order-1", ICCID["de-telekom"], ICCID["fr-orange"])
    ]
    assert decisions[0]["reason"].endswith(": fleet test")
    after = lines[lines.index(decisions[0]) :]
    assert any(e["kind"] == "es10" and e["function"] == "EnableProfile" and e["ok"] for e in after)
    assert any(e["kind"] == "outcome" and e["ok"] and e["enabled"] == ICCID["de-telekom"] for e in after)
    assert verify(rig.audit) == len(lines)
    assert rig.source.pending_order is None
    # FR prefers fr-orange and would localize at once (max_roaming_days = 0): the order holds.
    start = rig.sim_s
    await rig.until(lambda: rig.sim_s - start > 60)  # min_dwell_s and two attach deadlines
    assert _kinds(rig) == [(DecisionKind.order, ICCID["de-telekom"], True)]
    assert rig.sim.card.enabled_iccids == [ICCID["de-telekom"]]
    # A new country ends the hold: LU's rule applies again (lu-post, which then fails to attach).
    rig.sim.set_country("LU")
    await rig.until(lambda: len(rig.source.decisions) >= 2)
    assert _kinds(rig)[1] == (DecisionKind.switch, ICCID["lu-post"], True)


async def test_ordered_profile_that_never_attaches_is_rolled_back(rig: Rig) -> None:
    rig.sim.never_attach.add((ICCID["de-telekom"], "FR"))
    with pytest.raises(CommandRefused) as refused:
        await _order(rig, "de-telekom", "order-2")
    assert str(refused.value) == "rolled_back: no registration on de-telekom within 30 s: back to fr-orange"
    assert _kinds(rig) == [
        (DecisionKind.order, ICCID["de-telekom"], True),
        (DecisionKind.rollback, ICCID["fr-orange"], True),
    ]
    assert rig.sim.card.enabled_iccids == [ICCID["fr-orange"]]
    assert len(rig.recorder.values("Rollback")) == 1
    assert [e["decision"] for e in _audit(rig) if e["kind"] == "decision"] == ["order", "rollback"]
    assert verify(rig.audit) == len(_audit(rig))
    # the source takes the next order
    note = await _order(rig, "fr-orange", "order-3")
    assert note == f"enabled {ICCID['fr-orange']} (fr-orange), registered on 208-01"


async def test_second_pending_order_and_card_refusal_are_answered_with_reasons(rig: Rig) -> None:
    first = asyncio.create_task(_order(rig, "de-telekom", "order-4"))
    await rig.until(lambda: rig.source.pending_order == "order-4")
    with pytest.raises(CommandRefused, match=r"^busy: order order-4 for de-telekom is still pending"):
        await _order(rig, "lu-post", "order-5")
    assert (await first).startswith(f"enabled {ICCID['de-telekom']}")
    assert ICCID["lu-post"] not in [d.target_iccid for d, _ in rig.source.decisions]
    # a profile the card does not have: the card's result code is in the reason
    with pytest.raises(CommandRefused) as refused:
        async with asyncio.timeout(10):
            await rig.source.order(EsimOrder("89000000000000000009"), command_id="order-6")
    assert refused.value.code == "failed"
    assert "iccidOrAidNotFound (1)" in str(refused.value), refused.value
    assert "iccidOrAidNotFound" in str(rig.recorder.values("SwitchError"))
    assert rig.source.pending_order is None
    # the failed order did not end the hold of the one before it
    start = rig.sim_s
    await rig.until(lambda: rig.sim_s - start > 60)
    assert [k for k, _, _ in _kinds(rig)] == [DecisionKind.order, DecisionKind.order]
    assert rig.sim.card.enabled_iccids == [ICCID["de-telekom"]]


def test_nmea_time_round_trip_and_monotonic_clock() -> None:
    pose = metz_luxembourg_trier().pose_at(50_000.0)
    rmc, gga = nmea_fix(T0_US + 123_450_000, pose, 30.0)
    fix = parse_nmea(rmc)
    assert fix is not None and fix.valid
    assert fix_time_ns(fix) == (T0_US + 123_450_000) * 1000
    assert fix.lat_deg == pytest.approx(pose.lat_deg, abs=1e-5)
    assert fix.lon_deg == pytest.approx(pose.lon_deg, abs=1e-5)
    gga_fix = parse_nmea(gga)
    assert gga_fix is not None and fix_time_ns(gga_fix) is None  # GGA has no date
    clock = GnssClock()
    wall = clock.now_ns()
    clock.on_fix(fix)
    first = clock.now_ns()
    assert first >= (T0_US + 123_450_000) * 1000 > wall
    earlier = parse_nmea(nmea_fix(T0_US, pose, 0.0)[0])
    assert earlier is not None
    clock.on_fix(earlier)
    assert clock.now_ns() >= first  # never backwards


def _agent_config(tmp_path: Path, table: dict[str, object]) -> AgentConfig:
    from tcu.config import parse_connectivity as parse_config  # what load_agent_config does

    return AgentConfig(
        vehicle_id="WTCUTEST000000001",
        buses=(),
        mapping=tmp_path / "m.toml",
        uplink=UplinkConfig(),
        connectivity=parse_config(table, base=tmp_path),
        source=tmp_path / "agent.toml",
    )


def test_config_is_checked_and_paths_resolved(tmp_path: Path) -> None:
    (tmp_path / "roaming.toml").write_text(POLICY)
    table: dict[str, object] = {
        "port": "/dev/ttyUSB2",
        "policy": "roaming.toml",
        "audit_log": "audit.jsonl",
        "poll_interval_s": 0.5,
        "modem_profile": "cfun-cycle",
    }
    source = build_connectivity_source(_agent_config(tmp_path, table))
    assert source.config.policy == tmp_path / "roaming.toml"
    assert source.config.audit_log == tmp_path / "audit.jsonl"
    assert source.config.poll_interval_s == 0.5
    assert source.policy_config.profiles["lu-post"] == ICCID["lu-post"]
    bad: list[tuple[dict[str, object], str]] = [
        ({k: v for k, v in table.items() if k != "port"}, "connectivity.port: required"),
        ({**table, "clock": "sundial"}, "connectivity.clock"),
        ({**table, "poll_interval_s": 0}, "connectivity.poll_interval_s"),
        ({**table, "modem_profile": "nokia"}, "connectivity.modem_profile"),
        ({**table, "reopen_after_errors": 0}, "connectivity.reopen_after_errors"),
        ({**table, "baud": 9600}, "unknown key"),
    ]
    for broken, message in bad:
        with pytest.raises(ConfigError, match=message):
            parse_connectivity(broken, base=tmp_path, source=str(tmp_path / "agent.toml"))
    with pytest.raises(ConfigError, match=r"roaming-missing\.toml"):
        build_connectivity_source(_agent_config(tmp_path, {**table, "policy": "roaming-missing.toml"}))
