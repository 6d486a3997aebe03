"""ProfileManager reads the card's profile list once before a switch and once after it (no duplicates)."""

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


async def test_one_switch_reads_the_profile_list_before_and_after_only() -> None:
    card = _card()
    manager = ProfileManager(EuiccTransport(card))
    outcome = await manager.execute(Decision(DecisionKind.switch, LOCAL, "border", 1))
    assert outcome.ok and outcome.enabled_iccid == LOCAL and card.enabled_iccids == [LOCAL]
    # one read to decide (is the target already enabled?), one to verify the card switched
    assert _reads(card) == 2
    assert card.es10_log.count("EnableProfileRequest") == 1


async def test_a_switch_to_the_enabled_profile_reads_once_and_changes_nothing() -> None:
    card = _card()
    outcome = await ProfileManager(EuiccTransport(card)).execute(Decision(DecisionKind.switch, HOME, "x", 1))
    assert outcome.ok and _reads(card) == 1 and "EnableProfileRequest" not in card.es10_log


async def test_enable_alone_still_reads_before_and_after() -> None:
    card = _card()
    await ProfileManager(EuiccTransport(card)).enable(LOCAL)
    assert _reads(card) == 2 and card.enabled_iccids == [LOCAL]
