"""ES10 codec: golden vectors, byte equality with asn1tools (reference only), strict errors."""

from __future__ import annotations

import contextlib
import enum
import json
from typing import Any

import asn1tools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.euicc import CardCredentials
from tcu.errors import EsimError
from tcu.esim import der, es10
from tools.shared_data import shared_path

DATA = shared_path("esim")
VECTORS = json.loads(shared_path("esim/vectors/es10-vectors.json").read_text())
_ASN = shared_path("esim/sgp22-v2.2.2")
REF = asn1tools.compile_files(
    [str(_ASN / "rsp.asn"), str(_ASN / "PKIXExplicit88.asn"), str(_ASN / "PKIXImplicit88.asn")], codec="der"
)

OURS: dict[str, Any] = {
    "GetEuiccInfo2Request": es10.GetEuiccInfo2Request,
    "GetEuiccDataRequest": es10.GetEidRequest,
    "ProfileInfoListRequest": es10.GetProfilesInfoRequest,
    "EnableProfileRequest": es10.EnableProfileRequest,
    "DisableProfileRequest": es10.DisableProfileRequest,
    "DeleteProfileRequest": es10.DeleteProfileRequest,
    "SetNicknameRequest": es10.SetNicknameRequest,
    "EuiccMemoryResetRequest": es10.EuiccMemoryResetRequest,
    "ListNotificationRequest": es10.ListNotificationRequest,
    "NotificationSentRequest": es10.NotificationSentRequest,
    "GetEuiccInfo1Request": es10.GetEuiccInfo1Request,
    "GetEuiccChallengeRequest": es10.GetEuiccChallengeRequest,
    "EuiccConfiguredAddressesRequest": es10.EuiccConfiguredAddressesRequest,
    "GetRatRequest": es10.GetRatRequest,
    "RetrieveNotificationsListRequest": es10.RetrieveNotificationsListRequest,
    "SetDefaultDpAddressRequest": es10.SetDefaultDpAddressRequest,
    "EnableProfileResponse": es10.EnableProfileResponse,
    "DisableProfileResponse": es10.DisableProfileResponse,
    "DeleteProfileResponse": es10.DeleteProfileResponse,
    "ProfileInfoListResponse": es10.GetProfilesInfoResponse,
    "NotificationSentResponse": es10.NotificationSentResponse,
    "SetNicknameResponse": es10.SetNicknameResponse,
    "EuiccMemoryResetResponse": es10.EuiccMemoryResetResponse,
    "ListNotificationResponse": es10.ListNotificationResponse,
    "GetEuiccDataResponse": es10.GetEidResponse,
    "EUICCInfo1": es10.EuiccInfo1,
    "GetEuiccChallengeResponse": es10.GetEuiccChallengeResponse,
    "EuiccConfiguredAddressesResponse": es10.EuiccConfiguredAddressesResponse,
    "SetDefaultDpAddressResponse": es10.SetDefaultDpAddressResponse,
    "GetRatResponse": es10.GetRatResponse,
    "RetrieveNotificationsListResponse": es10.RetrieveNotificationsListResponse,
}
CREDS = CardCredentials.generate()


def _bits(bits: frozenset[int]) -> tuple[bytes, int]:
    if not bits:
        return (b"", 0)
    nbits = max(bits) + 1
    value = 0
    nbytes = (nbits + 7) // 8
    for b in bits:
        value |= 1 << (nbytes * 8 - 1 - b)
    return (value.to_bytes(nbytes, "big"), nbits)


def _ref(ref: es10.ProfileRef) -> tuple[str, bytes]:
    if ref.iccid is not None:
        return ("iccid", es10.iccid_to_bcd(ref.iccid))
    assert ref.aid is not None
    return ("isdpAid", ref.aid)


