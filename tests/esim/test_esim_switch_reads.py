"""ProfileManager reads the card's profile list once per switch: after the enable, to verify it (issue 12)."""

from __future__ import annotations

from sim.euicc import EuiccConfig, EuiccTransport, ProfileSpec, SimulatedEuicc
from tcu.esim import Decision, DecisionKind, ProfileManager

HOME = "89490200001234567890"
LOCAL = "89430100001234567891"


def _card() -> SimulatedEuicc:
    return SimulatedEuicc(
        EuiccConfig(
            profiles=(
                ProfileSpec(HOME, "Home DE", "OpDE", enabled=True),
                ProfileSpec(LOCAL, "Local AT", "OpAT"),
            )
        )
    )


def _reads(card: SimulatedEuicc) -> int:
    return card.es10_log.count("GetProfilesInfoRequest")


async def test_one_switch_reads_the_profile_list_once() -> None:
    card = _card()
    manager = ProfileManager(EuiccTransport(card))
    outcome = await manager.execute(Decision(DecisionKind.switch, LOCAL, "border", 1))
    assert outcome.ok and outcome.enabled_iccid == LOCAL and card.enabled_iccids == [LOCAL]
    # no read to decide (the card itself answers profileNotInDisabledState for the enabled one),
    # one to verify that the card switched and reports exactly one enabled profile
    assert _reads(card) == 1
    assert card.es10_log.count("EnableProfileRequest") == 1


async def test_a_switch_to_the_enabled_profile_reads_once_and_changes_nothing() -> None:
    card = _card()
    before = len(card.notifications)
    outcome = await ProfileManager(EuiccTransport(card)).execute(Decision(DecisionKind.switch, HOME, "x", 1))
    assert outcome.ok and outcome.enabled_iccid == HOME and _reads(card) == 1
    assert card.enabled_iccids == [HOME] and len(card.notifications) == before and card.refresh_count == 0


async def test_a_failed_switch_still_reports_the_enabled_profile() -> None:
    card = _card()
    card.cat_busy = True
    outcome = await ProfileManager(EuiccTransport(card)).execute(Decision(DecisionKind.switch, LOCAL, "x", 1))
    assert not outcome.ok and outcome.enabled_iccid == HOME and "catBusy" in (outcome.error or "")
    assert card.enabled_iccids == [HOME]


async def test_enable_alone_still_reads_before_and_after() -> None:
    card = _card()
    await ProfileManager(EuiccTransport(card)).enable(LOCAL)
    assert _reads(card) == 2 and card.enabled_iccids == [LOCAL]
