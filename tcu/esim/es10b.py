"""ES10b profile download as the LPA speaks it (SGP.22 v2.2.2 §5.7): requests it builds, answers it reads.

The LPA relays most of the download between the SM-DP+ (ES9+) and the card (ES10b) unchanged: the
server's signed data go into the card's requests as they came, and the card's signed answers go to the
server as they came (base64). So this module *builds* the requests from the server's DER pieces and
*reads* only what the LPA itself needs from the card's answers (transaction id, ok or error code,
the profile installation result); every answer is kept as its exact bytes in ``der``.

* :class:`AuthenticateServerRequest` ``BF38`` / :class:`AuthenticateServerResponse`
* :class:`PrepareDownloadRequest` ``BF21`` / :class:`PrepareDownloadResponse`
* :func:`split_bound_profile_package`: the ``BF36`` package in the pieces §2.5.5 sends one by one
* :class:`ProfileInstallationResult` ``BF37`` (the answer to the last piece, or to a failing one)
* :class:`CancelSessionRequest` ``BF41`` / :class:`CancelSessionResponse`
* :class:`ServerSigned1`: what the LPA checks in the server's first answer (challenge, address)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar, Self, TypeVar

from tcu.esim.der import DerError, Tlv, decode_one, decode_seq, encode_int, encode_tlv, int_value
from tcu.esim.es10 import Es10Error, NotificationMetadata

__all__ = [
    "TAG_AUTHENTICATE_SERVER",
    "TAG_BOUND_PROFILE_PACKAGE",
    "TAG_CANCEL_SESSION",
    "TAG_PREPARE_DOWNLOAD",
    "TAG_PROFILE_INSTALLATION_RESULT",
    "AuthenticateErrorCode",
    "AuthenticateServerRequest",
    "AuthenticateServerResponse",
    "BppCommandId",
    "CancelSessionError",
    "CancelSessionReason",
    "CancelSessionRequest",
    "CancelSessionResponse",
    "DownloadErrorCode",
    "InstallErrorReason",
    "PrepareDownloadRequest",
    "PrepareDownloadResponse",
    "ProfileInstallationResult",
    "ServerSigned1",
    "bpp_segment_count",
    "pending_notification_address",
    "split_bound_profile_package",
]

TAG_AUTHENTICATE_SERVER = 0xBF38
TAG_PREPARE_DOWNLOAD = 0xBF21
TAG_BOUND_PROFILE_PACKAGE = 0xBF36
TAG_INITIALISE_SECURE_CHANNEL = 0xBF23
TAG_PROFILE_INSTALLATION_RESULT = 0xBF37
TAG_PIR_DATA = 0xBF27
TAG_CANCEL_SESSION = 0xBF41
_T_NOTIFICATION_METADATA = 0xBF2F
_T_SIGNATURE = 0x5F37


class AuthenticateErrorCode(enum.IntEnum):
    invalidCertificate = 1
    invalidSignature = 2
    unsupportedCurve = 3
    noSessionContext = 4
    invalidOid = 5
    euiccChallengeMismatch = 6
    ciPKUnknown = 7
    undefinedError = 127


class DownloadErrorCode(enum.IntEnum):
    invalidCertificate = 1
    invalidSignature = 2
    unsupportedCurve = 3
    noSessionContext = 4
    invalidTransactionId = 5
    undefinedError = 127


class CancelSessionReason(enum.IntEnum):
    endUserRejection = 0
    postponed = 1
    timeout = 2
    pprNotAllowed = 3
    metadataMismatch = 4
    loadBppExecutionError = 5
    undefinedReason = 127


class CancelSessionError(enum.IntEnum):
    invalidTransactionId = 5
    undefinedError = 127


class BppCommandId(enum.IntEnum):
    initialiseSecureChannel = 0
    configureISDP = 1
    storeMetadata = 2
    storeMetadata2 = 3
    replaceSessionKeys = 4
    loadProfileElements = 5


class InstallErrorReason(enum.IntEnum):
    incorrectInputValues = 1
    invalidSignature = 2
    invalidTransactionId = 3
    unsupportedCrtValues = 4
    unsupportedRemoteOperationType = 5
    unsupportedProfileClass = 6
    scp03tStructureError = 7
    scp03tSecurityError = 8
    installFailedDueToIccidAlreadyExistsOnEuicc = 9
    installFailedDueToInsufficientMemoryForProfile = 10
    installFailedDueToInterruption = 11
    installFailedDueToPEProcessingError = 12
    installFailedDueToDataMismatch = 13
    testProfileInstallFailedDueToInvalidNaaKey = 14
    pprNotAllowed = 15
    installFailedDueToUnknownError = 127


_E = TypeVar("_E", bound=enum.IntEnum)


def _one(der: bytes, tag: int, step: str) -> Tlv:
    try:
        tlv = decode_one(der, context=step)
    except DerError as exc:
        raise Es10Error(step, str(exc)) from exc
    if tlv.tag != tag:
        raise Es10Error(step, f"unknown tag {tlv.tag:X}, expected {tag:X}")
    return tlv


def _kids(tlv: Tlv, step: str) -> list[Tlv]:
    try:
        return decode_seq(tlv.value, context=step)
    except DerError as exc:
        raise Es10Error(step, str(exc)) from exc


def _find(items: list[Tlv], tag: int, step: str) -> Tlv:
    for item in items:
        if item.tag == tag:
            return item
    raise Es10Error(step, f"mandatory tag {tag:X} missing")


def _code(kind: type[_E], content: bytes, step: str) -> _E | int:
    """The named code, or the bare number when the card sends one this module does not know."""
    try:
        value = int_value(content, context=step)
    except DerError as exc:
        raise Es10Error(step, str(exc)) from exc
    try:
        return kind(value)
    except ValueError:
        return value


def _name(code: enum.IntEnum | int) -> str:
    return f"{code.name} ({int(code)})" if isinstance(code, enum.IntEnum) else f"code {code}"


# --- what the SM-DP+ signed first -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerSigned1:
    """``30 { 80 transactionId, 81 euiccChallenge, 83 serverAddress, 84 serverChallenge }``."""

    transaction_id: bytes
    euicc_challenge: bytes
    server_address: str
    server_challenge: bytes

    @classmethod
    def decode(cls, der: bytes) -> Self:
        step = "serverSigned1"
        items = _kids(_one(der, 0x30, step), step)
        tags = tuple(i.tag for i in items)
        if tags != (0x80, 0x81, 0x83, 0x84):
            raise Es10Error(step, f"expected tags [80 81 83 84], got [{' '.join(f'{t:X}' for t in tags)}]")
        try:
            address = items[2].value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Es10Error(step, f"serverAddress is not UTF-8: {exc}") from exc
        return cls(items[0].value, items[1].value, address, items[3].value)


# --- AuthenticateServer -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthenticateServerRequest:
    """``BF38``: the server's four DER pieces unchanged, then ctxParams1 (matching id, device info)."""

    TAG: ClassVar[int] = TAG_AUTHENTICATE_SERVER
    server_signed1: bytes
    server_signature1: bytes
    euicc_ci_pkid_to_be_used: bytes
    server_certificate: bytes
    matching_id: str | None
    tac: bytes = bytes.fromhex("35290611")
    imei: bytes | None = None

    def encode(self) -> bytes:
        step = "AuthenticateServer request"
        _one(self.server_signed1, 0x30, step)
        _one(self.server_signature1, _T_SIGNATURE, step)
        _one(self.euicc_ci_pkid_to_be_used, 0x04, step)
        _one(self.server_certificate, 0x30, step)
        if len(self.tac) != 4:
            raise Es10Error(step, f"TAC of {len(self.tac)} bytes, expected 4")
        device = encode_tlv(0x80, self.tac) + encode_tlv(0xA1, b"")
        if self.imei is not None:
            device += encode_tlv(0x82, self.imei)
        common = b"" if self.matching_id is None else encode_tlv(0x80, self.matching_id.encode("utf-8"))
        common += encode_tlv(0xA1, device)
        body = (
            self.server_signed1
            + self.server_signature1
            + self.euicc_ci_pkid_to_be_used
            + self.server_certificate
            + encode_tlv(0xA0, common)
        )
        return encode_tlv(self.TAG, body)