def to_asn1(obj: Any) -> Any:  # noqa: PLR0911 - one return per message type
    """Our typed value → the value asn1tools expects for the same ASN.1 type."""
    if isinstance(obj, es10.GetEidRequest):
        return {"tagList": b"\x5a"}
    if isinstance(obj, es10.GetEidResponse):
        return {"eidValue": obj.eid}
    if isinstance(
        obj,
        es10.GetEuiccInfo2Request
        | es10.GetEuiccInfo1Request
        | es10.GetEuiccChallengeRequest
        | es10.EuiccConfiguredAddressesRequest
        | es10.GetRatRequest,
    ):
        return {}
    if isinstance(obj, es10.RetrieveNotificationsListRequest):
        if obj.seq is not None:
            return {"searchCriteria": ("seqNumber", obj.seq)}
        if obj.events is not None:
            return {"searchCriteria": ("profileManagementOperation", _bits(frozenset(obj.events)))}
        return {}
    if isinstance(obj, es10.SetDefaultDpAddressRequest):
        return {"defaultDpAddress": obj.address}
    if isinstance(obj, es10.GetProfilesInfoRequest):
        out: dict[str, Any] = {}
        if obj.search is not None:
            out["searchCriteria"] = _ref(obj.search)
        if obj.profile_class is not None:
            out["searchCriteria"] = ("profileClass", int(obj.profile_class))
        if obj.tag_list is not None:
            out["tagList"] = obj.tag_list
        return out
    if isinstance(obj, es10.EnableProfileRequest | es10.DisableProfileRequest):
        return {"profileIdentifier": _ref(obj.ref), "refreshFlag": obj.refresh}
    if isinstance(obj, es10.DeleteProfileRequest):
        return _ref(obj.ref)
    if isinstance(obj, es10.SetNicknameRequest):
        return {"iccid": es10.iccid_to_bcd(obj.iccid), "profileNickname": obj.nickname}
    if isinstance(obj, es10.EuiccMemoryResetRequest):
        flags = (obj.delete_operational, obj.delete_field_loaded_test, obj.reset_default_smdp)
        return {"resetOptions": _bits(frozenset(i for i, f in enumerate(flags) if f))}
    if isinstance(obj, es10.ListNotificationRequest):
        return {} if obj.events is None else {"profileManagementOperation": _bits(frozenset(obj.events))}
    if isinstance(obj, es10.NotificationSentRequest):
        return {"seqNumber": obj.seq}
    if isinstance(obj, es10.GetProfilesInfoResponse):
        if obj.error is not None:
            return ("profileInfoListError", int(obj.error))
        return ("profileInfoListOk", [_profile(p) for p in obj.profiles])
    if isinstance(obj, es10.ListNotificationResponse):
        if obj.error is not None:
            return ("listNotificationsResultError", int(obj.error))
        return ("notificationMetadataList", [_meta(n) for n in obj.notifications])
    if isinstance(obj, es10.EnableProfileResponse):
        return {"enableResult": int(obj.result)}
    if isinstance(obj, es10.DisableProfileResponse):
        return {"disableResult": int(obj.result)}
    if isinstance(obj, es10.DeleteProfileResponse):
        return {"deleteResult": int(obj.result)}
    if isinstance(obj, es10.SetNicknameResponse):
        return {"setNicknameResult": int(obj.result)}
    if isinstance(obj, es10.EuiccMemoryResetResponse):
        return {"resetResult": int(obj.result)}
    if isinstance(obj, es10.NotificationSentResponse):
        return {"deleteNotificationStatus": int(obj.result)}
    if isinstance(obj, es10.EuiccInfo1):
        return {
            "svn": obj.svn,
            "euiccCiPKIdListForVerification": list(obj.ci_pkids_verification),
            "euiccCiPKIdListForSigning": list(obj.ci_pkids_signing),
        }
    if isinstance(obj, es10.GetEuiccChallengeResponse):
        return {"euiccChallenge": obj.challenge}
    if isinstance(obj, es10.EuiccConfiguredAddressesResponse):
        out = {"rootDsAddress": obj.root_ds_address}
        if obj.default_dp_address is not None:
            out["defaultDpAddress"] = obj.default_dp_address
        return out
    if isinstance(obj, es10.SetDefaultDpAddressResponse):
        return {"setDefaultDpAddressResult": int(obj.result)}
    if isinstance(obj, es10.GetRatResponse):
        return {
            "rat": [
                {
                    "pprIds": _bits(r.ppr_ids),
                    "allowedOperators": [{"mccMnc": op} for op in r.mcc_mnc],
                    "pprFlags": _bits(frozenset({0}) if r.consent_required else frozenset()),
                }
                for r in obj.rules
            ]
        }
    if isinstance(obj, es10.RetrieveNotificationsListResponse):
        if obj.error is not None:
            return ("notificationsListResultError", int(obj.error))
        pending = []
        for raw in obj.notifications:
            meta, sig, euicc, eum = der.decode_one(raw).children()
            pending.append(
                (
                    "otherSignedNotification",
                    {
                        "tbsOtherNotification": _meta(es10.NotificationMetadata.from_tlv(meta, "test")),
                        "euiccNotificationSignature": sig.value,
                        "euiccCertificate": REF.decode("Certificate", euicc.encode()),
                        "eumCertificate": REF.decode("Certificate", eum.encode()),
                    },
                )
            )
        return ("notificationList", pending)
    raise AssertionError(f"no mapping for {obj!r}")


