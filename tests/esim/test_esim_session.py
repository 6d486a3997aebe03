"""ISD-R session against the simulated eUICC: framing, chaining, card rules, faults."""

from __future__ import annotations

import json

import pytest

from sim.euicc import EuiccConfig, EuiccTransport, ProfileSpec, SimulatedEuicc
from tcu.esim import es10
from tcu.esim.session import (
    ISDR_AID,
    ApduStatusError,
    ApduTransportError,
    Es10ResultError,
    IsdrSession,
)
from tools.shared_data import shared_path

VECTORS = json.loads(shared_path("esim/vectors/es10-vectors.json").read_text())
A = "89000123456789012341"
B = "89490200001234567893"
C = "8988211000000000001"


def make_card(**kwargs: object) -> SimulatedEuicc:
    profiles = (
        ProfileSpec(A, "Home DE", "OpDE", enabled=True),
        ProfileSpec(B, "Local AT", "OpAT"),
        ProfileSpec(C, "Bootstrap", "Global", es10.ProfileClass.provisioning),
    )
    return SimulatedEuicc(EuiccConfig(profiles=profiles, **kwargs))  # type: ignore[arg-type]


class Recorder(EuiccTransport):
    def __init__(self, card: SimulatedEuicc) -> None:
        super().__init__(card)
        self.sent: list[bytes] = []

    async def transmit(self, handle: int, apdu: bytes) -> bytes:
        self.sent.append(apdu)
        return await super().transmit(handle, apdu)


def test_card_answers_vector_apdus_like_lpac_trace() -> None:
    card = make_card(always_chain=True)
    assert card.transmit(bytes.fromhex("0070000001")) == bytes.fromhex("019000")
    assert card.transmit(bytes.fromhex("01A4040010") + ISDR_AID) == bytes.fromhex("9000")
    by_name = {v["name"]: v for v in VECTORS["vectors"]}
    assert card.transmit(bytes.fromhex(by_name["GetEID"]["store_data_apdu_ch1"])) == bytes.fromhex("6115")
    answer = card.transmit(bytes.fromhex("01C0000015"))
    assert answer == bytes.fromhex("BF3E125A10" + card.config.eid + "9000")
    assert card.transmit(bytes.fromhex("01C0000015")) == bytes.fromhex("6985")


def test_store_data_block_order_enforced() -> None:
    card = make_card()
    card.transmit(bytes.fromhex("0070000001"))
    card.transmit(bytes.fromhex("01A4040010") + ISDR_AID)
    assert card.transmit(bytes.fromhex("81E2110001BF")) == bytes.fromhex("9000")
    assert card.transmit(bytes.fromhex("81E2910301AA")) == bytes.fromhex("6A86")
    # after the error the card expects block 0 again
    assert card.transmit(bytes.fromhex("81E2910103BF2200")) == bytes.fromhex("6A86")
    assert card.transmit(bytes.fromhex("81E2910003BF2200"))[-2:] == bytes.fromhex("9000")
    # STORE DATA without ISD-R selected, unknown channel, unknown AID
    assert card.transmit(bytes.fromhex("80E2910003BF2200")) == bytes.fromhex("6985")
    assert card.transmit(bytes.fromhex("83E2910003BF2200")) == bytes.fromhex("6881")
    assert card.transmit(bytes.fromhex("01A4040002A000")) == bytes.fromhex("6A82")


async def test_session_reads_eid_info_and_profiles() -> None:
    card = make_card()
    async with IsdrSession(EuiccTransport(card)) as session:
        assert await session.get_eid() == card.config.eid
        info = await session.get_euicc_info2()
        assert info.svn == "2.2.2"
        profiles = await session.list_profiles()
    assert [p.iccid for p in profiles] == [A, B, C]
    assert [p.state for p in profiles] == [es10.ProfileState.enabled, *[es10.ProfileState.disabled] * 2]
    assert profiles[2].profile_class is es10.ProfileClass.provisioning
    assert profiles[1].service_provider == "OpAT"
    assert card.transmit(bytes.fromhex("0070800001")) == bytes.fromhex("6A86")  # channel was closed


async def test_segmentation_and_get_response_chaining() -> None:
    many = tuple(ProfileSpec(f"8900000000000000{i:03d}1", f"P{i}" * 20, "Op" * 10) for i in range(12))
    card = SimulatedEuicc(EuiccConfig(profiles=many))
    transport = Recorder(card)
    async with IsdrSession(transport) as session:
        profiles = await session.list_profiles()
        assert len(profiles) == 12
        assert any(apdu[1] == 0xC0 for apdu in transport.sent)  # > 256 B answer was chained
        transport.sent.clear()
        long_nick = "n" * 64
        await session.set_nickname(many[0].iccid, long_nick)
    nick = [a for a in transport.sent if a[1] == 0xE2]
    assert len(es10.SetNicknameRequest(many[0].iccid, long_nick).encode()) <= 120
    assert [(a[2], a[3]) for a in nick] == [(0x91, 0)]  # 81 bytes fit one block
    session = IsdrSession(transport, segment_size=16)
    transport.sent.clear()
    await session.set_nickname(many[0].iccid, "x" * 40)
    blocks = [(a[2], a[3], a[4]) for a in transport.sent if a[1] == 0xE2]
    assert blocks[:-1] == [(0x11, i, 16) for i in range(len(blocks) - 1)]
    assert blocks[-1][:2] == (0x91, len(blocks) - 1)
    assert all(a[0] == 0x80 for a in transport.sent)  # channel bits left to the transport
    assert card.profiles[0].nickname == "x" * 40
    await session.aclose()


