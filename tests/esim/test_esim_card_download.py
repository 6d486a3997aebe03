"""The simulated card's ES10b download family, against a test SM-DP+ side (``rsp_server.py``).

Every request goes over the APDU path (STORE DATA segments, ``61xx``/GET RESPONSE). Every answer
is decoded with asn1tools from the shared SGP.22 ASN.1 and must re-encode to the same bytes. Each
refusal is checked for its SGP.22 code, its entry in ``card.download.refusals`` and a card whose
profiles are as they were.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from cryptography import x509
from rsp_server import EID, POLICY_DP_AUTH, REF, Pki, SmdpSide, make_upp

from sim.euicc import EuiccConfig, EuiccTransport, ProfileSpec, SimulatedEuicc
from sim.euicc_rsp import verify_raw_signature
from tcu.esim import der, es10
from tcu.esim.session import ApduStatusError, IsdrSession

HOME = "89490200001234567890"


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki.generate()


def make_card(pki: Pki, **config: Any) -> SimulatedEuicc:
    profiles = (ProfileSpec(HOME, "Telekom DE", "Telekom", enabled=True, size_b=1000),)
    return SimulatedEuicc(
        EuiccConfig(eid=EID, credentials=pki.credentials, profiles=profiles, always_chain=True, **config)
    )


def snapshot(card: SimulatedEuicc) -> list[tuple[str, str, int]]:
    return [(p.iccid, p.state.name, p.size_b) for p in card.profiles]


class Flow:
    def __init__(self, card: SimulatedEuicc, session: IsdrSession, smdp: SmdpSide) -> None:
        self.card, self.session, self.smdp = card, session, smdp
        self.last = b""

    async def send(self, request: bytes) -> bytes:
        self.last = await self.session.store_data(request)
        return self.last

    async def challenge(self) -> bytes:
        return await self.session.get_euicc_challenge()

    async def authenticate(self, **kwargs: Any) -> dict[str, Any]:
        request = self.smdp.authenticate_server(await self.challenge(), **kwargs)
        return self.smdp.take_authenticate_response(await self.send(request))

    async def prepare(self, **kwargs: Any) -> dict[str, Any]:
        return self.smdp.take_prepare_response(await self.send(self.smdp.prepare_download(**kwargs)))

    async def load(self, pieces: list[bytes]) -> tuple[bytes, int]:
        """Send the pieces until the card answers; return the answer and how many pieces it took."""
        for sent, piece in enumerate(pieces, 1):
            answer = await self.session.store_data(piece)
            if answer:
                return answer, sent
        raise AssertionError("the card never answered the BPP")

    async def ready(self) -> None:
        assert (await self.authenticate())["kind"] == "authenticateResponseOk"
        assert (await self.prepare())["kind"] == "downloadResponseOk"


@pytest.fixture
async def flow(pki: Pki) -> AsyncIterator[Flow]:
    card = make_card(pki)
    async with IsdrSession(EuiccTransport(card), segment_size=120) as session:
        yield Flow(card, session, SmdpSide(pki))


def final_result(pir: bytes) -> tuple[str, dict[str, Any]]:
    decoded = REF.decode("ProfileInstallationResult", pir)
    assert REF.encode("ProfileInstallationResult", decoded) == pir
    result: tuple[str, dict[str, Any]] = decoded["profileInstallationResultData"]["finalResult"]
    return result


# --- the whole download -------------------------------------------------------------------


@pytest.mark.parametrize("replace_keys", [True, False], ids=["ppk", "session-keys"])
async def test_a_download_installs_the_profile_and_keeps_the_signed_result(
    flow: Flow, replace_keys: bool
) -> None:
    card, smdp = flow.card, flow.smdp
    smdp.upp = make_upp(smdp.iccid, elements=7, size=900)  # several 86 segments
    auth = await flow.authenticate()
    assert auth["kind"] == "authenticateResponseOk"
    signed1 = der.decode_one(flow.last).children()[0].children()[0].encode()
    euicc_cert = x509.load_der_x509_certificate(card.credentials.euicc_certificate)
    assert verify_raw_signature(euicc_cert, auth["euiccSignature1"], signed1)
    assert auth["euiccSigned1"]["serverChallenge"] == smdp.server_challenge
    assert auth["euiccSigned1"]["euiccInfo2"]["euiccCiPKIdListForSigning"] == [card.credentials.ci_pkid]
    prepared = await flow.prepare()
    assert prepared["kind"] == "downloadResponseOk"
    signed2 = der.decode_one(flow.last).children()[0].children()[0].encode()
    assert verify_raw_signature(euicc_cert, prepared["euiccSignature2"], signed2 + smdp.smdp_signature2)

    pieces = smdp.bpp(replace_keys=replace_keys)
    pir, sent = await flow.load(pieces)
    assert sent == len(pieces)  # nothing before the last 86 answered
    kind, result = final_result(pir)
    assert kind == "successResult"
    new = card.profiles[-1]
    assert result["aid"] == new.aid
    assert (new.iccid, new.name, new.provider, new.profile_class, new.state) == (
        smdp.iccid, "Test profile", "Test SP", es10.ProfileClass.test, es10.ProfileState.disabled,
    )  # fmt: skip
    assert (new.size_b, new.elements) == (len(smdp.upp), 7)
    assert card.enabled_iccids == [HOME]
    data = der.decode_one(pir).children()[0].encode()
    assert verify_raw_signature(
        euicc_cert, REF.decode("ProfileInstallationResult", pir)["euiccSignPIR"], data
    )
    assert card.download.refusals == []

    # The install notification is the PIR; ListNotification names it, NotificationSent removes it.
    listed = await flow.session.list_notifications()
    assert [(n.event, n.iccid, n.address) for n in listed] == [
        (es10.NotificationEvent.install, smdp.iccid, smdp.address)
    ]
    retrieved = es10.RetrieveNotificationsListResponse.decode(
        await flow.session.store_data(es10.RetrieveNotificationsListRequest().encode())
    )
    assert retrieved.notifications == (pir,)
    await flow.session.notification_sent(listed[0].seq)
    assert card.notifications == [] and card.install_results == {}

    # The metadata asked for enable notifications only, to the SM-DP+.
    await flow.session.enable_profile(es10.ProfileRef(iccid=smdp.iccid), refresh=False)
    await flow.session.disable_profile(es10.ProfileRef(iccid=smdp.iccid), refresh=False)
    events = [(n.event, n.iccid, n.address) for n in card.notifications]
    assert events == [
        (es10.NotificationEvent.disable, HOME, card.config.notification_address),
        (es10.NotificationEvent.enable, smdp.iccid, smdp.address),
    ]


# --- AuthenticateServer refusals ------------------------------------------------------------


async def test_authenticate_refuses_a_forged_server_signature(flow: Flow) -> None:
    before = snapshot(flow.card)
    answer = await flow.authenticate(tamper_signature=True)
    assert (answer["kind"], answer["authenticateErrorCode"]) == ("authenticateResponseError", 2)
    assert answer["transactionId"] == flow.smdp.transaction_id
    assert flow.card.download.refusals == [
        "AuthenticateServer: invalidSignature: serverSignature1 does not verify"
    ]
    assert snapshot(flow.card) == before and flow.card.download.session is None


async def test_authenticate_refuses_a_server_of_another_ci(flow: Flow) -> None:
    other = Pki.generate()
    answer = await flow.authenticate(cert=other.dpauth, key=other.dpauth_key)
    assert answer["authenticateErrorCode"] == 1  # invalidCertificate
    assert flow.card.download.refusals[0].startswith(
        "AuthenticateServer: invalidCertificate: not issued by the CI"
    )


async def test_authenticate_refuses_an_expired_server_certificate(flow: Flow, pki: Pki) -> None:
    key, cert = pki.issue("old smdp", POLICY_DP_AUTH, days=(-30, -1))
    answer = await flow.authenticate(cert=cert, key=key)
    assert answer["authenticateErrorCode"] == 1
    assert "not valid now" in flow.card.download.refusals[0]


async def test_authenticate_refuses_a_dppb_certificate_for_authentication(flow: Flow, pki: Pki) -> None:
    answer = await flow.authenticate(cert=pki.dppb, key=pki.dppb_key)
    assert answer["authenticateErrorCode"] == 5  # invalidOid


async def test_authenticate_refuses_an_unknown_ci(flow: Flow) -> None:
    answer = await flow.authenticate(ci_pkid=bytes(20))
    assert answer["authenticateErrorCode"] == 7  # ciPKUnknown


async def test_authenticate_refuses_a_stale_challenge(flow: Flow) -> None:
    old = await flow.challenge()
    await flow.challenge()  # a newer one replaces it
    request = flow.smdp.authenticate_server(old)
    answer = flow.smdp.take_authenticate_response(await flow.session.store_data(request))
    assert answer["authenticateErrorCode"] == 6  # euiccChallengeMismatch
    # and a challenge is good for one AuthenticateServer only
    fresh = await flow.challenge()
    assert (
        flow.smdp.take_authenticate_response(
            await flow.session.store_data(flow.smdp.authenticate_server(fresh))
        )["kind"]
        == "authenticateResponseOk"
    )
    again = flow.smdp.take_authenticate_response(
        await flow.session.store_data(flow.smdp.authenticate_server(fresh))
    )
    assert again["authenticateErrorCode"] == 6


# --- PrepareDownload refusals ---------------------------------------------------------------


async def test_prepare_refuses_without_a_session(flow: Flow) -> None:
    flow.smdp.euicc_signature1 = bytes(64)
    answer = await flow.prepare()
    assert (answer["kind"], answer["downloadErrorCode"]) == ("downloadResponseError", 4)  # noSessionContext


async def test_prepare_refuses_an_unknown_transaction(flow: Flow) -> None:
    await flow.authenticate()
    answer = await flow.prepare(transaction_id=bytes(16))
    assert answer["downloadErrorCode"] == 5  # invalidTransactionId
    assert flow.card.download.session is not None  # the right transaction may still come


async def test_prepare_refuses_a_forged_smdp_signature(flow: Flow) -> None:
    await flow.authenticate()
    assert (await flow.prepare(tamper_signature=True))["downloadErrorCode"] == 2


async def test_prepare_refuses_a_dppb_of_another_ci(flow: Flow) -> None:
    other = Pki.generate()
    await flow.authenticate()
    assert (await flow.prepare(cert=other.dppb, key=other.dppb_key))["downloadErrorCode"] == 1


# --- LoadBoundProfilePackage refusals ------------------------------------------------------

CASES = {
    "unknown transaction": ({"transaction_id": bytes(16)}, None, (0, 3)),
    "forged smdpSign": ({"tamper_signature": True}, None, (0, 2)),
    "unsupported CRT": ({"key_type": 0x80}, None, (0, 4)),
    "bad MAC in ConfigureISDP": ({}, 0xA0, (1, 8)),
    "bad MAC in StoreMetadata": ({}, 0x88, (2, 8)),
    "bad MAC in ReplaceSessionKeys": ({}, 0xA2, (4, 8)),
    "bad MAC in a profile element segment": ({}, 0x86, (5, 8)),
    "ICCID mismatch": ({"metadata_iccid": "89000123456789012349"}, None, (5, 13)),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
async def test_the_bpp_refuses_what_does_not_verify(flow: Flow, case: str) -> None:
    kwargs, tamper, (command, reason) = CASES[case]
    await flow.ready()
    before = snapshot(flow.card)
    pieces = flow.smdp.bpp(**kwargs)
    index = -1
    if tamper is not None:
        # the first piece with that tag (for 86: the second-last segment, so one follows it)
        index = len(pieces) - 2 if tamper == 0x86 else next(i for i, p in enumerate(pieces) if p[0] == tamper)
        piece = bytearray(pieces[index])
        piece[-1] ^= 0x01  # the last byte of the C-MAC (of the last 87 inside A0/A2)
        pieces[index] = bytes(piece)
    pir, sent = await flow.load(pieces)
    kind, result = final_result(pir)
    assert (kind, result["bppCommandId"], result["errorReason"]) == ("errorResult", command, reason)
    if tamper is not None:
        assert sent == index + 1  # refused at the tampered piece, not later
    assert snapshot(flow.card) == before
    assert flow.card.download.session is None
    assert len(flow.card.download.refusals) == 1
    assert [n.event for n in flow.card.notifications] == [
        es10.NotificationEvent.install
    ]  # the error PIR, pending
    # nothing of the package is accepted once the session is gone
    with pytest.raises(ApduStatusError):
        await flow.session.store_data(pieces[-1])


async def test_the_bpp_refuses_a_profile_the_card_has_no_room_for(pki: Pki) -> None:
    card = make_card(pki, memory_b=3000)  # 1000 used by the home profile
    smdp = SmdpSide(pki, upp=make_upp("89000123456789012341", elements=6, size=400))  # about 2.5 kB
    async with IsdrSession(EuiccTransport(card)) as session:
        flow = Flow(card, session, smdp)
        await flow.ready()
        pir, _ = await flow.load(smdp.bpp())
    kind, result = final_result(pir)
    assert (kind, result["bppCommandId"], result["errorReason"]) == ("errorResult", 5, 10)
    assert snapshot(card) == [(HOME, "enabled", 1000)]
    assert "2000 of 3000 free" in card.download.refusals[0]
    # with the room, the same package installs
    roomy = make_card(pki, memory_b=5000)
    async with IsdrSession(EuiccTransport(roomy)) as session:
        flow = Flow(roomy, session, replace(smdp, transaction_id=b"\x01" * 16))
        await flow.ready()
        pir, _ = await flow.load(flow.smdp.bpp())
    assert final_result(pir)[0] == "successResult"
    assert roomy.used_memory_b() == 1000 + len(smdp.upp)


async def test_the_bpp_refuses_an_iccid_the_card_has(pki: Pki) -> None:
    card = make_card(pki)
    async with IsdrSession(EuiccTransport(card)) as session:
        flow = Flow(card, session, SmdpSide(pki, iccid=HOME))
        await flow.ready()
        pir, sent = await flow.load(flow.smdp.bpp())
    assert final_result(pir)[1] == {"bppCommandId": 2, "errorReason": 9}
    assert sent < 10 and [p.iccid for p in card.profiles] == [HOME]


# --- CancelSession ----------------------------------------------------------------------------


async def test_cancel_session(flow: Flow) -> None:
    await flow.ready()
    wrong = REF.encode("CancelSessionRequest", {"transactionId": bytes(16), "reason": 1})
    kind, value = REF.decode("CancelSessionResponse", await flow.session.store_data(wrong))
    assert (kind, value) == ("cancelSessionResponseError", 5)
    assert flow.card.download.session is not None
    request = REF.encode("CancelSessionRequest", {"transactionId": flow.smdp.transaction_id, "reason": 1})
    answer = await flow.session.store_data(request)
    kind, ok = REF.decode("CancelSessionResponse", answer)
    assert REF.encode("CancelSessionResponse", (kind, ok)) == answer
    assert kind == "cancelSessionResponseOk"
    assert ok["euiccCancelSessionSigned"]["reason"] == 1
    assert ok["euiccCancelSessionSigned"]["transactionId"] == flow.smdp.transaction_id
    signed = der.decode_one(answer).children()[0].children()[0].encode()
    cert = x509.load_der_x509_certificate(flow.card.credentials.euicc_certificate)
    assert verify_raw_signature(cert, ok["euiccCancelSessionSignature"], signed)
    assert flow.card.download.session is None
    # the cancelled session cannot go on
    with pytest.raises(ApduStatusError):
        await flow.load(flow.smdp.bpp())
    assert snapshot(flow.card) == [(HOME, "enabled", 1000)]


# --- interruptions --------------------------------------------------------------------------


@pytest.mark.parametrize("stop_after", [1, 2, 4, -3], ids=["isc", "configure", "metadata", "elements"])
async def test_an_interrupted_bpp_leaves_the_card_as_it_was_and_a_new_download_works(
    pki: Pki, stop_after: int
) -> None:
    card = make_card(pki)
    transport = EuiccTransport(card)
    smdp = SmdpSide(pki)
    async with IsdrSession(transport) as session:
        flow = Flow(card, session, smdp)
        await flow.ready()
        pieces = smdp.bpp()
        for piece in pieces[:stop_after]:
            assert await session.store_data(piece) == b""
    card.power_cycle()  # the link (and the modem's power) went away in the middle
    assert snapshot(card) == [(HOME, "enabled", 1000)]
    assert card.download.session is None
    assert card.download.refusals[-1].split(": ")[:2] == [
        "LoadBoundProfilePackage",
        "installFailedDueToInterruption",
    ]
    kind, result = final_result(card.install_results[card.notifications[-1].seq])
    assert (kind, result["errorReason"]) == ("errorResult", 11)
    async with IsdrSession(transport) as session:
        with pytest.raises(ApduStatusError):  # the rest of the old package is not accepted
            await session.store_data(pieces[stop_after])
        flow = Flow(card, session, SmdpSide(pki))
        await flow.ready()
        pir, _ = await flow.load(flow.smdp.bpp())
    assert final_result(pir)[0] == "successResult"
    assert [p.iccid for p in card.profiles] == [HOME, flow.smdp.iccid]


async def test_a_new_authenticate_server_ends_a_session_before_its_bpp(flow: Flow) -> None:
    await flow.ready()
    first = flow.smdp.transaction_id
    flow.smdp = SmdpSide(flow.smdp.pki)
    assert (await flow.authenticate())["kind"] == "authenticateResponseOk"
    assert flow.card.download.refusals == [
        "session: undefinedError: interrupted before the BPP: a new AuthenticateServer"
    ]
    assert flow.card.download.session is not None and flow.card.download.session.transaction_id != first


async def test_a_malformed_download_request_is_refused_with_6a80_and_counted(flow: Flow) -> None:
    request = flow.smdp.authenticate_server(await flow.challenge())
    broken = request[:4] + request[5:]  # a byte short: the DER lengths no longer add up
    with pytest.raises(ApduStatusError) as raised:
        await flow.session.store_data(broken)
    assert raised.value.sw == 0x6A80
    assert flow.card.download.refusals[0].startswith("ES10b BF38: malformed (6A80)")