@dataclass(frozen=True, slots=True)
class AuthenticateServerResponse:
    """The card's answer (``der``, relayed to the SM-DP+) with its transaction id and error code."""

    TAG: ClassVar[int] = TAG_AUTHENTICATE_SERVER
    der: bytes
    transaction_id: bytes | None
    error: AuthenticateErrorCode | int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def error_name(self) -> str:
        return "" if self.error is None else _name(self.error)

    @classmethod
    def decode(cls, der: bytes) -> Self:
        step = "AuthenticateServer response"
        items = _kids(_one(der, cls.TAG, step), step)
        if len(items) != 1 or items[0].tag not in (0xA0, 0xA1):
            raise Es10Error(
                step, "expected one of authenticateResponseOk (A0) or authenticateResponseError (A1)"
            )
        inner = _kids(items[0], step)
        if items[0].tag == 0xA0:
            signed = _kids(_find(inner, 0x30, step), step)
            _find(inner, _T_SIGNATURE, step)
            return cls(der, _find(signed, 0x80, step).value)
        tid = next((i.value for i in inner if i.tag == 0x80), None)
        return cls(der, tid, _code(AuthenticateErrorCode, _find(inner, 0x02, step).value, step))


# --- PrepareDownload --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PrepareDownloadRequest:
    """``BF21 { smdpSigned2, smdpSignature2, [04 hashCc], smdpCertificate }`` (server pieces unchanged)."""

    TAG: ClassVar[int] = TAG_PREPARE_DOWNLOAD
    smdp_signed2: bytes
    smdp_signature2: bytes
    smdp_certificate: bytes
    hash_cc: bytes | None = None

    def encode(self) -> bytes:
        step = "PrepareDownload request"
        _one(self.smdp_signed2, 0x30, step)
        _one(self.smdp_signature2, _T_SIGNATURE, step)
        _one(self.smdp_certificate, 0x30, step)
        cc = b"" if self.hash_cc is None else encode_tlv(0x04, self.hash_cc)
        return encode_tlv(self.TAG, self.smdp_signed2 + self.smdp_signature2 + cc + self.smdp_certificate)

    @staticmethod
    def cc_required(smdp_signed2: bytes) -> bool:
        """Whether smdpSigned2's ccRequiredFlag asks for a confirmation code."""
        step = "smdpSigned2"
        flag = _find(_kids(_one(smdp_signed2, 0x30, step), step), 0x01, step).value
        return flag not in (b"\x00",)

    @staticmethod
    def transaction_id(smdp_signed2: bytes) -> bytes:
        step = "smdpSigned2"
        return _find(_kids(_one(smdp_signed2, 0x30, step), step), 0x80, step).value