async def test_enable_switches_exactly_one_and_notifies() -> None:
    card = make_card()
    async with IsdrSession(EuiccTransport(card)) as session:
        await session.enable_profile(es10.ProfileRef(iccid=B))
        assert session.proactive_pending is True  # 9110 after refresh
        assert card.enabled_iccids == [B]
        with pytest.raises(Es10ResultError, match="profileNotInDisabledState") as info:
            await session.enable_profile(es10.ProfileRef(iccid=B))
        assert info.value.result is es10.EnableResult.profileNotInDisabledState
        with pytest.raises(Es10ResultError, match="iccidOrAidNotFound"):
            await session.enable_profile(es10.ProfileRef(iccid="89000000000000000000"))
        with pytest.raises(Es10ResultError, match="profileNotInDisabledState"):
            await session.delete_profile(es10.ProfileRef(iccid=B))
        with pytest.raises(Es10ResultError, match="profileNotInEnabledState"):
            await session.disable_profile(es10.ProfileRef(iccid=A))
        notes = await session.list_notifications()
        assert [(n.seq, n.event, n.iccid) for n in notes] == [
            (1, es10.NotificationEvent.disable, A),
            (2, es10.NotificationEvent.enable, B),
        ]
        await session.notification_sent(1)
        with pytest.raises(Es10ResultError, match="nothingToDelete"):
            await session.notification_sent(1)
        await session.delete_profile(es10.ProfileRef(iccid=A))
        assert [n.seq for n in await session.list_notifications()] == [2, 3]
        await session.disable_profile(es10.ProfileRef(aid=card.profiles[0].aid), refresh=False)
        assert card.enabled_iccids == []
        await session.memory_reset(es10.EuiccMemoryResetRequest())
        assert [p.iccid for p in card.profiles] == [C]  # provisioning profile survives
        with pytest.raises(Es10ResultError, match="nothingToDelete"):
            await session.memory_reset(es10.EuiccMemoryResetRequest())


async def test_faults_are_named() -> None:
    card = make_card()
    async with IsdrSession(EuiccTransport(card)) as session:
        card.cat_busy = True
        with pytest.raises(Es10ResultError, match=r"EnableProfile 8949.*catBusy \(5\)"):
            await session.enable_profile(es10.ProfileRef(iccid=B))
        card.cat_busy = False
        card.inject_sw(0x6F00)
        with pytest.raises(ApduStatusError, match="GetEID: card answered SW 6F00") as status:
            await session.get_eid()
        assert status.value.sw == 0x6F00
        card.inject_truncation()
        with pytest.raises(ApduStatusError, match="GetEID: card answered SW 8901"):
            await session.get_eid()  # the last EID bytes are taken for a status word
        card.config = EuiccConfig(profiles=(), always_chain=True)
        card.inject_truncation()  # the 61xx alone is lost
        with pytest.raises(ApduTransportError, match="truncated response"):
            await session.get_eid()
        card.mute = True
        with pytest.raises(ApduTransportError, match="GetEID block 0: transport failed") as muted:
            await session.get_eid()
        assert isinstance(muted.value.__cause__, TimeoutError)
        card.mute = False
        assert await session.get_eid() == card.config.eid
    assert card.enabled_iccids == [A]


async def test_session_lpa_functions() -> None:
    card = make_card()
    async with IsdrSession(EuiccTransport(card)) as session:
        info1 = await session.get_euicc_info1()
        assert info1.ci_pkids_signing == (card.credentials.ci_pkid,)
        challenge = await session.get_euicc_challenge()
        assert len(challenge) == 16 and challenge == card.euicc_challenge
        assert (await session.configured_addresses()).default_dp_address is None
        await session.set_default_dp_address("smdp.example.org")
        assert (await session.configured_addresses()).default_dp_address == "smdp.example.org"
        assert (await session.get_rat()) == card.config.rat
        await session.enable_profile(es10.ProfileRef(iccid=B))
        pending = await session.retrieve_notifications()
        assert [m.seq for m in pending.metadata() if m is not None] == [1, 2]
        assert len((await session.retrieve_notifications(seq=2)).notifications) == 1
        with pytest.raises(Es10ResultError, match=r"List seq 9: noResultAvailable \(1\)"):
            await session.retrieve_notifications(seq=9)
