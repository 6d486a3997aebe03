"""The ES10 functions a standard LPA calls besides profile management, with their semantics.

GetEuiccInfo1, GetEuiccChallenge, EuiccConfiguredAddresses, SetDefaultDpAddress, GetRAT and
RetrieveNotificationsList over the APDU path, decoded with the project's codec; notifications
carry a real ECDSA signature by the eUICC key, whose certificate chains to the CI that
EUICCInfo1/2 name by SubjectKeyIdentifier.
"""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from sim.euicc import EuiccConfig, EuiccTransport, ProfileSpec, SimulatedEuicc
from tcu.esim import der, es10
from tcu.esim.session import IsdrSession

A = "89000123456789012341"
B = "89490200001234567893"


def make_card() -> SimulatedEuicc:
    profiles = (ProfileSpec(A, "Home DE", "OpDE", enabled=True), ProfileSpec(B, "Local AT", "OpAT"))
    return SimulatedEuicc(EuiccConfig(profiles=profiles))


def _verify(cert: x509.Certificate, signature: bytes, data: bytes) -> None:
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    public.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))


async def test_info1_challenge_addresses_rat() -> None:
    card = make_card()
    async with IsdrSession(EuiccTransport(card)) as session:
        info1 = es10.EuiccInfo1.decode(await session.store_data(es10.GetEuiccInfo1Request().encode()))
        assert info1.svn == bytes([2, 2, 2])
        assert info1.ci_pkids_verification == info1.ci_pkids_signing == (card.credentials.ci_pkid,)
        ci = x509.load_der_x509_certificate(card.credentials.ci_certificate)
        ski = ci.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        assert ski.digest == card.credentials.ci_pkid and len(ski.digest) == 20

        challenges = [
            es10.GetEuiccChallengeResponse.decode(
                await session.store_data(es10.GetEuiccChallengeRequest().encode())
            ).challenge
            for _ in range(2)
        ]
        assert len(challenges[0]) == 16 and challenges[0] != challenges[1]
        assert card.euicc_challenge == challenges[1]

        async def addresses() -> es10.EuiccConfiguredAddressesResponse:
            raw = await session.store_data(es10.EuiccConfiguredAddressesRequest().encode())
            return es10.EuiccConfiguredAddressesResponse.decode(raw)

        assert await addresses() == es10.EuiccConfiguredAddressesResponse("testrootsmds.example.com", None)
        result = es10.SetDefaultDpAddressResponse.decode(
            await session.store_data(es10.SetDefaultDpAddressRequest("smdp.example.org").encode())
        )
        assert result.ok
        assert (await addresses()).default_dp_address == "smdp.example.org"
        reset = es10.EuiccMemoryResetRequest(False, False, True)
        assert es10.EuiccMemoryResetResponse.decode(await session.store_data(reset.encode())).ok
        assert (await addresses()).default_dp_address is None
        assert [p.iccid for p in await session.list_profiles()] == [A, B]  # only the address was reset

        rat = es10.GetRatResponse.decode(await session.store_data(es10.GetRatRequest().encode()))
        assert rat.rules == card.config.rat
        assert rat.rules[0].consent_required and rat.rules[0].ppr_ids == frozenset({1, 2})


async def test_retrieved_notifications_are_signed_by_the_euicc_under_the_ci() -> None:
    card = make_card()
    creds = card.credentials
    ci = x509.load_der_x509_certificate(creds.ci_certificate)
    eum = x509.load_der_x509_certificate(creds.eum_certificate)
    euicc = x509.load_der_x509_certificate(creds.euicc_certificate)
    euicc.verify_directly_issued_by(eum)
    eum.verify_directly_issued_by(ci)
    async with IsdrSession(EuiccTransport(card)) as session:
        await session.enable_profile(es10.ProfileRef(iccid=B), refresh=False)
        listed = await session.list_notifications()
        assert [(n.seq, n.event) for n in listed] == [
            (1, es10.NotificationEvent.disable),
            (2, es10.NotificationEvent.enable),
        ]
        raw = await session.store_data(es10.RetrieveNotificationsListRequest().encode())
        response = es10.RetrieveNotificationsListResponse.decode(raw)
        assert response.metadata() == listed
        for pending, meta in zip(response.notifications, listed, strict=True):
            items = der.decode_one(pending).children()
            assert [t.tag for t in items] == [0xBF2F, 0x5F37, 0x30, 0x30]
            assert items[0].encode() == meta.encode()
            assert items[2].encode() == creds.euicc_certificate and items[3].encode() == creds.eum_certificate
            _verify(euicc, items[1].value, items[0].encode())
            with pytest.raises(InvalidSignature):  # the check can fail: another notification's bytes
                _verify(euicc, items[1].value, meta.encode() + b"\x00")
        one = es10.RetrieveNotificationsListResponse.decode(
            await session.store_data(es10.RetrieveNotificationsListRequest(seq=2).encode())
        )
        assert one.metadata() == (listed[1],)
        none = es10.RetrieveNotificationsListResponse.decode(
            await session.store_data(es10.RetrieveNotificationsListRequest(seq=7).encode())
        )
        assert none.error is es10.RetrieveNotificationsError.noResultAvailable
        await session.notification_sent(1)
        after = es10.RetrieveNotificationsListResponse.decode(
            await session.store_data(es10.RetrieveNotificationsListRequest().encode())
        )
        assert after.metadata() == (listed[1],)


@pytest.mark.parametrize(
    ("kind", "hexdata", "problem"),
    [
        (es10.GetEuiccChallengeResponse, "BF2E0380010A", "euiccChallenge of 1 bytes"),
        (es10.EuiccInfo1, "BF2007820302" "0202A900", "expected tags"),
        (es10.RetrieveNotificationsListResponse, "BF2B04A0020400", "unknown tag 4 in notification list"),
        (es10.GetRatResponse, "BF4304A0023000", "expected tags"),
    ],
)
def test_malformed_lpa_responses_are_named(kind: type, hexdata: str, problem: str) -> None:
    with pytest.raises(es10.Es10Error, match=problem):
        kind.decode(bytes.fromhex(hexdata))