@dataclass(frozen=True, slots=True)
class PrepareDownloadResponse:
    TAG: ClassVar[int] = TAG_PREPARE_DOWNLOAD
    der: bytes
    transaction_id: bytes | None
    error: DownloadErrorCode | int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def error_name(self) -> str:
        return "" if self.error is None else _name(self.error)

    @classmethod
    def decode(cls, der: bytes) -> Self:
        step = "PrepareDownload response"
        items = _kids(_one(der, cls.TAG, step), step)
        if len(items) != 1 or items[0].tag not in (0xA0, 0xA1):
            raise Es10Error(step, "expected one of downloadResponseOk (A0) or downloadResponseError (A1)")
        inner = _kids(items[0], step)
        if items[0].tag == 0xA0:
            signed = _kids(_find(inner, 0x30, step), step)
            _find(signed, 0x5F49, step)
            _find(inner, _T_SIGNATURE, step)
            return cls(der, _find(signed, 0x80, step).value)
        tid = next((i.value for i in inner if i.tag == 0x80), None)
        return cls(der, tid, _code(DownloadErrorCode, _find(inner, 0x02, step).value, step))


# --- the bound profile package -------------------------------------------------------------


def _header(tlv: Tlv) -> bytes:
    """Tag and length octets of ``tlv`` (its encoding without the value)."""
    encoded = tlv.encode()
    return encoded[: len(encoded) - len(tlv.value)]


def split_bound_profile_package(bpp: bytes) -> list[bytes]:
    """The pieces of a ``BF36`` package in the order SGP.22 §2.5.5 sends them, each one ES10 command.

    ``BF36`` header + the ``BF23`` TLV; the ``A0`` TLV (ConfigureISDP); the ``A1`` header, then each
    ``88`` TLV (StoreMetadata); the ``A2`` TLV if present (ReplaceSessionKeys); the ``A3`` header, then
    each ``86`` TLV (the profile segments). The same split as lpac's ``es10b_load_bound_profile_package``.
    """
    step = "BoundProfilePackage"
    top = _one(bpp, TAG_BOUND_PROFILE_PACKAGE, step)
    items = _kids(top, step)
    tags = [i.tag for i in items]
    if tags not in ([0xBF23, 0xA0, 0xA1, 0xA3], [0xBF23, 0xA0, 0xA1, 0xA2, 0xA3]):
        raise Es10Error(step, f"expected tags [BF23 A0 A1 (A2) A3], got [{' '.join(f'{t:X}' for t in tags)}]")
    by_tag = dict(zip(tags, items, strict=True))
    pieces = [_header(top) + by_tag[0xBF23].encode(), by_tag[0xA0].encode()]
    for outer, inner in ((0xA1, 0x88), (0xA2, 0x87), (0xA3, 0x86)):
        if outer not in by_tag:
            continue
        children = _kids(by_tag[outer], step)
        if any(child.tag != inner for child in children) or not children:
            raise Es10Error(step, f"{outer:X} must hold one or more {inner:X} TLVs")
        if outer == 0xA2:
            pieces.append(by_tag[outer].encode())
            continue
        pieces.append(_header(by_tag[outer]))
        pieces.extend(child.encode() for child in children)
    return pieces


