"""ES10 (SGP.22 v2.2.2) messages as typed values, each with ``encode()`` and ``decode()``.

Local profile management: GetEID, GetEuiccInfo1/2, GetProfilesInfo, Enable/Disable/Delete
profile, SetNickname, ListNotification, RetrieveNotificationsList, NotificationSent,
eUICCMemoryReset, GetEuiccChallenge, EuiccConfiguredAddresses, SetDefaultDpAddress and
GetRAT, requests and responses. Encodings follow the
ASN.1 module (DER, AUTOMATIC TAGS); the tests compare them byte for byte with asn1tools.
Deviations seen elsewhere are not repeated: refreshFlag is the context tag ``81`` with
``FF``/``00``, the nickname tag is ``90``, undefinedError is 127.

ICCIDs travel as digit strings (``"89000123456789012341"``) and are swapped-nibble BCD on
the wire; AIDs and the EID are bytes / upper-case hex.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar, Self, TypeVar

from tcu.errors import EsimError
from tcu.esim.der import DerError, Tlv, decode_one, decode_seq, encode_int, encode_tlv, int_value

__all__ = [
    "TAG_DELETE",
    "TAG_DISABLE",
    "TAG_ENABLE",
    "TAG_GET_EID",
    "TAG_GET_EUICC_INFO2",
    "TAG_GET_PROFILES_INFO",
    "TAG_LIST_NOTIFICATION",
    "TAG_MEMORY_RESET",
    "TAG_NOTIFICATION_SENT",
    "TAG_SET_NICKNAME",
    "DeleteProfileRequest",
    "DeleteProfileResponse",
    "DeleteResult",
    "DisableProfileRequest",
    "DisableProfileResponse",
    "DisableResult",
    "EnableProfileRequest",
    "EnableProfileResponse",
    "EnableResult",
    "Es10Error",
    "EuiccConfiguredAddressesRequest",
    "EuiccConfiguredAddressesResponse",
    "EuiccInfo1",
    "EuiccInfo2",
    "EuiccMemoryResetRequest",
    "EuiccMemoryResetResponse",
    "GetEidRequest",
    "GetEidResponse",
    "GetEuiccChallengeRequest",
    "GetEuiccChallengeResponse",
    "GetEuiccInfo1Request",
    "GetEuiccInfo2Request",
    "GetProfilesInfoRequest",
    "GetProfilesInfoResponse",
    "GetRatRequest",
    "GetRatResponse",
    "ListNotificationError",
    "ListNotificationRequest",
    "ListNotificationResponse",
    "MemoryResetResult",
    "NotificationEvent",
    "NotificationMetadata",
    "NotificationSentRequest",
    "NotificationSentResponse",
    "NotificationSentResult",
    "PprRule",
    "ProfileClass",
    "ProfileInfo",
    "ProfileInfoListError",
    "ProfileRef",
    "ProfileState",
    "Request",
    "RetrieveNotificationsError",
    "RetrieveNotificationsListRequest",
    "RetrieveNotificationsListResponse",
    "SetDefaultDpAddressRequest",
    "SetDefaultDpAddressResponse",
    "SetDefaultDpAddressResult",
    "SetNicknameRequest",
    "SetNicknameResponse",
    "SetNicknameResult",
    "decode_request",
    "iccid_from_bcd",
    "iccid_to_bcd",
    "other_signed_notification",
]

TAG_GET_EUICC_INFO2 = 0xBF22
TAG_GET_EID = 0xBF3E
TAG_GET_PROFILES_INFO = 0xBF2D
TAG_ENABLE = 0xBF31
TAG_DISABLE = 0xBF32
TAG_DELETE = 0xBF33
TAG_SET_NICKNAME = 0xBF29
TAG_MEMORY_RESET = 0xBF34
TAG_LIST_NOTIFICATION = 0xBF28
TAG_NOTIFICATION_SENT = 0xBF30
TAG_GET_EUICC_INFO1 = 0xBF20
TAG_GET_EUICC_CHALLENGE = 0xBF2E
TAG_RETRIEVE_NOTIFICATIONS = 0xBF2B
TAG_CONFIGURED_ADDRESSES = 0xBF3C
TAG_SET_DEFAULT_DP = 0xBF3F
TAG_GET_RAT = 0xBF43

_T_ICCID = 0x5A
_T_AID = 0x4F
_T_EID = 0x5A
_T_TAGLIST = 0x5C
_T_NOTIFICATION_METADATA = 0xBF2F
_T_PROFILE_INFO = 0xE3


class Es10Error(EsimError):
    """An ES10 message could not be encoded or decoded; names the message and problem."""

    def __init__(self, step: str, problem: str) -> None:
        super().__init__(f"{step}: {problem}")
        self.step = step
        self.problem = problem


class EnableResult(enum.IntEnum):
    ok = 0
    iccidOrAidNotFound = 1
    profileNotInDisabledState = 2
    disallowedByPolicy = 3
    wrongProfileReenabling = 4
    catBusy = 5
    undefinedError = 127


class DisableResult(enum.IntEnum):
    ok = 0
    iccidOrAidNotFound = 1
    profileNotInEnabledState = 2
    disallowedByPolicy = 3
    catBusy = 5
    undefinedError = 127


class DeleteResult(enum.IntEnum):
    ok = 0
    iccidOrAidNotFound = 1
    profileNotInDisabledState = 2
    disallowedByPolicy = 3
    undefinedError = 127


class SetNicknameResult(enum.IntEnum):
    ok = 0
    iccidNotFound = 1
    undefinedError = 127


class MemoryResetResult(enum.IntEnum):
    ok = 0
    nothingToDelete = 1
    catBusy = 5
    undefinedError = 127


class NotificationSentResult(enum.IntEnum):
    ok = 0
    nothingToDelete = 1
    undefinedError = 127


class ProfileInfoListError(enum.IntEnum):
    incorrectInputValues = 1
    undefinedError = 127


class ListNotificationError(enum.IntEnum):
    undefinedError = 127


class ProfileState(enum.IntEnum):
    disabled = 0
    enabled = 1


class ProfileClass(enum.IntEnum):
    test = 0
    provisioning = 1
    operational = 2


class NotificationEvent(enum.IntEnum):
    """Bit numbers of the NotificationEvent BIT STRING."""

    install = 0
    enable = 1
    disable = 2
    delete = 3


_E = TypeVar("_E", bound=enum.IntEnum)


def _enum(kind: type[_E], value: int, step: str) -> _E:
    try:
        return kind(value)
    except ValueError:
        raise Es10Error(step, f"unknown {kind.__name__} value {value}") from None


# --- ICCID -------------------------------------------------------------------------------


def iccid_to_bcd(iccid: str) -> bytes:
    """Swapped-nibble BCD of an ICCID (19 or 20 digits; odd length padded with F)."""
    if not iccid.isdigit() or not 18 <= len(iccid) <= 20:
        raise Es10Error("ICCID", f"{iccid!r} is not 18-20 decimal digits")
    digits = iccid + "F" * (20 - len(iccid))
    return bytes(int(digits[i + 1] + digits[i], 16) for i in range(0, 20, 2))


def iccid_from_bcd(data: bytes) -> str:
    """Digits of a swapped-nibble BCD ICCID (trailing F padding removed)."""
    if len(data) != 10:
        raise Es10Error("ICCID", f"wrong length {len(data)}, expected 10 bytes")
    out = []
    for byte in data:
        out.append(f"{byte & 0x0F:X}")
        out.append(f"{byte >> 4:X}")
    text = "".join(out).rstrip("F")
    if not text.isdigit():
        raise Es10Error("ICCID", f"{data.hex().upper()} is not BCD digits")
    if len(text) < 18:  # what iccid_to_bcd accepts, so a decoded ICCID can be sent back
        raise Es10Error("ICCID", f"{data.hex().upper()} has {len(text)} digits, expected 18-20")
    return text


# --- BIT STRING ---------------------------------------------------------------------------


def _bits_encode(bits: frozenset[int]) -> bytes:
    """DER named-bit-list BIT STRING content (trailing zero bits removed)."""
    if not bits:
        return b"\x00"
    nbits = max(bits) + 1
    nbytes = (nbits + 7) // 8
    value = 0
    for bit in bits:
        value |= 1 << (nbytes * 8 - 1 - bit)
    return bytes([nbytes * 8 - nbits]) + value.to_bytes(nbytes, "big")


def _bits_decode(content: bytes, step: str) -> frozenset[int]:
    if not content or content[0] > 7 or (len(content) == 1 and content[0] != 0):
        raise Es10Error(step, f"malformed BIT STRING {content.hex().upper()}")
    unused = content[0]
    body = content[1:]
    if body and body[-1] & ((1 << unused) - 1):
        raise Es10Error(step, "BIT STRING has non-zero unused bits")
    bits = frozenset(i * 8 + j for i, byte in enumerate(body) for j in range(8) if byte & (0x80 >> j))
    if body and (not bits or max(bits) != len(body) * 8 - unused - 1):
        raise Es10Error(step, "BIT STRING has trailing zero bits (not DER)")
    return bits


# --- helpers ------------------------------------------------------------------------------


def _bool(content: bytes, step: str) -> bool:
    if content == b"\xff":
        return True
    if content == b"\x00":
        return False
    raise Es10Error(step, f"BOOLEAN must be FF or 00, got {content.hex().upper()}")


def _int(content: bytes, step: str) -> int:
    try:
        return int_value(content, context="INTEGER")
    except DerError as exc:
        raise Es10Error(step, str(exc)) from exc


def _utf8(content: bytes, step: str, max_len: int) -> str:
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Es10Error(step, f"invalid UTF-8: {exc}") from exc
    if len(text) > max_len:
        raise Es10Error(step, f"string of {len(text)} characters exceeds {max_len}")
    return text


def _top(der: bytes, tag: int, step: str) -> Tlv:
    try:
        tlv = decode_one(der, context="DER")
    except DerError as exc:
        raise Es10Error(step, str(exc)) from exc
    if tlv.tag != tag:
        raise Es10Error(step, f"unknown tag {tlv.tag:X}, expected {tag:X}")
    return tlv


def _children(tlv: Tlv, step: str) -> list[Tlv]:
    try:
        return decode_seq(tlv.value, context="DER")
    except DerError as exc:
        raise Es10Error(step, str(exc)) from exc


def _expect(items: list[Tlv], tags: tuple[int, ...], step: str) -> list[Tlv]:
    got = tuple(item.tag for item in items)
    if got != tags:
        want = " ".join(f"{t:X}" for t in tags) or "nothing"
        have = " ".join(f"{t:X}" for t in got) or "nothing"
        raise Es10Error(step, f"expected tags [{want}], got [{have}]")
    return items


# --- profile reference ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProfileRef:
    """A profile named by ICCID (digits) or by ISD-P AID (bytes); exactly one is set."""

    iccid: str | None = None
    aid: bytes | None = None

    def __post_init__(self) -> None:
        if (self.iccid is None) == (self.aid is None):
            raise Es10Error("ProfileRef", "exactly one of iccid and aid must be given")
        if self.iccid is not None:
            iccid_to_bcd(self.iccid)
        if self.aid is not None and not 5 <= len(self.aid) <= 16:
            raise Es10Error("ProfileRef", f"AID of {len(self.aid)} bytes, expected 5-16")

    def encode(self) -> bytes:
        if self.iccid is not None:
            return encode_tlv(_T_ICCID, iccid_to_bcd(self.iccid))
        assert self.aid is not None
        return encode_tlv(_T_AID, self.aid)

    @classmethod
    def from_tlv(cls, tlv: Tlv, step: str) -> ProfileRef:
        if tlv.tag == _T_ICCID:
            return cls(iccid=iccid_from_bcd(tlv.value))
        if tlv.tag == _T_AID:
            if not 5 <= len(tlv.value) <= 16:
                raise Es10Error(step, f"AID of {len(tlv.value)} bytes, expected 5-16")
            return cls(aid=tlv.value)
        raise Es10Error(step, f"unknown tag {tlv.tag:X}, expected 5A (iccid) or 4F (aid)")

    def __str__(self) -> str:
        return self.iccid if self.iccid is not None else f"AID {self.aid.hex().upper() if self.aid else ''}"


# --- requests -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GetEidRequest:
    TAG: ClassVar[int] = TAG_GET_EID

    def encode(self) -> bytes:
        return encode_tlv(self.TAG, encode_tlv(_T_TAGLIST, b"\x5a"))

    @classmethod
    def decode(cls, der: bytes) -> Self:
        step = "GetEID request"
        items = _expect(_children(_top(der, cls.TAG, step), step), (_T_TAGLIST,), step)
        if items[0].value != b"\x5a":
            raise Es10Error(step, f"tagList must be 5A, got {items[0].value.hex().upper()}")
        return cls()


@dataclass(frozen=True, slots=True)
class GetEidResponse:
    TAG: ClassVar[int] = TAG_GET_EID
    eid: bytes

    def encode(self) -> bytes:
        return encode_tlv(self.TAG, encode_tlv(_T_EID, self.eid))

    @classmethod
    def decode(cls, der: bytes) -> Self:
        step = "GetEID response"
        items = _expect(_children(_top(der, cls.TAG, step), step), (_T_EID,), step)
        if len(items[0].value) != 16:
            raise Es10Error(step, f"EID of {len(items[0].value)} bytes, expected 16")
        return cls(eid=items[0].value)

    @property
    def eid_hex(self) -> str:
        return self.eid.hex().upper()


@dataclass(frozen=True, slots=True)
class _EmptyRequest:
    """A request without content: ``TAG 00``."""

    TAG: ClassVar[int] = 0
    NAME: ClassVar[str] = ""

    def encode(self) -> bytes:
        return encode_tlv(self.TAG, b"")

    @classmethod
    def decode(cls, der: bytes) -> Self:
        step = f"{cls.NAME} request"
        _expect(_children(_top(der, cls.TAG, step), step), (), step)
        return cls()


@dataclass(frozen=True, slots=True)
class GetEuiccInfo2Request(_EmptyRequest):
    TAG: ClassVar[int] = TAG_GET_EUICC_INFO2
    NAME: ClassVar[str] = "GetEuiccInfo2"


def _version(value: bytes | None) -> str | None:
    if value is None or len(value) != 3:
        return None
    return f"{value[0]}.{value[1]}.{value[2]}"


@dataclass(frozen=True, slots=True)
class EuiccInfo2:
    """EUICCInfo2: the fields a TCU reports are decoded; every TLV is kept raw for re-encoding."""

    TAG: ClassVar[int] = TAG_GET_EUICC_INFO2
    items: tuple[Tlv, ...]

    def _get(self, tag: int) -> bytes | None:
        for item in self.items:
            if item.tag == tag:
                return item.value
        return None

    @property
    def profile_version(self) -> str | None:
        return _version(self._get(0x81))

    @property
    def svn(self) -> str | None:
        return _version(self._get(0x82))

    @property
    def firmware_version(self) -> str | None:
        return _version(self._get(0x83))

    @property
    def ext_card_resource(self) -> bytes | None:
        return self._get(0x84)

    @property
    def pp_version(self) -> str | None:
        return _version(self._get(0x04))

    @property
    def sas_accreditation_number(self) -> str | None:
        raw = self._get(0x0C)
        return None if raw is None else _utf8(raw, "EUICCInfo2 sasAcreditationNumber", 64)

    def encode(self) -> bytes:
        return encode_tlv(self.TAG, b"".join(item.encode() for item in self.items))

    @classmethod
    def decode(cls, der: bytes) -> Self:
        step = "GetEuiccInfo2 response"
        items = tuple(_children(_top(der, cls.TAG, step), step))
        for tag in (0x81, 0x82, 0x83):
            value = next((i.value for i in items if i.tag == tag), None)
            if value is None or len(value) != 3:
                raise Es10Error(step, f"mandatory version tag {tag:X} missing or not 3 bytes")
        return cls(items=items)


@dataclass(frozen=True, slots=True)
class GetProfilesInfoRequest:
    """ProfileInfoListRequest; ``search`` by ICCID/AID, or ``profile_class``, or neither (all)."""

    TAG: ClassVar[int] = TAG_GET_PROFILES_INFO
    search: ProfileRef | None = None
    profile_class: ProfileClass | None = None
    tag_list: bytes | None = None

    def encode(self) -> bytes:
        body = b""
        if self.search is not None and self.profile_class is not None:
            raise Es10Error("GetProfilesInfo request", "search by profile and class at once")
        if self.search is not None:
            body += encode_tlv(0xA0, self.search.encode())
        elif self.profile_class is not None:
            body += encode_tlv(0xA0, encode_tlv(0x95, encode_int(self.profile_class)))
        if self.tag_list is not None:
            body += encode_tlv(_T_TAGLIST, self.tag_list)
        return encode_tlv(self.TAG, body)

    @classmethod
    def decode(cls, der: bytes) -> Self:
        step = "GetProfilesInfo request"
        items = _children(_top(der, cls.TAG, step), step)
        search: ProfileRef | None = None
        pclass: ProfileClass | None = None
        tag_list: bytes | None = None
        if items and items[0].tag == 0xA0:
            inner = _children(items.pop(0), step)
            if len(inner) != 1:
                raise Es10Error(step, f"searchCriteria has {len(inner)} elements, expected 1")
            if inner[0].tag == 0x95:
                pclass = _enum(ProfileClass, _int(inner[0].value, step), step)
            else:
                search = ProfileRef.from_tlv(inner[0], step)
        if items and items[0].tag == _T_TAGLIST:
            tag_list = items.pop(0).value
        if items:
            raise Es10Error(step, f"unknown tag {items[0].tag:X}")
        return cls(search=search, profile_class=pclass, tag_list=tag_list)


_PROFILE_INFO_ORDER = (0x5A, 0x4F, 0x9F70, 0x90, 0x91, 0x92, 0x93, 0x94, 0x95, 0xB6, 0xB7, 0xB8, 0x99, 0xBF76)


@dataclass(frozen=True, slots=True)
class ProfileInfo:
    """One ProfileInfo (E3). Fields not modelled (icon, owner, PPR, ...) stay raw in ``extra``."""

    iccid: str | None = None
    aid: bytes | None = None
    state: ProfileState | None = None
    nickname: str | None = None
    service_provider: str | None = None
    profile_name: str | None = None
    profile_class: ProfileClass | None = None
    extra: tuple[Tlv, ...] = ()

    def encode(self) -> bytes:
        items: list[Tlv] = list(self.extra)
        if self.iccid is not None:
            items.append(Tlv(0x5A, iccid_to_bcd(self.iccid)))
        if self.aid is not None:
            items.append(Tlv(0x4F, self.aid))
        if self.state is not None:
            items.append(Tlv(0x9F70, encode_int(self.state)))
        for tag, text in ((0x90, self.nickname), (0x91, self.service_provider), (0x92, self.profile_name)):
            if text is not None:
                items.append(Tlv(tag, text.encode("utf-8")))
        if self.profile_class is not None:
            items.append(Tlv(0x95, encode_int(self.profile_class)))
        items.sort(key=lambda t: _PROFILE_INFO_ORDER.index(t.tag))
        return encode_tlv(_T_PROFILE_INFO, b"".join(i.encode() for i in items))

    @classmethod
    def from_tlv(cls, tlv: Tlv, step: str) -> ProfileInfo:
        if tlv.tag != _T_PROFILE_INFO:
            raise Es10Error(step, f"unknown tag {tlv.tag:X} in profile list, expected E3")
        values: dict[str, object] = {}
        extra: list[Tlv] = []
        last = -1
        for item in _children(tlv, step):
            if item.tag not in _PROFILE_INFO_ORDER:
                raise Es10Error(step, f"unknown tag {item.tag:X} in ProfileInfo")
            index = _PROFILE_INFO_ORDER.index(item.tag)
            if index <= last:
                raise Es10Error(step, f"tag {item.tag:X} out of order or repeated in ProfileInfo")
            last = index
            if item.tag == 0x5A:
                values["iccid"] = iccid_from_bcd(item.value)
            elif item.tag == 0x4F:
                values["aid"] = item.value
            elif item.tag == 0x9F70:
                values["state"] = _enum(ProfileState, _int(item.value, step), step)
            elif item.tag == 0x90:
                values["nickname"] = _utf8(item.value, step, 64)
            elif item.tag == 0x91:
                values["service_provider"] = _utf8(item.value, step, 32)
            elif item.tag == 0x92:
                values["profile_name"] = _utf8(item.value, step, 64)
            elif item.tag == 0x95:
                values["profile_class"] = _enum(ProfileClass, _int(item.value, step), step)
            else:
                extra.append(item)
        return cls(extra=tuple(extra), **values)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class GetProfilesInfoResponse:
    TAG: ClassVar[int] = TAG_GET_PROFILES_INFO
    profiles: tuple[ProfileInfo, ...] = ()
    error: ProfileInfoListError | None = None

    def encode(self) -> bytes:
        if self.error is not None:
            return encode_tlv(self.TAG, encode_tlv(0x81, encode_int(self.error)))
        body = b"".join(p.encode() for p in self.profiles)
        return encode_tlv(self.TAG, encode_tlv(0xA0, body))

    @classmethod
    def decode(cls, der: bytes) -> Self:
        step = "GetProfilesInfo response"
        items = _children(_top(der, cls.TAG, step), step)
        if len(items) != 1:
            raise Es10Error(step, f"expected one CHOICE element, got {len(items)}")
        if items[0].tag == 0x81:
            code = _int(items[0].value, step)
            return cls(error=_enum(ProfileInfoListError, code, step))
        if items[0].tag != 0xA0:
            raise Es10Error(step, f"unknown tag {items[0].tag:X}, expected A0 or 81")
        return cls(profiles=tuple(ProfileInfo.from_tlv(t, step) for t in _children(items[0], step)))


@dataclass(frozen=True, slots=True)
class _SwitchRequest:
    TAG: ClassVar[int] = 0
    NAME: ClassVar[str] = ""
    ref: ProfileRef
    refresh: bool = True

    def encode(self) -> bytes:
        body = encode_tlv(0xA0, self.ref.encode()) + encode_tlv(0x81, b"\xff" if self.refresh else b"\x00")
        return encode_tlv(self.TAG, body)

    @classmethod
    def decode(cls, der: bytes) -> Self:
        step = f"{cls.NAME} request"
        items = _expect(_children(_top(der, cls.TAG, step), step), (0xA0, 0x81), step)
        inner = _children(items[0], step)
        if len(inner) != 1:
            raise Es10Error(step, f"profileIdentifier has {len(inner)} elements, expected 1")
        return cls(ref=ProfileRef.from_tlv(inner[0], step), refresh=_bool(items[1].value, step))


@dataclass(frozen=True, slots=True)
class EnableProfileRequest(_SwitchRequest):
    TAG: ClassVar[int] = TAG_ENABLE
    NAME: ClassVar[str] = "EnableProfile"


@dataclass(frozen=True, slots=True)
class DisableProfileRequest(_SwitchRequest):
    TAG: ClassVar[int] = TAG_DISABLE
    NAME: ClassVar[str] = "DisableProfile"


@dataclass(frozen=True, slots=True)
class DeleteProfileRequest:
    TAG: ClassVar[int] = TAG_DELETE
    ref: ProfileRef

    def encode(self) -> bytes:
        return encode_tlv(self.TAG, self.ref.encode())

    @classmethod
    def decode(cls, der: bytes) -> Self:
        step = "DeleteProfile request"
        items = _children(_top(der, cls.TAG, step), step)
        if len(items) != 1:
            raise Es10Error(step, f"expected one profile identifier, got {len(items)} elements")
        return cls(ref=ProfileRef.from_tlv(items[0], step))


@dataclass(frozen=True, slots=True)
class SetNicknameRequest:
    TAG: ClassVar[int] = TAG_SET_NICKNAME
    iccid: str
    nickname: str

    def encode(self) -> bytes:
        if len(self.nickname) > 64:
            raise Es10Error("SetNickname request", f"nickname of {len(self.nickname)} characters exceeds 64")
        body = encode_tlv(_T_ICCID, iccid_to_bcd(self.iccid)) + encode_tlv(0x90, self.nickname.encode())
        return encode_tlv(self.TAG, body)

    @classmethod
    def decode(cls, der: bytes) -> Self:
        step = "SetNickname request"
        items = _expect(_children(_top(der, cls.TAG, step), step), (_T_ICCID, 0x90), step)
        return cls(iccid=iccid_from_bcd(items[0].value), nickname=_utf8(items[1].value, step, 64))


_RESET_BITS = ("delete_operational", "delete_field_loaded_test", "reset_default_smdp")


@dataclass(frozen=True, slots=True)
class EuiccMemoryResetRequest:
    TAG: ClassVar[int] = TAG_MEMORY_RESET
    delete_operational: bool = True
    delete_field_loaded_test: bool = True
    reset_default_smdp: bool = True

    def encode(self) -> bytes:
        bits = frozenset(i for i, name in enumerate(_RESET_BITS) if getattr(self, name))
        return encode_tlv(self.TAG, encode_tlv(0x82, _bits_encode(bits)))

    @classmethod
    def decode(cls, der: bytes) -> Self:
        step = "eUICCMemoryReset request"
        items = _expect(_children(_top(der, cls.TAG, step), step), (0x82,), step)
        bits = _bits_decode(items[0].value, step)
        return cls(*(i in bits for i in range(len(_RESET_BITS))))


@dataclass(frozen=True, slots=True)
class ListNotificationRequest:
    """ListNotificationRequest; ``events`` filters by operation (None: all)."""

    TAG: ClassVar[int] = TAG_LIST_NOTIFICATION
    events: frozenset[NotificationEvent] | None = None

    def encode(self) -> bytes:
        body = b"" if self.events is None else encode_tlv(0x81, _bits_encode(frozenset(self.events)))
        return encode_tlv(self.TAG, body)

    @classmethod
    def decode(cls, der: bytes) -> Self:
        step = "ListNotification request"
        items = _children(_top(der, cls.TAG, step), step)
        if not items:
            return cls()
        _expect(items, (0x81,), step)
        bits = _bits_decode(items[0].value, step)
        return cls(events=frozenset(_enum(NotificationEvent, b, step) for b in bits))


@dataclass(frozen=True, slots=True)
class NotificationMetadata:
    seq: int
    event: NotificationEvent
    address: str
    iccid: str | None = None

    def encode(self) -> bytes:
        body = encode_tlv(0x80, encode_int(self.seq)) + encode_tlv(
            0x81, _bits_encode(frozenset({self.event}))
        )
        body += encode_tlv(0x0C, self.address.encode())
        if self.iccid is not None:
            body += encode_tlv(_T_ICCID, iccid_to_bcd(self.iccid))
        return encode_tlv(_T_NOTIFICATION_METADATA, body)

    @classmethod
    def from_tlv(cls, tlv: Tlv, step: str) -> NotificationMetadata:
        if tlv.tag != _T_NOTIFICATION_METADATA:
            raise Es10Error(step, f"unknown tag {tlv.tag:X} in notification list, expected BF2F")
        items = _children(tlv, step)
        iccid = None
        if len(items) == 4:
            _expect(items, (0x80, 0x81, 0x0C, _T_ICCID), step)
            iccid = iccid_from_bcd(items[3].value)
        else:
            _expect(items, (0x80, 0x81, 0x0C), step)
        bits = _bits_decode(items[1].value, step)
        if len(bits) != 1:
            raise Es10Error(step, f"profileManagementOperation must have one bit set, has {len(bits)}")
        return cls(
            seq=_int(items[0].value, step),
            event=_enum(NotificationEvent, next(iter(bits)), step),
            address=_utf8(items[2].value, step, 255),
            iccid=iccid,
        )


@dataclass(frozen=True, slots=True)
class ListNotificationResponse:
    TAG: ClassVar[int] = TAG_LIST_NOTIFICATION
    notifications: tuple[NotificationMetadata, ...] = ()
    error: ListNotificationError | None = None

    def encode(self) -> bytes:
        if self.error is not None:
            return encode_tlv(self.TAG, encode_tlv(0x81, encode_int(self.error)))
        return encode_tlv(self.TAG, encode_tlv(0xA0, b"".join(n.encode() for n in self.notifications)))

    @classmethod
    def decode(cls, der: bytes) -> Self:
        step = "ListNotification response"
        items = _children(_top(der, cls.TAG, step), step)
        if len(items) != 1:
            raise Es10Error(step, f"expected one CHOICE element, got {len(items)}")
        if items[0].tag == 0x81:
            return cls(error=_enum(ListNotificationError, _int(items[0].value, step), step))
        if items[0].tag != 0xA0:
            raise Es10Error(step, f"unknown tag {items[0].tag:X}, expected A0 or 81")
        return cls(
            notifications=tuple(NotificationMetadata.from_tlv(t, step) for t in _children(items[0], step))
        )


@dataclass(frozen=True, slots=True)
class NotificationSentRequest:
    TAG: ClassVar[int] = TAG_NOTIFICATION_SENT
    seq: int

    def encode(self) -> bytes:
        return encode_tlv(self.TAG, encode_tlv(0x80, encode_int(self.seq)))

    @classmethod
    def decode(cls, der: bytes) -> Self:
        step = "NotificationSent request"
        items = _expect(_children(_top(der, cls.TAG, step), step), (0x80,), step)
        return cls(seq=_int(items[0].value, step))


# --- requests the manager does not send, decoded for completeness (every SGP.22 vector) -----


@dataclass(frozen=True, slots=True)
class GetEuiccInfo1Request(_EmptyRequest):
    TAG: ClassVar[int] = TAG_GET_EUICC_INFO1
    NAME: ClassVar[str] = "GetEuiccInfo1"


@dataclass(frozen=True, slots=True)
class GetEuiccChallengeRequest(_EmptyRequest):
    TAG: ClassVar[int] = TAG_GET_EUICC_CHALLENGE
    NAME: ClassVar[str] = "GetEuiccChallenge"


@dataclass(frozen=True, slots=True)
class EuiccConfiguredAddressesRequest(_EmptyRequest):
    TAG: ClassVar[int] = TAG_CONFIGURED_ADDRESSES
    NAME: ClassVar[str] = "EuiccConfiguredAddresses"


@dataclass(frozen=True, slots=True)
class GetRatRequest(_EmptyRequest):
    TAG: ClassVar[int] = TAG_GET_RAT
    NAME: ClassVar[str] = "GetRAT"


@dataclass(frozen=True, slots=True)
class RetrieveNotificationsListRequest:
    """``BF2B { [A0 { 80 seqNumber | 81 profileManagementOperation }] }``: at most one criterion."""

    TAG: ClassVar[int] = TAG_RETRIEVE_NOTIFICATIONS
    seq: int | None = None
    events: frozenset[NotificationEvent] | None = None

    def __post_init__(self) -> None:
        if self.seq is not None and self.events is not None:
            raise Es10Error("RetrieveNotificationsList request", "give seq or events, not both")

    def encode(self) -> bytes:
        if self.seq is not None:
            return encode_tlv(self.TAG, encode_tlv(0xA0, encode_tlv(0x80, encode_int(self.seq))))
        if self.events is not None:
            bits = frozenset(int(e) for e in self.events)
            return encode_tlv(self.TAG, encode_tlv(0xA0, encode_tlv(0x81, _bits_encode(bits))))
        return encode_tlv(self.TAG, b"")

    @classmethod
    def decode(cls, der: bytes) -> Self:
        step = "RetrieveNotificationsList request"
        items = _children(_top(der, cls.TAG, step), step)
        if not items:
            return cls()
        (criteria,) = _expect(items, (0xA0,), step)
        choices = _children(criteria, step)
        if len(choices) != 1:
            raise Es10Error(step, f"searchCriteria must hold exactly one criterion, got {len(choices)}")
        choice = choices[0]
        if choice.tag == 0x80:
            return cls(seq=_int(choice.value, step))
        if choice.tag == 0x81:
            bits = _bits_decode(choice.value, step)
            return cls(events=frozenset(_enum(NotificationEvent, b, step) for b in bits))
        raise Es10Error(step, f"unknown search criterion tag {choice.tag:X}")


@dataclass(frozen=True, slots=True)
class SetDefaultDpAddressRequest:
    """``BF3F { 80 defaultDpAddress (UTF8String) }``."""

    TAG: ClassVar[int] = TAG_SET_DEFAULT_DP
    address: str

    def encode(self) -> bytes:
        return encode_tlv(self.TAG, encode_tlv(0x80, self.address.encode("utf-8")))

    @classmethod
    def decode(cls, der: bytes) -> Self:
        step = "SetDefaultDpAddress request"
        (item,) = _expect(_children(_top(der, cls.TAG, step), step), (0x80,), step)
        return cls(address=_utf8(item.value, step, 255))


# --- responses of the functions a standard LPA calls (lpac: chip info, notification process) --


def _pkid_list(item: Tlv, step: str) -> tuple[bytes, ...]:
    out = []
    for tlv in _children(item, step):
        if tlv.tag != 0x04:
            raise Es10Error(step, f"unknown tag {tlv.tag:X} in CI key id list, expected 04")
        out.append(tlv.value)
    return tuple(out)


def _encode_pkid_list(tag: int, pkids: tuple[bytes, ...]) -> bytes:
    return encode_tlv(tag, b"".join(encode_tlv(0x04, p) for p in pkids))


@dataclass(frozen=True, slots=True)
class EuiccInfo1:
    """EUICCInfo1: SVN and the CI public key identifiers (SubjectKeyIdentifiers)."""

    TAG: ClassVar[int] = TAG_GET_EUICC_INFO1
    svn: bytes
    ci_pkids_verification: tuple[bytes, ...]
    ci_pkids_signing: tuple[bytes, ...]

    def encode(self) -> bytes:
        body = encode_tlv(0x82, self.svn)
        body += _encode_pkid_list(0xA9, self.ci_pkids_verification)
        body += _encode_pkid_list(0xAA, self.ci_pkids_signing)
        return encode_tlv(self.TAG, body)

    @classmethod
    def decode(cls, der: bytes) -> Self:
        step = "GetEuiccInfo1 response"
        items = _children(_top(der, cls.TAG, step), step)
        svn, verification, signing = _expect(items, (0x82, 0xA9, 0xAA), step)
        if len(svn.value) != 3:
            raise Es10Error(step, f"svn of {len(svn.value)} bytes, expected 3")
        return cls(svn.value, _pkid_list(verification, step), _pkid_list(signing, step))


@dataclass(frozen=True, slots=True)
class GetEuiccChallengeResponse:
    TAG: ClassVar[int] = TAG_GET_EUICC_CHALLENGE
    challenge: bytes

    def encode(self) -> bytes:
        return encode_tlv(self.TAG, encode_tlv(0x80, self.challenge))

    @classmethod
    def decode(cls, der: bytes) -> Self:
        step = "GetEuiccChallenge response"
        (item,) = _expect(_children(_top(der, cls.TAG, step), step), (0x80,), step)
        if len(item.value) != 16:
            raise Es10Error(step, f"euiccChallenge of {len(item.value)} bytes, expected 16")
        return cls(item.value)


@dataclass(frozen=True, slots=True)
class EuiccConfiguredAddressesResponse:
    """``BF3C { [80 defaultDpAddress] 81 rootDsAddress }`` (UTF8String FQDNs)."""

    TAG: ClassVar[int] = TAG_CONFIGURED_ADDRESSES
    root_ds_address: str
    default_dp_address: str | None = None

    def encode(self) -> bytes:
        body = b"" if self.default_dp_address is None else encode_tlv(0x80, self.default_dp_address.encode())
        return encode_tlv(self.TAG, body + encode_tlv(0x81, self.root_ds_address.encode()))

    @classmethod
    def decode(cls, der: bytes) -> Self:
        step = "EuiccConfiguredAddresses response"
        items = _children(_top(der, cls.TAG, step), step)
        if len(items) == 2:
            dp, ds = _expect(items, (0x80, 0x81), step)
            return cls(_utf8(ds.value, step, 255), _utf8(dp.value, step, 255))
        (ds,) = _expect(items, (0x81,), step)
        return cls(_utf8(ds.value, step, 255))


@dataclass(frozen=True, slots=True)
class PprRule:
    """ProfilePolicyAuthorisationRule: PPR bits, allowed operators (MCC+MNC, 3 bytes), consent."""

    ppr_ids: frozenset[int]
    mcc_mnc: tuple[bytes, ...]
    consent_required: bool = False

    def encode(self) -> bytes:
        operators = b"".join(encode_tlv(0x30, encode_tlv(0x80, op)) for op in self.mcc_mnc)
        body = encode_tlv(0x80, _bits_encode(self.ppr_ids)) + encode_tlv(0xA1, operators)
        body += encode_tlv(0x82, _bits_encode(frozenset({0}) if self.consent_required else frozenset()))
        return encode_tlv(0x30, body)

    @classmethod
    def from_tlv(cls, tlv: Tlv, step: str) -> PprRule:
        if tlv.tag != 0x30:
            raise Es10Error(step, f"unknown tag {tlv.tag:X} in RAT, expected 30")
        ids, operators, flags = _expect(_children(tlv, step), (0x80, 0xA1, 0x82), step)
        mcc_mnc = []
        for operator in _children(operators, step):
            if operator.tag != 0x30:
                raise Es10Error(step, f"unknown tag {operator.tag:X} in allowedOperators, expected 30")
            fields = _children(operator, step)
            if not fields or fields[0].tag != 0x80 or len(fields[0].value) != 3:
                raise Es10Error(step, "OperatorId without a 3-byte mccMnc")
            mcc_mnc.append(fields[0].value)
        return cls(_bits_decode(ids.value, step), tuple(mcc_mnc), 0 in _bits_decode(flags.value, step))


@dataclass(frozen=True, slots=True)
class GetRatResponse:
    """``BF43 { A0 rat }``: the Rules Authorisation Table."""

    TAG: ClassVar[int] = TAG_GET_RAT
    rules: tuple[PprRule, ...] = ()

    def encode(self) -> bytes:
        return encode_tlv(self.TAG, encode_tlv(0xA0, b"".join(r.encode() for r in self.rules)))

    @classmethod
    def decode(cls, der: bytes) -> Self:
        step = "GetRAT response"
        (rat,) = _expect(_children(_top(der, cls.TAG, step), step), (0xA0,), step)
        return cls(tuple(PprRule.from_tlv(t, step) for t in _children(rat, step)))


class RetrieveNotificationsError(enum.IntEnum):
    noResultAvailable = 1
    undefinedError = 127


_T_PENDING_INSTALL = 0xBF37
_T_OTHER_SIGNED = 0x30


def other_signed_notification(
    metadata: NotificationMetadata, signature: bytes, euicc_certificate: bytes, eum_certificate: bytes
) -> bytes:
    """OtherSignedNotification DER: ``30 { BF2F metadata, 5F37 signature, eUICC cert, EUM cert }``.

    ``signature`` is the eUICC's over ``metadata.encode()``; the certificates are DER.
    """
    body = metadata.encode() + encode_tlv(0x5F37, signature) + euicc_certificate + eum_certificate
    return encode_tlv(_T_OTHER_SIGNED, body)


@dataclass(frozen=True, slots=True)
class RetrieveNotificationsListResponse:
    """The pending notifications, each kept as its DER (an LPA forwards them unchanged).

    Each is a ProfileInstallationResult (``BF37``) or an OtherSignedNotification (``30``);
    :attr:`metadata` decodes the NotificationMetadata of the latter.
    """

    TAG: ClassVar[int] = TAG_RETRIEVE_NOTIFICATIONS
    notifications: tuple[bytes, ...] = ()
    error: RetrieveNotificationsError | None = None

    def encode(self) -> bytes:
        if self.error is not None:
            return encode_tlv(self.TAG, encode_tlv(0x81, encode_int(self.error)))
        return encode_tlv(self.TAG, encode_tlv(0xA0, b"".join(self.notifications)))

    @classmethod
    def decode(cls, der: bytes) -> Self:
        step = "RetrieveNotificationsList response"
        items = _children(_top(der, cls.TAG, step), step)
        if len(items) != 1:
            raise Es10Error(step, f"expected one CHOICE element, got {len(items)}")
        if items[0].tag == 0x81:
            return cls(error=_enum(RetrieveNotificationsError, _int(items[0].value, step), step))
        if items[0].tag != 0xA0:
            raise Es10Error(step, f"unknown tag {items[0].tag:X}, expected A0 or 81")
        pending = _children(items[0], step)
        for tlv in pending:
            if tlv.tag not in (_T_PENDING_INSTALL, _T_OTHER_SIGNED):
                raise Es10Error(step, f"unknown tag {tlv.tag:X} in notification list, expected BF37 or 30")
            if tlv.tag == _T_OTHER_SIGNED:
                _expect_other_signed(tlv, step)
        return cls(notifications=tuple(t.encode() for t in pending))

    def metadata(self) -> tuple[NotificationMetadata | None, ...]:
        """The NotificationMetadata of each OtherSignedNotification (``None`` for BF37)."""
        step = "RetrieveNotificationsList response"
        out: list[NotificationMetadata | None] = []
        for der in self.notifications:
            tlv = _top(der, decode_one(der).tag, step)
            out.append(_expect_other_signed(tlv, step) if tlv.tag == _T_OTHER_SIGNED else None)
        return tuple(out)


def _expect_other_signed(tlv: Tlv, step: str) -> NotificationMetadata:
    items = _expect(_children(tlv, step), (_T_NOTIFICATION_METADATA, 0x5F37, 0x30, 0x30), step)
    return NotificationMetadata.from_tlv(items[0], step)


# --- single-result responses --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ResultResponse:
    TAG: ClassVar[int] = 0
    NAME: ClassVar[str] = ""
    RESULT: ClassVar[type[enum.IntEnum]] = enum.IntEnum
    result: enum.IntEnum

    def encode(self) -> bytes:
        return encode_tlv(self.TAG, encode_tlv(0x80, encode_int(int(self.result))))

    @classmethod
    def decode(cls, der: bytes) -> Self:
        step = f"{cls.NAME} response"
        items = _expect(_children(_top(der, cls.TAG, step), step), (0x80,), step)
        return cls(result=_enum(cls.RESULT, _int(items[0].value, step), step))

    @property
    def ok(self) -> bool:
        return int(self.result) == 0


@dataclass(frozen=True, slots=True)
class EnableProfileResponse(_ResultResponse):
    TAG: ClassVar[int] = TAG_ENABLE
    NAME: ClassVar[str] = "EnableProfile"
    RESULT: ClassVar[type[enum.IntEnum]] = EnableResult


@dataclass(frozen=True, slots=True)
class DisableProfileResponse(_ResultResponse):
    TAG: ClassVar[int] = TAG_DISABLE
    NAME: ClassVar[str] = "DisableProfile"
    RESULT: ClassVar[type[enum.IntEnum]] = DisableResult


@dataclass(frozen=True, slots=True)
class DeleteProfileResponse(_ResultResponse):
    TAG: ClassVar[int] = TAG_DELETE
    NAME: ClassVar[str] = "DeleteProfile"
    RESULT: ClassVar[type[enum.IntEnum]] = DeleteResult


@dataclass(frozen=True, slots=True)
class SetNicknameResponse(_ResultResponse):
    TAG: ClassVar[int] = TAG_SET_NICKNAME
    NAME: ClassVar[str] = "SetNickname"
    RESULT: ClassVar[type[enum.IntEnum]] = SetNicknameResult


@dataclass(frozen=True, slots=True)
class EuiccMemoryResetResponse(_ResultResponse):
    TAG: ClassVar[int] = TAG_MEMORY_RESET
    NAME: ClassVar[str] = "eUICCMemoryReset"
    RESULT: ClassVar[type[enum.IntEnum]] = MemoryResetResult


class SetDefaultDpAddressResult(enum.IntEnum):
    ok = 0
    undefinedError = 127


@dataclass(frozen=True, slots=True)
class SetDefaultDpAddressResponse(_ResultResponse):
    TAG: ClassVar[int] = TAG_SET_DEFAULT_DP
    NAME: ClassVar[str] = "SetDefaultDpAddress"
    RESULT: ClassVar[type[enum.IntEnum]] = SetDefaultDpAddressResult


@dataclass(frozen=True, slots=True)
class NotificationSentResponse(_ResultResponse):
    TAG: ClassVar[int] = TAG_NOTIFICATION_SENT
    NAME: ClassVar[str] = "NotificationSent"
    RESULT: ClassVar[type[enum.IntEnum]] = NotificationSentResult


Request = (
    GetEidRequest
    | GetEuiccInfo2Request
    | GetProfilesInfoRequest
    | EnableProfileRequest
    | DisableProfileRequest
    | DeleteProfileRequest
    | SetNicknameRequest
    | EuiccMemoryResetRequest
    | ListNotificationRequest
    | NotificationSentRequest
    | GetEuiccInfo1Request
    | GetEuiccChallengeRequest
    | EuiccConfiguredAddressesRequest
    | GetRatRequest
    | RetrieveNotificationsListRequest
    | SetDefaultDpAddressRequest
)

_REQUESTS: dict[int, type[Request]] = {
    cls.TAG: cls
    for cls in (
        GetEidRequest,
        GetEuiccInfo2Request,
        GetProfilesInfoRequest,
        EnableProfileRequest,
        DisableProfileRequest,
        DeleteProfileRequest,
        SetNicknameRequest,
        EuiccMemoryResetRequest,
        ListNotificationRequest,
        NotificationSentRequest,
        GetEuiccInfo1Request,
        GetEuiccChallengeRequest,
        EuiccConfiguredAddressesRequest,
        GetRatRequest,
        RetrieveNotificationsListRequest,
        SetDefaultDpAddressRequest,
    )
}


def decode_request(der: bytes) -> Request:
    """Decode any supported ES10 request by its top-level tag (used by the simulated card)."""
    try:
        tlv = decode_one(der, context="ES10 request")
    except DerError as exc:
        raise Es10Error("ES10 request", str(exc)) from exc
    kind = _REQUESTS.get(tlv.tag)
    if kind is None:
        raise Es10Error("ES10 request", f"unknown tag {tlv.tag:X}")
    return kind.decode(der)
