"""Policy-driven download: a country whose preferred profile the card does not hold (pure engine)."""

from __future__ import annotations

import pytest

from tcu.errors import ConfigError
from tcu.esim.policy import DecisionKind, Observation, RoamingPolicy, parse_policy

HOME = "89490200001234567890"
LOCAL = "8949449999999990049"
CODE = "LPA:1$testsmdpplus1.example.com$TS48V2-SAIP2-1-BERTLV-UNIQUE"
S = 1_000_000_000

TOML = f"""
[policy]
min_dwell_s = 10
min_border_distance_m = 0
attach_deadline_s = 60
download_attempts = 2
download_retry_s = 100

[profiles]
home-de = "{HOME}"
local-lu = "{LOCAL}"

[countries.DE]
preferred = "home-de"

[countries.LU]
preferred = "local-lu"
download = "{CODE}"
"""


def obs(
    t_s: float,
    enabled: str | None,
    registered: bool = True,
    mcc: str = "270",
    installed: tuple[str, ...] | None = (HOME,),
) -> Observation:
    return Observation(
        int(t_s * S), enabled, registered, mcc, None, frozenset(installed) if installed else None
    )


def _into_lu(policy: RoamingPolicy) -> None:
    assert policy.step(obs(0, HOME, mcc="262")) is None
    assert policy.step(obs(1, HOME)) is None  # LU seen, not yet confirmed (dwell)


def test_a_country_without_its_profile_asks_for_a_download_then_supervises_the_attach() -> None:
    policy = RoamingPolicy(parse_policy(TOML))
    _into_lu(policy)
    decision = policy.step(obs(12, HOME))
    assert decision is not None and decision.kind is DecisionKind.download
    assert decision.target_iccid == LOCAL and decision.activation_code == CODE
    assert decision.previous_iccid == HOME and "download it (attempt 1)" in decision.reason
    assert decision.to_fields()["activation_code"] == CODE
    policy.record_outcome(decision, True, t_ns=40 * S)  # fetched and enabled at 40 s
    assert policy.pending_target == LOCAL
    # the new profile never attaches: back to the previous one, attach_deadline_s after the enable
    assert policy.step(obs(80, LOCAL, registered=False, installed=(HOME, LOCAL))) is None
    rollback = policy.step(obs(101, LOCAL, registered=False, installed=(HOME, LOCAL)))
    assert rollback is not None and rollback.kind is DecisionKind.rollback and rollback.target_iccid == HOME


def test_failed_downloads_are_retried_a_bounded_number_of_times_then_given_up_once() -> None:
    policy = RoamingPolicy(parse_policy(TOML))
    _into_lu(policy)
    first = policy.step(obs(12, HOME))
    assert first is not None and first.kind is DecisionKind.download
    policy.record_outcome(first, False)
    assert policy.step(obs(50, HOME)) is None  # within download_retry_s
    second = policy.step(obs(113, HOME))
    assert second is not None and second.kind is DecisionKind.download and "attempt 2" in second.reason
    policy.record_outcome(second, False)
    hold = policy.step(obs(300, HOME))
    assert hold is not None and hold.kind is DecisionKind.hold and "given up after 2 attempts" in hold.reason
    assert policy.step(obs(900, HOME)) is None  # said once


def test_without_a_download_or_a_card_listing_nothing_changes() -> None:
    no_code = TOML.replace(f'download = "{CODE}"', "")
    policy = RoamingPolicy(parse_policy(no_code))
    _into_lu(policy)
    assert policy.step(obs(12, HOME)) is None  # the card lacks local-lu and nothing can fetch it
    policy = RoamingPolicy(parse_policy(TOML))
    _into_lu(policy)
    unknown = policy.step(obs(12, HOME, installed=None))  # card contents unknown: the old switch rule
    assert unknown is not None and unknown.kind is DecisionKind.switch


def test_download_needs_preferred_and_an_activation_code() -> None:
    with pytest.raises(ConfigError, match=r"countries\.LU\.download: needs preferred"):
        parse_policy(f'[countries.LU]\ndownload = "{CODE}"\n')
    with pytest.raises(ConfigError, match=r"countries\.LU\.download: must be an activation code"):
        parse_policy(TOML.replace(CODE, "https://smdp.example.com"))