def bpp_segment_count(bpp: bytes) -> int:
    return len(split_bound_profile_package(bpp))


@dataclass(frozen=True, slots=True)
class ProfileInstallationResult:
    """``BF37``: the card's signed result of loading a package (also its pending notification).

    ``der`` is relayed to the SM-DP+ (ES9+ handleNotification) unchanged.
    """

    TAG: ClassVar[int] = TAG_PROFILE_INSTALLATION_RESULT
    der: bytes
    transaction_id: bytes
    metadata: NotificationMetadata
    aid: bytes | None = None
    bpp_command: BppCommandId | int | None = None
    error: InstallErrorReason | int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.bpp_command is None

    @property
    def iccid(self) -> str | None:
        return self.metadata.iccid

    @property
    def error_name(self) -> str:
        if self.ok:
            return ""
        command = "?" if self.bpp_command is None else _name(self.bpp_command)
        reason = "?" if self.error is None else _name(self.error)
        return f"{reason} at {command}"

    @classmethod
    def decode(cls, der: bytes) -> Self:
        step = "ProfileInstallationResult"
        items = _kids(_one(der, cls.TAG, step), step)
        data = _kids(_find(items, TAG_PIR_DATA, step), step)
        _find(items, _T_SIGNATURE, step)
        metadata = NotificationMetadata.from_tlv(_find(data, _T_NOTIFICATION_METADATA, step), step)
        final = _kids(_find(data, 0xA2, step), step)
        if len(final) != 1 or final[0].tag not in (0xA0, 0xA1):
            raise Es10Error(step, "finalResult must be successResult (A0) or errorResult (A1)")
        tid = _find(data, 0x80, step).value
        fields = _kids(final[0], step)
        if final[0].tag == 0xA0:
            return cls(der, tid, metadata, aid=_find(fields, 0x4F, step).value)
        command = _code(BppCommandId, _find(fields, 0x80, step).value, step)
        reason = _code(InstallErrorReason, _find(fields, 0x81, step).value, step)
        return cls(der, tid, metadata, bpp_command=command, error=reason)


# --- CancelSession --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CancelSessionRequest:
    """``BF41 { 80 transactionId, 81 reason }``."""

    TAG: ClassVar[int] = TAG_CANCEL_SESSION
    transaction_id: bytes
    reason: CancelSessionReason

    def encode(self) -> bytes:
        return encode_tlv(
            self.TAG, encode_tlv(0x80, self.transaction_id) + encode_tlv(0x81, encode_int(int(self.reason)))
        )


@dataclass(frozen=True, slots=True)
class CancelSessionResponse:
    """``BF41 { A0 cancelSessionResponseOk }`` (signed, relayed to the SM-DP+) or ``BF41 { 81 error }``."""

    TAG: ClassVar[int] = TAG_CANCEL_SESSION
    der: bytes
    error: CancelSessionError | int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def decode(cls, der: bytes) -> Self:
        step = "CancelSession response"
        items = _kids(_one(der, cls.TAG, step), step)
        if len(items) != 1 or items[0].tag not in (0xA0, 0x81):
            raise Es10Error(step, "expected cancelSessionResponseOk (A0) or cancelSessionResponseError (81)")
        if items[0].tag == 0x81:
            return cls(der, _code(CancelSessionError, items[0].value, step))
        inner = _kids(items[0], step)
        _find(inner, 0x30, step)
        _find(inner, _T_SIGNATURE, step)
        return cls(der)


def pending_notification_address(der: bytes) -> tuple[int, str, str | None]:
    """``(seq, notificationAddress, iccid)`` of a pending notification (``BF37`` or ``30``)."""
    step = "PendingNotification"
    try:
        tlv = decode_one(der, context=step)
    except DerError as exc:
        raise Es10Error(step, str(exc)) from exc
    if tlv.tag == TAG_PROFILE_INSTALLATION_RESULT:
        items = _kids(_find(_kids(tlv, step), TAG_PIR_DATA, step), step)
    elif tlv.tag == 0x30:
        items = _kids(tlv, step)
    else:
        raise Es10Error(step, f"unknown tag {tlv.tag:X}, expected BF37 or 30")
    metadata = NotificationMetadata.from_tlv(_find(items, _T_NOTIFICATION_METADATA, step), step)
    return metadata.seq, metadata.address, metadata.iccid
