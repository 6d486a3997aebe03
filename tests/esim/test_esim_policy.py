"""Roaming policy engine, TOML rules, audit chain, ProfileManager against the simulated eUICC."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.euicc import EuiccConfig, EuiccTransport, ProfileSpec, SimulatedEuicc
from tcu.errors import ConfigError
from tcu.esim import es10
from tcu.esim.audit import AuditError, AuditLog, verify
from tcu.esim.manager import ProfileManager
from tcu.esim.policy import (
    Decision,
    DecisionKind,
    Observation,
    RoamingPolicy,
    distance_m,
    load_policy,
    parse_policy,
)

BOOT = "8988211000000000001"
HOME = "89490200001234567890"
LOCAL = "89430100001234567891"

TOML = f"""
[policy]
min_dwell_s = 300
min_border_distance_m = 2000
attach_deadline_s = 120
fallback_after_s = 600
max_switches_per_hour = 3
fallback = "bootstrap"

[profiles]
bootstrap = "{BOOT}"
home-de = "{HOME}"
local-at = "{LOCAL}"

[countries.DE]
preferred = "home-de"
bbox = [47.27, 5.87, 55.06, 15.04]

[countries.AT]
preferred = "local-at"
allow_roaming = ["home-de", "bootstrap"]
bbox = [46.37, 9.53, 49.02, 17.16]

[countries.CH]
allow_roaming = ["bootstrap"]