def _profile(p: es10.ProfileInfo) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if p.iccid is not None:
        out["iccid"] = es10.iccid_to_bcd(p.iccid)
    if p.aid is not None:
        out["isdpAid"] = p.aid
    if p.state is not None:
        out["profileState"] = int(p.state)
    for key, value in (
        ("profileNickname", p.nickname),
        ("serviceProviderName", p.service_provider),
        ("profileName", p.profile_name),
    ):
        if value is not None:
            out[key] = value
    if p.profile_class is not None:
        out["profileClass"] = int(p.profile_class)
    return out


def _meta(n: es10.NotificationMetadata) -> dict[str, Any]:
    out: dict[str, Any] = {
        "seqNumber": n.seq,
        "profileManagementOperation": _bits(frozenset({int(n.event)})),
        "notificationAddress": n.address,
    }
    if n.iccid is not None:
        out["iccid"] = es10.iccid_to_bcd(n.iccid)
    return out


def _norm(value: Any) -> Any:
    """asn1tools decodes BIT STRINGs with the nbits it saw; compare as sets of bits."""
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_norm(v) for v in value]
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], bytes):
        data, nbits = value
        return ("bits", frozenset(i for i in range(nbits) if data[i // 8] & (0x80 >> (i % 8))))
    if isinstance(value, tuple):
        return tuple(_norm(v) for v in value)
    if isinstance(value, enum.IntEnum):
        return int(value)
    return value


SUPPORTED = [v for v in VECTORS["vectors"] if v["asn1_type"] in OURS]
UNSUPPORTED = [v for v in VECTORS["vectors"] if v["asn1_type"] not in OURS]


def test_every_shared_vector_has_a_codec() -> None:
    assert len(SUPPORTED) == len(VECTORS["vectors"]) == 29
    assert UNSUPPORTED == []


@pytest.mark.parametrize("vector", SUPPORTED, ids=lambda v: v["name"])
def test_vector_round_trip(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["der"])
    ours = OURS[vector["asn1_type"]].decode(data)
    assert ours.encode() == data
    assert _norm(to_asn1(ours)) == _norm(REF.decode(vector["asn1_type"], data))
    if vector["store_data_apdu_ch1"]:
        assert bytes.fromhex(vector["store_data_apdu_ch1"])[5:] == data


def test_vector_fields() -> None:
    by_name = {v["name"]: bytes.fromhex(v["der"]) for v in VECTORS["vectors"]}
    enable = es10.EnableProfileRequest.decode(by_name["EnableProfile(iccid, refresh=true)"])
    assert enable.ref.iccid == VECTORS["iccid_digits"] and enable.refresh is True
    enable_aid = es10.EnableProfileRequest.decode(by_name["EnableProfile(aid, refresh=false)"])
    assert enable_aid.ref.aid == bytes.fromhex(VECTORS["isdp_aid"]) and enable_aid.refresh is False
    assert es10.SetNicknameRequest.decode(by_name["SetNickname"]).nickname == "roam-DE"
    listing = es10.GetProfilesInfoResponse.decode(by_name["ProfileInfoListResponse(1 enabled operational)"])
    (profile,) = listing.profiles
    assert profile.iccid == VECTORS["iccid_digits"]
    assert profile.state is es10.ProfileState.enabled
    assert profile.profile_class is es10.ProfileClass.operational
    assert (profile.service_provider, profile.profile_name) == ("Op", "Op DE")
    result = es10.EnableProfileResponse.decode(by_name["EnableProfileResponse(5)"])
    assert result.result is es10.EnableResult.catBusy
    assert es10.EuiccMemoryResetRequest.decode(by_name["eUICCMemoryReset(all 3 options)"]) == (
        es10.EuiccMemoryResetRequest(True, True, True)
    )


def test_unknown_request_tag_is_named() -> None:
    with pytest.raises(es10.Es10Error, match="unknown tag BF55"):
        es10.decode_request(bytes.fromhex("BF5500"))


def test_retrieve_notifications_vector_fields() -> None:
    by_name = {v["name"]: bytes.fromhex(v["der"]) for v in VECTORS["vectors"]}
    request = es10.RetrieveNotificationsListRequest.decode(by_name["RetrieveNotificationsList(seq 5)"])
    assert (request.seq, request.events) == (5, None)
    address = es10.SetDefaultDpAddressRequest.decode(by_name["SetDefaultDpAddress"])
    assert address.address == "smdp.example.com"


def test_lpac_samples() -> None:
    samples = VECTORS["lpac_stdio_samples"]
    eid = es10.GetEidResponse.decode(bytes.fromhex(samples["GetEuiccDataResponse(EID)"])[:-2])
    assert eid.eid_hex == "89049032001001234500012345678901"
    raw = bytes.fromhex(samples["EUICCInfo2"])[:-2]
    info = es10.EuiccInfo2.decode(raw)
    assert info.encode() == raw
    ref = REF.decode("EUICCInfo2", raw)
    assert info.svn == "2.2.0" == ".".join(str(b) for b in ref["svn"])
    assert info.firmware_version == ".".join(str(b) for b in ref["euiccFirmwareVer"])
    assert info.sas_accreditation_number == ref["sasAcreditationNumber"] == "GI-BA-UP-0419"


def test_iccid_bcd() -> None:
    assert es10.iccid_to_bcd("89000123456789012341").hex().upper() == VECTORS["iccid_bcd"]
    assert es10.iccid_from_bcd(bytes.fromhex(VECTORS["iccid_bcd"])) == "89000123456789012341"
    assert es10.iccid_from_bcd(es10.iccid_to_bcd("8988211000000000001")) == "8988211000000000001"
    with pytest.raises(es10.Es10Error, match="ICCID"):
        es10.iccid_to_bcd("89x")


# --- property tests against the reference -------------------------------------------------

iccids = st.text(alphabet="0123456789", min_size=19, max_size=20)
aids = st.binary(min_size=5, max_size=16)
refs = st.one_of(iccids.map(lambda i: es10.ProfileRef(iccid=i)), aids.map(lambda a: es10.ProfileRef(aid=a)))
texts = st.text(max_size=32).filter(lambda s: len(s) <= 32)
events = st.sampled_from(list(es10.NotificationEvent))


def _enum_of(kind: type[enum.IntEnum]) -> st.SearchStrategy[Any]:
    return st.sampled_from(list(kind))


profiles = st.builds(
    es10.ProfileInfo,
    iccid=st.none() | iccids,
    aid=st.none() | aids,
    state=st.none() | _enum_of(es10.ProfileState),
    nickname=st.none() | texts,
    service_provider=st.none() | texts,
    profile_name=st.none() | texts,
    profile_class=st.none() | _enum_of(es10.ProfileClass),
)
metas = st.builds(
    es10.NotificationMetadata,
    seq=st.integers(min_value=0, max_value=2**31),
    event=events,
    address=st.text(max_size=40),
    iccid=st.none() | iccids,
)

messages = st.one_of(
    st.just(es10.GetEidRequest()),
    st.builds(es10.GetEidResponse, eid=st.binary(min_size=16, max_size=16)),
    st.just(es10.GetEuiccInfo2Request()),
    st.builds(
        es10.GetProfilesInfoRequest, search=st.none() | refs, tag_list=st.none() | st.binary(max_size=8)
    ),
    st.builds(es10.GetProfilesInfoRequest, profile_class=_enum_of(es10.ProfileClass)),
    st.builds(es10.EnableProfileRequest, ref=refs, refresh=st.booleans()),
    st.builds(es10.DisableProfileRequest, ref=refs, refresh=st.booleans()),
    st.builds(es10.DeleteProfileRequest, ref=refs),
    st.builds(es10.SetNicknameRequest, iccid=iccids, nickname=texts),
    st.builds(es10.EuiccMemoryResetRequest, st.booleans(), st.booleans(), st.booleans()),
    st.builds(es10.ListNotificationRequest, events=st.none() | st.frozensets(events)),
    st.builds(es10.NotificationSentRequest, seq=st.integers(min_value=0, max_value=2**40)),
    st.just(es10.GetEuiccInfo1Request()),
    st.just(es10.GetEuiccChallengeRequest()),
    st.just(es10.EuiccConfiguredAddressesRequest()),
    st.just(es10.GetRatRequest()),
    st.builds(es10.RetrieveNotificationsListRequest, seq=st.integers(min_value=0, max_value=2**31)),
    st.builds(es10.RetrieveNotificationsListRequest, events=st.frozensets(events, min_size=1)),
    st.just(es10.RetrieveNotificationsListRequest()),
    st.builds(es10.SetDefaultDpAddressRequest, address=st.text(max_size=64)),
    st.builds(es10.GetProfilesInfoResponse, profiles=st.lists(profiles, max_size=4).map(tuple)),
    st.builds(es10.GetProfilesInfoResponse, error=_enum_of(es10.ProfileInfoListError)),
    st.builds(es10.ListNotificationResponse, notifications=st.lists(metas, max_size=4).map(tuple)),
    st.builds(es10.EnableProfileResponse, result=_enum_of(es10.EnableResult)),
    st.builds(es10.DisableProfileResponse, result=_enum_of(es10.DisableResult)),
    st.builds(es10.DeleteProfileResponse, result=_enum_of(es10.DeleteResult)),
    st.builds(es10.SetNicknameResponse, result=_enum_of(es10.SetNicknameResult)),
    st.builds(es10.EuiccMemoryResetResponse, result=_enum_of(es10.MemoryResetResult)),
    st.builds(es10.NotificationSentResponse, result=_enum_of(es10.NotificationSentResult)),
    st.builds(
        es10.EuiccInfo1,
        svn=st.binary(min_size=3, max_size=3),
        ci_pkids_verification=st.lists(st.binary(min_size=20, max_size=20), max_size=3).map(tuple),
        ci_pkids_signing=st.lists(st.binary(min_size=20, max_size=20), max_size=3).map(tuple),
    ),
    st.builds(es10.GetEuiccChallengeResponse, challenge=st.binary(min_size=16, max_size=16)),
    st.builds(
        es10.EuiccConfiguredAddressesResponse, root_ds_address=texts, default_dp_address=st.none() | texts
    ),
    st.builds(es10.SetDefaultDpAddressResponse, result=_enum_of(es10.SetDefaultDpAddressResult)),
    st.builds(
        es10.GetRatResponse,
        rules=st.lists(
            st.builds(
                es10.PprRule,
                ppr_ids=st.frozensets(st.integers(0, 2)),
                mcc_mnc=st.lists(st.binary(min_size=3, max_size=3), max_size=3).map(tuple),
                consent_required=st.booleans(),
            ),
            max_size=3,
        ).map(tuple),
    ),
    st.builds(es10.RetrieveNotificationsListResponse, error=_enum_of(es10.RetrieveNotificationsError)),
    st.builds(
        es10.RetrieveNotificationsListResponse,
        notifications=st.lists(
            st.builds(
                es10.other_signed_notification,
                metas,
                st.binary(min_size=64, max_size=64),
                st.just(CREDS.euicc_certificate),
                st.just(CREDS.eum_certificate),
            ),
            max_size=3,
        ).map(tuple),
    ),
)

ASN1_NAME = {cls: name for name, cls in OURS.items()}


@settings(max_examples=400, deadline=None)
@given(messages)
def test_same_bytes_as_asn1tools(message: Any) -> None:
    name = ASN1_NAME[type(message)]
    ours = message.encode()
    assert ours == REF.encode(name, to_asn1(message))
    assert _norm(REF.decode(name, ours)) == _norm(to_asn1(message))
    assert type(message).decode(ours) == message


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=64))
def test_fuzz_any_bytes_value_or_esim_error(data: bytes) -> None:
    for cls in OURS.values():
        with contextlib.suppress(EsimError):
            cls.decode(data)
    with contextlib.suppress(EsimError):
        es10.decode_request(data)


@settings(max_examples=500, deadline=None)
@given(messages, st.data())
def test_fuzz_mutated_valid_messages(message: Any, data: st.DataObject) -> None:
    raw = bytearray(message.encode())
    index = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    raw[index] = data.draw(st.integers(min_value=0, max_value=255))
    cut = data.draw(st.integers(min_value=0, max_value=len(raw)))
    for candidate in (bytes(raw), bytes(raw[:cut])):
        with contextlib.suppress(EsimError):
            type(message).decode(candidate)


@pytest.mark.parametrize(
    ("hexdata", "problem"),
    [
        ("BF3E80", "indefinite length"),
        ("BF3E035C01", "announces 3 bytes"),
        ("BF3E035C015A00", "trailing garbage"),
        ("BF3E81035C015A", "non-minimal length"),
        ("BF", "truncated"),
        ("BF3F035C015A", "unknown tag BF3F"),
        ("BF3E035D015A", "expected tags"),
        ("BF3103800108", "unknown EnableResult value 8"),
        ("BF310480020005", "non-minimal INTEGER"),
        ("BF310B", "announces 11 bytes"),
    ],
)
def test_malformed_inputs_are_named(hexdata: str, problem: str) -> None:
    cls = es10.EnableProfileResponse if hexdata.startswith("BF31") else es10.GetEidRequest
    with pytest.raises(es10.Es10Error, match=problem) as info:
        cls.decode(bytes.fromhex(hexdata))
    assert info.value.step.startswith(("GetEID", "EnableProfile"))


def test_long_form_length() -> None:
    value = bytes(300)
    encoded = der.encode_tlv(0x04, value)
    assert encoded[:4] == bytes.fromhex("0482012C")
    assert der.decode_one(encoded) == der.Tlv(0x04, value)
    with pytest.raises(der.DerError, match="non-minimal length"):
        der.decode_one(bytes.fromhex("04820005") + bytes(5))
    with pytest.raises(der.DerError, match="non-minimal length"):
        der.decode_one(bytes.fromhex("0481050000000000"))
