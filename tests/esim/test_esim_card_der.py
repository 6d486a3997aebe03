"""Every response of the simulated card is valid DER under the shared SGP.22 ASN.1 module.

Each ES10 function the card answers is sent over the APDU path (STORE DATA segments,
``61xx``/GET RESPONSE chaining) and its response is decoded with asn1tools compiled from
``$TCU_SHARED_DATA/esim/sgp22-v2.2.2``; the re-encoding must equal the card's bytes, and
a strict DER walk checks every length of every nested TLV (an OCTET STRING that declares 20
bytes and carries 2 fails both).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import asn1tools
import pytest

from sim.euicc import EuiccConfig, EuiccTransport, ProfileSpec, SimulatedEuicc
from tcu.esim import der, es10
from tcu.esim.session import IsdrSession

_ASN = Path(os.environ["TCU_SHARED_DATA"], "esim", "sgp22-v2.2.2")
REF = asn1tools.compile_files(
    [str(_ASN / "rsp.asn"), str(_ASN / "PKIXExplicit88.asn"), str(_ASN / "PKIXImplicit88.asn")], codec="der"
)
A = "89000123456789012341"
B = "89490200001234567893"
C = "8988211000000000001"


def make_card() -> SimulatedEuicc:
    profiles = (
        ProfileSpec(A, "Home DE", "OpDE", enabled=True, nickname="home"),
        ProfileSpec(B, "Local AT", "OpAT"),
        ProfileSpec(C, "Bootstrap", "Global", es10.ProfileClass.provisioning),
    )
    return SimulatedEuicc(EuiccConfig(profiles=profiles, always_chain=True))


def strict_walk(data: bytes, path: str = "") -> int:
    """Decode every TLV strictly, descending into constructed ones; return how many were seen."""
    count = 0
    for tlv in der.decode_seq(data, context=path or "response"):
        count += 1
        if der.is_constructed(tlv.tag):
            count += strict_walk(tlv.value, f"{path}/{tlv.tag:X}")
    return count


# (name, request, ASN.1 type of the response); the state carries over from one to the next.
CALLS: list[tuple[str, bytes, str]] = [
    ("GetEID", es10.GetEidRequest().encode(), "GetEuiccDataResponse"),
    ("GetEuiccInfo2", es10.GetEuiccInfo2Request().encode(), "EUICCInfo2"),
    ("GetEuiccInfo1", es10.GetEuiccInfo1Request().encode(), "EUICCInfo1"),
    ("GetEuiccChallenge", es10.GetEuiccChallengeRequest().encode(), "GetEuiccChallengeResponse"),
    (
        "EuiccConfiguredAddresses",
        es10.EuiccConfiguredAddressesRequest().encode(),
        "EuiccConfiguredAddressesResponse",
    ),
    (
        "SetDefaultDpAddress",
        es10.SetDefaultDpAddressRequest("smdp.example.org").encode(),
        "SetDefaultDpAddressResponse",
    ),
    (
        "EuiccConfiguredAddresses after set",
        es10.EuiccConfiguredAddressesRequest().encode(),
        "EuiccConfiguredAddressesResponse",
    ),
    ("GetRAT", es10.GetRatRequest().encode(), "GetRatResponse"),
    ("GetProfilesInfo", es10.GetProfilesInfoRequest().encode(), "ProfileInfoListResponse"),
    (
        "GetProfilesInfo by ICCID",
        es10.GetProfilesInfoRequest(search=es10.ProfileRef(iccid=B)).encode(),
        "ProfileInfoListResponse",
    ),
    (
        "EnableProfile",
        es10.EnableProfileRequest(es10.ProfileRef(iccid=B), refresh=False).encode(),
        "EnableProfileResponse",
    ),
    (
        "EnableProfile again",
        es10.EnableProfileRequest(es10.ProfileRef(iccid=B), refresh=False).encode(),
        "EnableProfileResponse",
    ),
    (
        "DisableProfile",
        es10.DisableProfileRequest(es10.ProfileRef(iccid=B), refresh=False).encode(),
        "DisableProfileResponse",
    ),
    ("SetNickname", es10.SetNicknameRequest(B, "Österreich").encode(), "SetNicknameResponse"),
    ("DeleteProfile", es10.DeleteProfileRequest(es10.ProfileRef(iccid=B)).encode(), "DeleteProfileResponse"),
    ("ListNotification", es10.ListNotificationRequest().encode(), "ListNotificationResponse"),
    (
        "RetrieveNotificationsList",
        es10.RetrieveNotificationsListRequest().encode(),
        "RetrieveNotificationsListResponse",
    ),
    (
        "RetrieveNotificationsList seq 2",
        es10.RetrieveNotificationsListRequest(seq=2).encode(),
        "RetrieveNotificationsListResponse",
    ),
    (
        "RetrieveNotificationsList deletes",
        es10.RetrieveNotificationsListRequest(events=frozenset({es10.NotificationEvent.delete})).encode(),
        "RetrieveNotificationsListResponse",
    ),
    (
        "RetrieveNotificationsList seq 99",
        es10.RetrieveNotificationsListRequest(seq=99).encode(),
        "RetrieveNotificationsListResponse",
    ),
    ("NotificationSent", es10.NotificationSentRequest(1).encode(), "NotificationSentResponse"),
    ("NotificationSent again", es10.NotificationSentRequest(1).encode(), "NotificationSentResponse"),
    (
        "eUICCMemoryReset",
        es10.EuiccMemoryResetRequest(True, False, False).encode(),
        "EuiccMemoryResetResponse",
    ),
]


async def test_every_card_response_is_valid_der_under_sgp22() -> None:
    card = make_card()
    checked: dict[str, Any] = {}
    async with IsdrSession(EuiccTransport(card), segment_size=6) as session:
        for name, request, asn1_type in CALLS:
            response = await session.store_data(request, step=name)
            assert strict_walk(response) >= 2, name
            try:
                value = REF.decode(asn1_type, response)
            except asn1tools.Error as exc:
                pytest.fail(f"{name}: asn1tools refuses the card's {asn1_type}: {exc}")
            assert REF.encode(asn1_type, value) == response, f"{name}: DER re-encoding differs"
            checked[name] = value
    info2 = checked["GetEuiccInfo2"]
    for key in ("euiccCiPKIdListForVerification", "euiccCiPKIdListForSigning"):
        assert info2[key], key
        assert all(len(pkid) == 20 for pkid in info2[key]), key  # SubjectKeyIdentifier: SHA-1
    assert checked["EnableProfile"] == {"enableResult": 0}
    assert checked["EnableProfile again"] == {"enableResult": 2}
    assert checked["NotificationSent again"] == {"deleteNotificationStatus": 1}
    assert checked["GetEuiccInfo1"]["euiccCiPKIdListForSigning"] == info2["euiccCiPKIdListForSigning"]
    assert checked["EuiccConfiguredAddresses"] == {"rootDsAddress": "testrootsmds.example.com"}
    assert checked["EuiccConfiguredAddresses after set"]["defaultDpAddress"] == "smdp.example.org"
    assert checked["GetRAT"]["rat"], "the RAT has a rule"
    pending = checked["RetrieveNotificationsList"][1]
    # enable B (disable A, enable B), disable B, delete B
    assert [p[1]["tbsOtherNotification"]["seqNumber"] for p in pending] == [1, 2, 3, 4]
    (only,) = checked["RetrieveNotificationsList seq 2"][1]
    assert only[1]["tbsOtherNotification"]["seqNumber"] == 2
    assert len(checked["RetrieveNotificationsList deletes"][1]) == 1
    assert checked["RetrieveNotificationsList seq 99"] == ("notificationsListResultError", 1)


def test_strict_walk_catches_a_short_octet_string() -> None:
    """The check itself can fail: the old EUICCInfo2 item ``A9 04 04148137``."""
    with pytest.raises(der.DerError, match="announces 20 bytes but only 2 remain"):
        strict_walk(bytes.fromhex("BF2206A904041481 37".replace(" ", "")))