[countries.SA]
preferred = "local-at"
max_roaming_days = 120
"""

S = 1_000_000_000


def obs(t_s: float, enabled: str | None, registered: bool, mcc: str | None = None, pos=None) -> Observation:
    return Observation(int(t_s * S), enabled, registered, mcc, pos)


def test_toml_parses_and_names_bad_keys(tmp_path: Path) -> None:
    path = tmp_path / "roaming.toml"
    path.write_text(TOML)
    config = load_policy(path)
    assert config.fallback_iccid == BOOT and config.max_switches_per_hour == 3
    assert config.countries["AT"].allow_roaming == (HOME, BOOT)
    assert config.countries["SA"].max_roaming_s == 120 * 86400
    assert config.label(LOCAL) == "local-at"
    with pytest.raises(ConfigError, match=r"roaming.toml: countries.AT.preferred: unknown profile 'nope'"):
        parse_policy(
            TOML.replace('preferred = "local-at"\nallow', 'preferred = "nope"\nallow'), source="roaming.toml"
        )
    with pytest.raises(ConfigError, match=r"policy\.min_dwell_s: must be a non-negative number"):
        parse_policy(TOML.replace("min_dwell_s = 300", "min_dwell_s = -1"))
    with pytest.raises(ConfigError, match=r"policy\.colour: unknown key"):
        parse_policy(TOML.replace("[policy]", '[policy]\ncolour = "red"'))
    with pytest.raises(ConfigError, match="invalid TOML"):
        parse_policy("[policy")
    with pytest.raises(ConfigError, match=r"profiles\.x: ICCID .12. must be 18-20 digits"):
        parse_policy('[profiles]\nx = "12"')


def test_border_hysteresis_then_localize() -> None:
    policy = RoamingPolicy(parse_policy(TOML))
    assert policy.step(obs(0, HOME, True, "26201", (47.60, 12.20))) is None
    assert policy.country == "DE"
    # crossed into AT: dwell not reached yet
    assert policy.step(obs(10, HOME, True, "23201", (47.58, 12.25))) is None
    assert policy.country == "DE"
    # dwell reached but only ~1 km past the first AT fix: still DE
    assert policy.step(obs(400, HOME, True, "23201", (47.57, 12.26))) is None
    assert policy.country == "DE"
    decision = policy.step(obs(500, HOME, True, "23201", (47.50, 12.40)))
    assert distance_m((47.58, 12.25), (47.50, 12.40)) > 2000
    assert decision is not None and decision.kind is DecisionKind.switch
    assert (decision.target_iccid, decision.country, decision.previous_iccid) == (LOCAL, "AT", HOME)
    assert "localize to local-at" in decision.reason
    # waiting for attach: no new decision, then registration on the new profile clears it
    assert policy.step(obs(520, LOCAL, False, None, (47.50, 12.41))) is None
    assert policy.step(obs(540, LOCAL, True, "23203", (47.50, 12.42))) is None


def test_attach_deadline_rolls_back_and_does_not_retry() -> None:
    policy = RoamingPolicy(parse_policy(TOML.replace("min_dwell_s = 300", "min_dwell_s = 0")))
    policy.step(obs(0, HOME, True, "26201"))
    decision = policy.step(obs(1, HOME, True, "23201"))
    assert decision is not None and decision.target_iccid == LOCAL
    assert policy.step(obs(100, LOCAL, False)) is None
    rollback = policy.step(obs(122, LOCAL, False))
    assert rollback is not None and rollback.kind is DecisionKind.rollback and rollback.target_iccid == HOME
    assert "within 120 s" in rollback.reason
    assert policy.step(obs(130, HOME, True, "23201")) is None  # local-at failed here: no retry
    assert policy.step(obs(3000, HOME, True, "23201")) is None
    again = policy.step(obs(3800, HOME, True, "23201"))  # retry_after_s (3600) passed
    assert again is not None and again.target_iccid == LOCAL


def test_fallback_after_no_registration_from_gnss_country() -> None:
    policy = RoamingPolicy(parse_policy(TOML))
    # Vienna by GNSS; AT localizes at once (home-de may roam there, but local-at is preferred)
    first = policy.step(obs(0, HOME, False, None, (48.2, 16.3)))
    assert policy.country == "AT"
    assert first is not None and first.target_iccid == LOCAL
    policy.record_outcome(first, ok=False)
    decision = policy.step(obs(700, HOME, False, None, (48.2, 16.3)))
    assert decision is not None and decision.kind is DecisionKind.fallback and decision.target_iccid == BOOT


def test_roaming_allowance_and_switch_cap() -> None:
    policy = RoamingPolicy(parse_policy(TOML.replace("min_dwell_s = 300", "min_dwell_s = 0")))
    decision = policy.step(obs(0, HOME, True, "22801"))
    assert decision is not None and decision.target_iccid == BOOT and "may not roam in CH" in decision.reason
    # permanent roaming limit: SA allows 120 days on another profile
    sa = RoamingPolicy(parse_policy(TOML))
    assert sa.step(obs(0, HOME, True, "42001")) is None
    assert sa.step(obs(119 * 86400, HOME, True, "42001")) is None
    late = sa.step(obs(121 * 86400, HOME, True, "42001"))
    assert late is not None and late.target_iccid == LOCAL
    # cap: three switches in an hour, the fourth is held once
    cap = RoamingPolicy(parse_policy(TOML.replace("min_dwell_s = 300", "min_dwell_s = 0")))
    cap.step(obs(0, HOME, True, "26201"))
    kinds = []
    for i, (mcc, enabled) in enumerate(
        [("23201", HOME), ("26201", LOCAL), ("23201", HOME), ("26201", LOCAL)]
    ):
        d = cap.step(obs(11 + 100 * i, enabled, True, mcc))  # no dwell, no positions: at once
        kinds.append(d.kind if d else None)
        if d and d.kind is not DecisionKind.hold:
            assert cap.step(obs(12 + 100 * i, d.target_iccid, True, mcc)) is None
    assert kinds == [DecisionKind.switch, DecisionKind.switch, DecisionKind.switch, DecisionKind.hold]
    assert cap.step(obs(400, LOCAL, True, "26201")) is None  # the same hold is not repeated
    cap.step(obs(401, LOCAL, False))
    safety = cap.step(obs(1002, LOCAL, False))  # cap still full, but fallback is never held
    assert safety is not None and safety.kind is DecisionKind.fallback and safety.target_iccid == BOOT


def _ordered(policy: RoamingPolicy, target: str, t_s: float, enabled: str) -> Decision:
    decision = policy.record_order(target, int(t_s * S), enabled=enabled, command_id="c-1", reason="ops")
    assert (decision.kind, decision.target_iccid, decision.previous_iccid) == (
        DecisionKind.order,
        target,
        enabled,
    )
    assert decision.to_fields()["command_id"] == "c-1" and decision.to_fields()["decision"] == "order"
    policy.record_outcome(decision, ok=True)
    return decision


def test_an_order_holds_in_its_country_until_the_country_changes() -> None:
    config = parse_policy(TOML.replace("min_dwell_s = 300", "min_dwell_s = 0"))
    assert config.order_hold_s == 86400.0
    policy = RoamingPolicy(config)
    assert policy.step(obs(0, HOME, True, "23201")) is not None  # AT: localize to local-at ...
    policy.record_outcome(Decision(DecisionKind.switch, LOCAL, "", 0, "AT", HOME), ok=False)
    _ordered(policy, HOME, 10, enabled=HOME)  # ... but the backend orders home-de
    assert policy.pending_target == HOME and not policy.order_holds
    assert policy.step(obs(11, HOME, True, "23201")) is None
    assert policy.order_holds and policy.pending_target is None
    for t in (12, 3_600, 80_000):
        assert policy.step(obs(t, HOME, True, "23201")) is None  # no switch back to local-at
    assert policy.step(obs(80_001, HOME, True, "26201")) is None  # DE: home-de is preferred anyway
    assert not policy.order_holds
    back = policy.step(obs(80_002, HOME, True, "23201"))  # AT again: the country rule applies
    assert back is not None and back.kind is DecisionKind.switch and back.target_iccid == LOCAL


def test_an_order_holds_at_most_order_hold_s_and_a_failed_one_rolls_back() -> None:
    policy = RoamingPolicy(
        parse_policy(TOML.replace("min_dwell_s = 300", "min_dwell_s = 0\norder_hold_s = 600"))
    )
    policy.step(obs(0, LOCAL, True, "23203"))
    _ordered(policy, HOME, 10, enabled=LOCAL)
    assert policy.step(obs(11, HOME, True, "23201")) is None
    assert policy.step(obs(609, HOME, True, "23201")) is None
    again = policy.step(obs(610, HOME, True, "23201"))
    assert again is not None and again.kind is DecisionKind.switch and again.target_iccid == LOCAL
    assert policy.step(obs(611, LOCAL, True, "23203")) is None
    # an order that does not attach is rolled back like a switch; the previous hold is kept
    _ordered(policy, HOME, 700, enabled=LOCAL)
    assert policy.step(obs(701, HOME, True, "23201")) is None and policy.order_holds
    _ordered(policy, BOOT, 710, enabled=HOME)
    assert policy.step(obs(800, BOOT, False)) is None
    rollback = policy.step(obs(830, BOOT, False))
    assert rollback is not None and rollback.kind is DecisionKind.rollback and rollback.target_iccid == HOME
    assert policy.step(obs(831, HOME, True, "23201")) is None
    assert policy.order_holds  # home-de's order (from t=700) holds again
    # an order the card refuses ends nothing either
    refused = policy.record_order(BOOT, 900 * S, enabled=HOME, command_id="c-2", reason="")
    policy.record_outcome(refused, ok=False)
    assert policy.pending_target is None and policy.order_holds
    assert policy.step(obs(901, HOME, True, "23201")) is None
    with pytest.raises(ConfigError, match=r"policy\.order_hold_s: must be a non-negative number"):
        parse_policy("[policy]\norder_hold_s = -1")


def test_audit_chain_detects_tampering(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    for i in range(5):
        log.append("es10", {"function": "GetEID", "n": i})
    assert verify(path) == 5
    assert AuditLog(path).append("decision", {"x": 1}) == 6  # continues the chain
    assert verify(path) == 6
    lines = path.read_bytes().splitlines(keepends=True)
    edited = json.loads(lines[2])
    edited["n"] = 99
    tampered = tmp_path / "t.jsonl"
    tampered.write_bytes(b"".join([*lines[:2], json.dumps(edited).encode() + b"\n", *lines[3:]]))
    with pytest.raises(AuditError, match=r"t.jsonl:4: hash chain broken"):
        verify(tampered)
    dropped = tmp_path / "d.jsonl"
    dropped.write_bytes(b"".join(lines[:1] + lines[2:]))
    with pytest.raises(AuditError, match=r"d.jsonl:2: hash chain broken"):
        verify(dropped)
    cut = tmp_path / "c.jsonl"
    cut.write_bytes(b"".join(lines)[:-5])
    with pytest.raises(AuditError, match="truncated last line"):
        verify(cut)
    with pytest.raises(AuditError, match="reserved"):
        log.append("x", {"prev": "0"})


def card() -> SimulatedEuicc:
    return SimulatedEuicc(
        EuiccConfig(
            profiles=(
                ProfileSpec(BOOT, "Bootstrap", "Global", es10.ProfileClass.provisioning),
                ProfileSpec(HOME, "Home DE", "OpDE", enabled=True),
                ProfileSpec(LOCAL, "Local AT", "OpAT"),
            )
        )
    )


async def test_manager_executes_and_audits(tmp_path: Path) -> None:
    sim = card()
    calls = []

    async def after_switch() -> None:
        calls.append("after")

    audit = AuditLog(tmp_path / "a.jsonl", fsync=True)
    manager = ProfileManager(EuiccTransport(sim), audit=audit, after_switch=after_switch)
    decision = Decision(DecisionKind.switch, LOCAL, "test", 1, "AT", HOME)
    outcome = await manager.execute(decision)
    assert outcome.ok and outcome.enabled_iccid == LOCAL and sim.enabled_iccids == [LOCAL]
    assert calls == ["after"]
    sim.cat_busy = True
    failed = await manager.execute(Decision(DecisionKind.switch, HOME, "test", 2, "DE", LOCAL))
    assert not failed.ok and "catBusy" in (failed.error or "") and failed.enabled_iccid == LOCAL
    entries = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    kinds = [(e["kind"], e.get("function")) for e in entries]
    assert kinds[0] == ("decision", None)
    assert ("es10", "EnableProfile") in kinds
    enable_fail = [e for e in entries if e.get("function") == "EnableProfile" and not e["ok"]]
    assert "catBusy (5)" in enable_fail[0]["error"]
    # the card was re-read after the error
    index = entries.index(enable_fail[0])
    assert entries[index + 1]["function"] == "GetProfilesInfo"
    assert verify(tmp_path / "a.jsonl") == len(entries)


faults = st.sampled_from(["none", "catBusy", "6F00", "mute", "truncate", "chain"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from([BOOT, HOME, LOCAL]), faults), min_size=1, max_size=12))
async def test_random_switches_and_faults_keep_one_enabled(
    tmp_path: Path, steps: list[tuple[str, str]]
) -> None:
    sim = card()
    path = tmp_path / f"prop-{id(steps)}.jsonl"
    path.unlink(missing_ok=True)
    manager = ProfileManager(EuiccTransport(sim), audit=AuditLog(path))
    for t, (target, fault) in enumerate(steps):
        sim.cat_busy = fault == "catBusy"
        sim.mute = fault == "mute"
        if fault == "6F00":
            sim.inject_sw(0x6F00)
        if fault == "truncate":
            sim.inject_truncation()
        sim.config = EuiccConfig(profiles=(), always_chain=fault == "chain")
        before = list(sim.enabled_iccids)
        outcome = await manager.execute(Decision(DecisionKind.switch, target, "prop", t, None, None))
        assert len(sim.enabled_iccids) == 1
        if outcome.ok:
            assert sim.enabled_iccids == [target]
        else:
            assert fault in ("catBusy", "6F00", "mute", "truncate")
            assert sim.enabled_iccids in (before, [target])
        sim.power_cycle()
    sim.cat_busy = sim.mute = False
    sim.config = EuiccConfig(profiles=())
    fallback = await manager.execute(Decision(DecisionKind.fallback, BOOT, "prop", 99, None, None))
    assert fallback.ok and sim.enabled_iccids == [BOOT]
    assert verify(path) >= 2 * len(steps)


def test_docstring_example_parses() -> None:
    import textwrap

    import tcu.esim.policy as module

    doc = module.__doc__ or ""
    example = textwrap.dedent(doc.split("Example (``roaming.toml``)::", 1)[1])
    config = parse_policy(example)
    assert config.fallback_iccid == BOOT
    assert config.countries["AT"].preferred == LOCAL and config.countries["AT"].max_roaming_s == 0.0
    assert config.countries["DE"].bbox == (47.27, 5.87, 55.06, 15.04)
