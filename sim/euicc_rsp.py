"""ES10b profile download on the simulated eUICC (SGP.22 v2.2.2 §3.1.3, §5.7.13-5.7.15, §2.5, §2.6.6).

:class:`DownloadFunctions` answers the download family for a :class:`sim.euicc.SimulatedEuicc`:

* **AuthenticateServer** (``BF38``): the CI named by ``euiccCiPKIdToBeUsed`` must be the card's;
  ``serverCertificate`` (CERT.DPauth) must be issued by it, valid now, with the DPauth policy OID,
  on P-256; ``serverSignature1`` must verify over ``serverSigned1``; ``euiccChallenge`` must be
  the one the card issued last (single use). The answer is ``euiccSigned1`` (transaction id,
  server address and challenge, the card's EUICCInfo2, the LPA's ``ctxParams1``) signed with
  the eUICC key, with the eUICC and EUM certificates. Refusals: AuthenticateErrorCode.
* **PrepareDownload** (``BF21``): the transaction id must be the session's; CERT.DPpb must be
  issued by the CI, valid, DPpb policy, P-256; ``smdpSignature2`` must verify over
  ``smdpSigned2 || 5F37 euiccSignature1``. The card makes the one-time key pair otPK/otSK.EUICC
  (P-256) and signs ``euiccSigned2 || smdpSignature2``. Refusals: DownloadErrorCode.
* **LoadBoundProfilePackage** (``BF36``), in the pieces of §2.5.5 (one STORE DATA sequence
  each): ``BF36`` header + InitialiseSecureChannel (transaction id, remoteOpId 1, CRT key type
  ``88`` length 16, ``smdpSign`` by DPpb over its data objects and ``5F49 euiccOtpk``; ECKA
  with otPK.DP; the X9.63 KDF (SHA-256, shared info ``keyType keyLen LV(hostId) LV(EID)``) to
  the initial MAC chaining value, S-ENC and S-MAC), ``A0`` ConfigureISDP (``87``, C-MAC checked,
  AES-CBC decrypted), ``A1`` header and each ``88`` StoreMetadata segment (C-MAC), optional
  ``A2`` ReplaceSessionKeys (``87``; the profile protection keys replace the session keys),
  ``A3`` header and each ``86`` profile element segment (C-MAC, decrypted, counted). The last
  ``86`` installs the profile (disabled, ICCID, name, service provider, class, the
  notification addresses from the metadata) and answers ``BF37`` ProfileInstallationResult
  (successResult with the ISD-P AID), signed by the eUICC. Anything that does not verify
  ends the session with an errorResult ``BF37`` (bppCommandId, errorReason) at once; the
  card's profiles stay as they were. Both results are kept as the pending install
  notification (SGP.22 §3.1.3: the LPA delivers it to the SM-DP+ with handleNotification).
* **CancelSession** (``BF41``): the transaction id must be the session's (else
  ``invalidTransactionId``); the answer ``euiccCancelSessionSigned`` (transaction id, the
  SM-DP+ OID from CERT.DPauth, the reason) is signed and the session dropped.

Memory: ``EuiccConfig.memory_b`` bounds the bytes of profile packages on the card; a package
whose profile elements (the ``A3`` length) would exceed it is refused with
``installFailedDueToInsufficientMemoryForProfile``.
"""

from __future__ import annotations

import datetime as dt
import enum
import hmac
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.cmac import CMAC
from cryptography.hazmat.primitives.kdf.x963kdf import X963KDF

from tcu.esim import es10
from tcu.esim.der import DerError, Tlv, decode_one, decode_seq, encode_int, encode_length, encode_tlv

if TYPE_CHECKING:
    from sim.euicc import SimulatedEuicc

__all__ = [
    "DOWNLOAD_TAGS",
    "AuthenticateError",
    "BppCommand",
    "BppError",
    "DownloadError",
    "DownloadFunctions",
    "Metadata",
    "Scp03t",
    "derive_session_keys",
    "verify_raw_signature",
]

TAG_AUTHENTICATE_SERVER = 0xBF38
TAG_PREPARE_DOWNLOAD = 0xBF21
TAG_CANCEL_SESSION = 0xBF41
TAG_BPP = 0xBF36
TAG_ISC = 0xBF23
TAG_PIR = 0xBF37
TAG_PIR_DATA = 0xBF27
DOWNLOAD_TAGS = frozenset({TAG_AUTHENTICATE_SERVER, TAG_PREPARE_DOWNLOAD, TAG_CANCEL_SESSION, TAG_BPP})
BPP_PIECE_TAGS = frozenset({0xA0, 0xA1, 0xA2, 0xA3, 0x86, 0x88})

OID_DP_AUTH = x509.ObjectIdentifier("2.23.146.1.2.1.4")  # id-rspRole-dp-auth-v2
OID_DP_PB = x509.ObjectIdentifier("2.23.146.1.2.1.5")  # id-rspRole-dp-pb-v2
_MAC_LEN = 8
_SIMA_OK = bytes.fromhex("3007A0053003800100")  # EUICCResponse { peStatus { PEStatus { status ok(0) } } }


class AuthenticateError(enum.IntEnum):
    invalidCertificate = 1
    invalidSignature = 2
    unsupportedCurve = 3
    noSessionContext = 4
    invalidOid = 5
    euiccChallengeMismatch = 6
    ciPKUnknown = 7
    undefinedError = 127


class DownloadError(enum.IntEnum):
    invalidCertificate = 1
    invalidSignature = 2
    unsupportedCurve = 3
    noSessionContext = 4
    invalidTransactionId = 5
    undefinedError = 127


class BppCommand(enum.IntEnum):
    initialiseSecureChannel = 0
    configureISDP = 1
    storeMetadata = 2
    storeMetadata2 = 3
    replaceSessionKeys = 4
    loadProfileElements = 5


class BppError(enum.IntEnum):
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


class CancelReason(enum.IntEnum):
    endUserRejection = 0
    postponed = 1
    timeout = 2
    pprNotAllowed = 3
    metadataMismatch = 4
    loadBppExecutionError = 5
    undefinedReason = 127


_STAGE_COMMAND = {
    "secured": BppCommand.configureISDP,
    "configured": BppCommand.storeMetadata,
    "metadata": BppCommand.storeMetadata,
    "metadata_done": BppCommand.replaceSessionKeys,
    "keys": BppCommand.loadProfileElements,
    "loading": BppCommand.loadProfileElements,
}


class _Refused(Exception):
    def __init__(self, code: int, why: str) -> None:
        super().__init__(why)
        self.code = code


class _BppFailed(Exception):
    def __init__(self, command: BppCommand, reason: BppError, why: str) -> None:
        super().__init__(why)
        self.command = command
        self.reason = reason


# --- crypto helpers -------------------------------------------------------------------------


def verify_raw_signature(cert: x509.Certificate, signature: bytes, data: bytes) -> bool:
    """Verify an SGP.22 ``r || s`` ECDSA/SHA-256 signature with the certificate's key."""
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or len(signature) % 2:
        return False
    half = len(signature) // 2
    der_sig = encode_dss_signature(
        int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big")
    )
    try:
        key.verify(der_sig, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def _policies(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.CertificatePolicies)
    except x509.ExtensionNotFound:
        return set()
    return {p.policy_identifier for p in ext.value}


def _check_server_cert(
    der: bytes, ci: x509.Certificate, policy: x509.ObjectIdentifier
) -> tuple[x509.Certificate | None, str]:
    """``(certificate, "")`` when it is issued by ``ci``, valid now, P-256 with ``policy``; else why not."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        return None, f"certificate: {exc}"
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        return cert, "curve"
    try:
        cert.verify_directly_issued_by(ci)
    except (ValueError, TypeError, InvalidSignature) as exc:
        return None, f"not issued by the CI: {exc or type(exc).__name__}"
    now = dt.datetime.now(dt.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        return None, f"not valid now ({cert.not_valid_before_utc} .. {cert.not_valid_after_utc})"
    if policy not in _policies(cert):
        return cert, "policy"
    return cert, ""


def _smdp_oid(cert: x509.Certificate) -> bytes:
    """The DER OBJECT IDENTIFIER content of the SM-DP+ OID (the certificate's registeredID)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        oid = san.get_values_for_type(x509.RegisteredID)[0]
    except (x509.ExtensionNotFound, IndexError):
        oid = x509.ObjectIdentifier("2.999")
    arcs = [int(a) for a in oid.dotted_string.split(".")]
    out = bytearray()
    for first in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        value = first
        chunk = [value & 0x7F]
        value >>= 7
        while value:
            chunk.append(0x80 | (value & 0x7F))
            value >>= 7
        out += bytes(reversed(chunk))
    return bytes(out)


def derive_session_keys(
    shared_secret: bytes, key_type: int, key_length: int, host_id: bytes, eid: bytes
) -> tuple[bytes, bytes, bytes]:
    """SGP.22 key derivation (X9.63 KDF, SHA-256): ``(initial MAC chaining value, S-ENC, S-MAC)``."""
    info = bytes([key_type, key_length]) + encode_length(len(host_id)) + host_id
    info += encode_length(len(eid)) + eid
    out = X963KDF(algorithm=hashes.SHA256(), length=3 * key_length, sharedinfo=info).derive(shared_secret)
    return out[:key_length], out[key_length : 2 * key_length], out[2 * key_length :]


def _header(data: bytes) -> tuple[int, int, int]:
    """``(tag, declared length, header size)`` of the TLV that starts ``data`` (it may be cut)."""
    if len(data) < 2:
        raise DerError("TLV header: truncated")
    pos = 1
    tag = data[0]
    if tag & 0x1F == 0x1F:
        while True:
            if pos >= len(data):
                raise DerError("TLV header: truncated tag")
            tag = (tag << 8) | data[pos]
            pos += 1
            if not data[pos - 1] & 0x80:
                break
    if pos >= len(data):
        raise DerError("TLV header: truncated length")
    first = data[pos]
    pos += 1
    if first < 0x80:
        return tag, first, pos
    count = first & 0x7F
    if count == 0 or count > 3 or pos + count > len(data):
        raise DerError(f"TLV header: bad length octets {first:02X}")
    return tag, int.from_bytes(data[pos : pos + count], "big"), pos + count


class Scp03t:
    """The eUICC side of SCP03t (SGP.22 §2.6.4, BSP in v3): C-MAC chaining and AES-CBC decryption.

    Every segment is ``tag | length | payload | C-MAC (8)``; the C-MAC is the first 8 bytes of
    AES-CMAC(S-MAC, MAC chaining value | tag | length | payload), and that full CMAC is the next
    chaining value. Encrypted payloads are AES-CBC under S-ENC with the ICV
    ``AES(S-ENC, block counter)`` (the counter counts segments from 1, MAC-only ones included)
    and ``80 00..`` padding.
    """

    def __init__(self, s_enc: bytes, s_mac: bytes, mac_chaining_value: bytes) -> None:
        self.s_enc = s_enc
        self.s_mac = s_mac
        self.mac_chain = mac_chaining_value
        self.counter = 1

    def unwrap(self, segment: bytes, tag: int, *, encrypted: bool) -> bytes:
        """Check the C-MAC of one segment TLV, decrypt it if ``encrypted``; raise ValueError("mac"|...)."""
        got_tag, length, start = _header(segment)
        if got_tag != tag or start + length != len(segment) or length < _MAC_LEN:
            raise ValueError(f"structure: segment {got_tag:X} of {length} bytes, expected tag {tag:X}")
        body, mac = segment[start:-_MAC_LEN], segment[-_MAC_LEN:]
        cmac = CMAC(algorithms.AES(self.s_mac))
        cmac.update(self.mac_chain + segment[:start] + body)
        full = cmac.finalize()
        if not hmac.compare_digest(full[:_MAC_LEN], mac):
            raise ValueError("mac")
        self.mac_chain = full
        counter = self.counter
        self.counter += 1
        if not encrypted:
            return body
        if not body or len(body) % 16:
            raise ValueError(f"structure: ciphertext of {len(body)} bytes is not whole AES blocks")
        ecb = Cipher(algorithms.AES(self.s_enc), modes.ECB()).encryptor()
        icv = ecb.update(counter.to_bytes(16, "big")) + ecb.finalize()
        dec = Cipher(algorithms.AES(self.s_enc), modes.CBC(icv)).decryptor()
        plain = (dec.update(body) + dec.finalize()).rstrip(b"\x00")
        if not plain or plain[-1] != 0x80:
            raise ValueError("structure: bad padding after decryption")
        return plain[:-1]


@dataclass(frozen=True, slots=True)
class Metadata:
    """What StoreMetadata tells the card about the profile it is loading."""

    iccid: str
    service_provider: str
    name: str
    profile_class: es10.ProfileClass
    notify_to: dict[es10.NotificationEvent, str]

    @classmethod
    def decode(cls, der: bytes) -> Metadata:
        tlv = decode_one(der, context="StoreMetadataRequest")
        if tlv.tag != 0xBF25:
            raise ValueError(f"StoreMetadataRequest: tag {tlv.tag:X}, expected BF25")
        items = {t.tag: t for t in tlv.children()}
        if 0x5A not in items or 0x91 not in items or 0x92 not in items:
            raise ValueError("StoreMetadataRequest: iccid, serviceProviderName or profileName missing")
        klass = es10.ProfileClass.operational
        if 0x95 in items:
            klass = es10.ProfileClass(int.from_bytes(items[0x95].value, "big"))
        notify: dict[es10.NotificationEvent, str] = {}
        if 0xB6 in items:
            for info in items[0xB6].children():
                parts = {t.tag: t.value for t in info.children()}
                bits = es10._bits_decode(parts[0x80], "NotificationConfigurationInformation")
                for bit in bits:
                    notify[es10.NotificationEvent(bit)] = parts[0x81].decode()
        return cls(
            iccid=es10.iccid_from_bcd(items[0x5A].value),
            service_provider=items[0x91].value.decode(),
            name=items[0x92].value.decode(),
            profile_class=klass,
            notify_to=notify,
        )


@dataclass(slots=True)
class _Session:
    transaction_id: bytes
    server_address: str
    dpauth: x509.Certificate
    euicc_signature1: bytes
    dppb: x509.Certificate | None = None
    smdp_signature2: bytes = b""
    ot_key: ec.EllipticCurvePrivateKey | None = None
    stage: str = "authenticated"
    scp: Scp03t | None = None
    remaining: int = 0
    metadata_der: bytearray = field(default_factory=bytearray)
    metadata: Metadata | None = None
    upp: bytearray = field(default_factory=bytearray)
    segments: int = 0


class DownloadFunctions:
    """The download family of ES10b on one simulated card (called under the card's lock)."""

    def __init__(self, card: SimulatedEuicc) -> None:
        self.card = card
        self.session: _Session | None = None
        self.refusals: list[str] = []
        """Every refusal, as ``"<function>: <code name>: <why>"`` (tests and logs read it)."""
        self._ci = x509.load_der_x509_certificate(card.credentials.ci_certificate)

    # --- entry points -----------------------------------------------------------------------

    def handles(self, der: bytes) -> bool:
        if not der:
            return False
        try:
            tag = _header(der)[0]
        except DerError:
            return False
        return tag in DOWNLOAD_TAGS or (tag in BPP_PIECE_TAGS and self._in_bpp())

    def handle(self, der: bytes) -> bytes:
        """Answer one ES10b download request or BPP piece (``b""``: a piece with no answer)."""
        tag = _header(der)[0]
        try:
            if tag == TAG_AUTHENTICATE_SERVER:
                return self._authenticate_server(decode_one(der, context="AuthenticateServer"))
            if tag == TAG_PREPARE_DOWNLOAD:
                return self._prepare_download(decode_one(der, context="PrepareDownload"))
            if tag == TAG_CANCEL_SESSION:
                return self._cancel_session(decode_one(der, context="CancelSession"))
        except DerError as exc:
            self.refusals.append(f"ES10b {tag:X}: malformed (6A80): {exc}")
            raise es10.Es10Error(f"ES10b {tag:X}", str(exc)) from exc
        return self._bpp_piece(tag, der)

    def interrupt(self, why: str) -> None:
        """Drop the session (a reset, or a new AuthenticateServer). A BPP that had begun ends with an
        errorResult ``installFailedDueToInterruption`` as its pending install notification."""
        session = self.session
        if session is None:
            return
        if self._in_bpp():
            command = _STAGE_COMMAND.get(session.stage, BppCommand.loadProfileElements)
            self._fail(session, _BppFailed(command, BppError.installFailedDueToInterruption, why))
        else:
            self._refuse("session", AuthenticateError.undefinedError, f"interrupted before the BPP: {why}")
            self.session = None

    def _in_bpp(self) -> bool:
        return self.session is not None and self.session.stage not in ("authenticated", "prepared")

    def _refuse(self, function: str, code: enum.IntEnum, why: str) -> None:
        self.refusals.append(f"{function}: {code.name}: {why}")

    # --- AuthenticateServer ---------------------------------------------------------------------

    def _authenticate_server(self, request: Tlv) -> bytes:
        items = request.children()
        tags = tuple(t.tag for t in items)
        if tags != (0x30, 0x5F37, 0x04, 0x30, 0xA0):
            raise DerError(f"AuthenticateServerRequest: tags {' '.join(f'{t:X}' for t in tags)}")
        signed1, signature1, ci_pkid, cert_der, ctx = items
        fields = {t.tag: t.value for t in signed1.children()}
        transaction_id = fields.get(0x80, b"")
        challenge = self.card.euicc_challenge
        self.card.euicc_challenge = None  # single use
        self.interrupt("a new AuthenticateServer")
        try:
            if set(fields) != {0x80, 0x81, 0x83, 0x84}:
                raise _Refused(AuthenticateError.undefinedError, "serverSigned1 is incomplete")
            if ci_pkid.value != self.card.credentials.ci_pkid:
                raise _Refused(
                    AuthenticateError.ciPKUnknown, f"CI {ci_pkid.value.hex().upper()} is not known"
                )
            cert, why = _check_server_cert(cert_der.encode(), self._ci, OID_DP_AUTH)
            if cert is None:
                raise _Refused(AuthenticateError.invalidCertificate, why)
            if why == "curve":
                raise _Refused(AuthenticateError.unsupportedCurve, "CERT.DPauth is not on P-256")
            if why == "policy":
                raise _Refused(AuthenticateError.invalidOid, "CERT.DPauth lacks id-rspRole-dp-auth-v2")
            if not verify_raw_signature(cert, signature1.value, signed1.encode()):
                raise _Refused(AuthenticateError.invalidSignature, "serverSignature1 does not verify")
            if challenge is None or not hmac.compare_digest(fields[0x81], challenge):
                raise _Refused(AuthenticateError.euiccChallengeMismatch, "not the challenge this card issued")
        except _Refused as refused:
            self._refuse("AuthenticateServer", AuthenticateError(refused.code), str(refused))
            body = encode_tlv(0x80, transaction_id) + encode_tlv(0x02, encode_int(refused.code))
            return encode_tlv(TAG_AUTHENTICATE_SERVER, encode_tlv(0xA1, body))
        euicc_info2 = self.card.euicc_info2_der()
        signed = encode_tlv(
            0x30,
            encode_tlv(0x80, transaction_id)
            + encode_tlv(0x83, fields[0x83])
            + encode_tlv(0x84, fields[0x84])
            + euicc_info2
            + ctx.encode(),
        )
        creds = self.card.credentials
        signature = creds.sign(signed)
        self.session = _Session(transaction_id, fields[0x83].decode(), cert, signature)
        ok = signed + encode_tlv(0x5F37, signature) + creds.euicc_certificate + creds.eum_certificate
        return encode_tlv(TAG_AUTHENTICATE_SERVER, encode_tlv(0xA0, ok))

    # --- PrepareDownload ------------------------------------------------------------------------

    def _prepare_download(self, request: Tlv) -> bytes:
        items = request.children()
        tags = tuple(t.tag for t in items)
        if tags not in ((0x30, 0x5F37, 0x30), (0x30, 0x5F37, 0x04, 0x30)):
            raise DerError(f"PrepareDownloadRequest: tags {' '.join(f'{t:X}' for t in tags)}")
        signed2, signature2, cert_der = items[0], items[1], items[-1]
        hash_cc = items[2].value if len(items) == 4 else None
        fields = {t.tag: t.value for t in signed2.children()}
        transaction_id = fields.get(0x80, b"")
        session = self.session
        try:
            if session is None:
                raise _Refused(DownloadError.noSessionContext, "no AuthenticateServer before")
            if transaction_id != session.transaction_id:
                raise _Refused(DownloadError.invalidTransactionId, f"transaction {transaction_id.hex()}")
            cert, why = _check_server_cert(cert_der.encode(), self._ci, OID_DP_PB)
            if cert is None or why == "policy":
                raise _Refused(DownloadError.invalidCertificate, why or "CERT.DPpb lacks id-rspRole-dp-pb-v2")
            if why == "curve":
                raise _Refused(DownloadError.unsupportedCurve, "CERT.DPpb is not on P-256")
            data = signed2.encode() + encode_tlv(0x5F37, session.euicc_signature1)
            if not verify_raw_signature(cert, signature2.value, data):
                raise _Refused(DownloadError.invalidSignature, "smdpSignature2 does not verify")
            if fields.get(0x01) == b"\xff" and hash_cc is None:
                raise _Refused(DownloadError.undefinedError, "a confirmation code is required, no hashCc")
        except _Refused as refused:
            self._refuse("PrepareDownload", DownloadError(refused.code), str(refused))
            body = encode_tlv(0x80, transaction_id) + encode_tlv(0x02, encode_int(refused.code))
            return encode_tlv(TAG_PREPARE_DOWNLOAD, encode_tlv(0xA1, body))
        reuse = fields.get(0x5F49)
        if session.ot_key is None or reuse is None or reuse != _public(session.ot_key):
            session.ot_key = ec.generate_private_key(ec.SECP256R1())
        session.dppb = cert
        session.smdp_signature2 = signature2.value
        session.stage = "prepared"
        signed = encode_tlv(0x80, transaction_id) + encode_tlv(0x5F49, _public(session.ot_key))
        if hash_cc is not None:
            signed += encode_tlv(0x04, hash_cc)
        signed_tlv = encode_tlv(0x30, signed)
        signature = self.card.credentials.sign(signed_tlv + signature2.encode())
        return encode_tlv(TAG_PREPARE_DOWNLOAD, encode_tlv(0xA0, signed_tlv + encode_tlv(0x5F37, signature)))

    # --- CancelSession --------------------------------------------------------------------------

    def _cancel_session(self, request: Tlv) -> bytes:
        fields = {t.tag: t.value for t in request.children()}
        session = self.session
        transaction_id = fields.get(0x80, b"")
        if session is None or transaction_id != session.transaction_id or 0x81 not in fields:
            code = DownloadError.invalidTransactionId
            self._refuse("CancelSession", code, f"transaction {transaction_id.hex()} is not the session's")
            return encode_tlv(TAG_CANCEL_SESSION, encode_tlv(0x81, encode_int(code)))
        signed = encode_tlv(
            0x30,
            encode_tlv(0x80, transaction_id)
            + encode_tlv(0x81, _smdp_oid(session.dpauth))
            + encode_tlv(0x82, fields[0x81]),
        )
        self.session = None
        signature = self.card.credentials.sign(signed)
        return encode_tlv(TAG_CANCEL_SESSION, encode_tlv(0xA0, signed + encode_tlv(0x5F37, signature)))

    # --- LoadBoundProfilePackage ----------------------------------------------------------------

    def _bpp_piece(self, tag: int, der: bytes) -> bytes:  # noqa: PLR0911 - one answer per piece
        session = self.session
        if tag == TAG_BPP:
            if session is None or session.stage != "prepared":
                # Without PrepareDownload there is no otSK.EUICC to bind to and no transaction.
                self._refuse("LoadBoundProfilePackage", BppError.invalidTransactionId, "no prepared session")
                raise es10.Es10Error("LoadBoundProfilePackage", "no prepared download session")
        elif session is None or not self._in_bpp():
            raise es10.Es10Error("LoadBoundProfilePackage", f"piece {tag:X} outside a BPP")
        assert session is not None
        command = BppCommand.initialiseSecureChannel
        try:
            if tag == TAG_BPP:
                command = BppCommand.initialiseSecureChannel
                self._initialise_secure_channel(session, der)
                return b""
            if tag == 0xA0:
                command = BppCommand.configureISDP
                self._expect(session, "secured", command)
                plain = self._unwrap_all(session, der, 0x87, command, encrypted=True)
                if decode_one(plain, context="ConfigureISDPRequest").tag != 0xBF24:
                    raise _BppFailed(command, BppError.scp03tStructureError, "not a ConfigureISDPRequest")
                session.stage = "configured"
                return b""
            if tag == 0xA1:
                command = BppCommand.storeMetadata
                self._expect(session, "configured", command)
                _, length, size = _header(der)
                if size != len(der):
                    raise _BppFailed(
                        command, BppError.scp03tStructureError, "A1 must come as its header alone"
                    )
                session.stage, session.remaining = "metadata", length
                return b""
            if tag == 0x88:
                command = BppCommand.storeMetadata
                self._expect(session, "metadata", command)
                session.metadata_der += self._unwrap(session, der, 0x88, command, encrypted=False)
                session.remaining -= len(der)
                if session.remaining < 0:
                    raise _BppFailed(command, BppError.scp03tStructureError, "88 segments overrun A1")
                if session.remaining == 0:
                    self._store_metadata(session)
                return b""
            if tag == 0xA2:
                command = BppCommand.replaceSessionKeys
                self._expect(session, "metadata_done", command)
                plain = self._unwrap_all(session, der, 0x87, command, encrypted=True)
                keys = decode_one(plain, context="ReplaceSessionKeysRequest")
                parts = {t.tag: t.value for t in keys.children()} if keys.tag == 0xBF26 else {}
                if set(parts) != {0x80, 0x81, 0x82} or any(len(v) != 16 for v in parts.values()):
                    raise _BppFailed(
                        command, BppError.scp03tStructureError, "not a ReplaceSessionKeysRequest"
                    )
                session.scp = Scp03t(parts[0x81], parts[0x82], parts[0x80])
                session.stage = "keys"
                return b""
            if tag == 0xA3:
                command = BppCommand.loadProfileElements
                if session.stage not in ("metadata_done", "keys"):
                    raise _BppFailed(command, BppError.scp03tStructureError, f"A3 after {session.stage}")
                _, length, size = _header(der)
                if size != len(der):
                    raise _BppFailed(
                        command, BppError.scp03tStructureError, "A3 must come as its header alone"
                    )
                limit = self.card.config.memory_b
                used = self.card.used_memory_b()
                if limit is not None and used + length > limit:
                    raise _BppFailed(
                        command,
                        BppError.installFailedDueToInsufficientMemoryForProfile,
                        f"{length} bytes of profile elements, {limit - used} of {limit} free",
                    )
                session.stage, session.remaining = "loading", length
                return b""
            # tag == 0x86
            command = BppCommand.loadProfileElements
            self._expect(session, "loading", command)
            session.upp += self._unwrap(session, der, 0x86, command, encrypted=True)
            session.segments += 1
            session.remaining -= len(der)
            if session.remaining < 0:
                raise _BppFailed(command, BppError.scp03tStructureError, "86 segments overrun A3")
            if session.remaining == 0:
                return self._install(session)
            return b""
        except _BppFailed as failed:
            return self._fail(session, failed)
        except (DerError, ValueError, es10.Es10Error) as exc:
            return self._fail(session, _BppFailed(command, BppError.scp03tStructureError, str(exc)))

    @staticmethod
    def _expect(session: _Session, stage: str, command: BppCommand) -> None:
        if session.stage != stage:
            raise _BppFailed(command, BppError.scp03tStructureError, f"{command.name} after {session.stage}")

    def _initialise_secure_channel(self, session: _Session, der: bytes) -> None:
        command = BppCommand.initialiseSecureChannel
        _, _, size = _header(der)
        isc = decode_one(der[size:], context="InitialiseSecureChannelRequest")
        if isc.tag != TAG_ISC:
            raise _BppFailed(
                command, BppError.incorrectInputValues, f"BF36 starts with {isc.tag:X}, not BF23"
            )
        items = isc.children()
        if tuple(t.tag for t in items) != (0x82, 0x80, 0xA6, 0x5F49, 0x5F37):
            raise _BppFailed(command, BppError.incorrectInputValues, "InitialiseSecureChannelRequest shape")
        op, tid, crt, otpk, sign = items
        if tid.value != session.transaction_id:
            raise _BppFailed(command, BppError.invalidTransactionId, f"transaction {tid.value.hex()}")
        if op.value != b"\x01":
            raise _BppFailed(command, BppError.unsupportedRemoteOperationType, f"remoteOpId {op.value.hex()}")
        crt_fields = {t.tag: t.value for t in crt.children()}
        if crt_fields.get(0x80) != b"\x88" or crt_fields.get(0x81) != b"\x10" or 0x84 not in crt_fields:
            raise _BppFailed(command, BppError.unsupportedCrtValues, f"CRT {crt.value.hex().upper()}")
        assert session.dppb is not None and session.ot_key is not None
        signed = b"".join(t.encode() for t in items[:4]) + encode_tlv(0x5F49, _public(session.ot_key))
        if not verify_raw_signature(session.dppb, sign.value, signed):
            raise _BppFailed(command, BppError.invalidSignature, "smdpSign does not verify with CERT.DPpb")
        try:
            smdp_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), otpk.value)
        except ValueError as exc:
            raise _BppFailed(command, BppError.incorrectInputValues, f"otPK.DP.ECKA: {exc}") from exc
        shared = session.ot_key.exchange(ec.ECDH(), smdp_key)
        mcv, s_enc, s_mac = derive_session_keys(shared, 0x88, 16, crt_fields[0x84], self.card.eid)
        session.scp = Scp03t(s_enc, s_mac, mcv)
        session.ot_key = None  # otSK.EUICC.ECKA is deleted once used
        session.stage = "secured"

    def _unwrap(
        self, session: _Session, segment: bytes, tag: int, command: BppCommand, *, encrypted: bool
    ) -> bytes:
        assert session.scp is not None
        try:
            return session.scp.unwrap(segment, tag, encrypted=encrypted)
        except ValueError as exc:
            if str(exc) == "mac":
                raise _BppFailed(
                    command, BppError.scp03tSecurityError, f"C-MAC of a {tag:X} segment"
                ) from exc
            raise _BppFailed(command, BppError.scp03tStructureError, str(exc)) from exc

    def _unwrap_all(
        self, session: _Session, der: bytes, tag: int, command: BppCommand, *, encrypted: bool
    ) -> bytes:
        outer = decode_one(der, context=command.name)
        segments = decode_seq(outer.value, context=command.name)
        if not segments:
            raise _BppFailed(command, BppError.scp03tStructureError, "no segments")
        return b"".join(
            self._unwrap(session, s.encode(), tag, command, encrypted=encrypted) for s in segments
        )

    def _store_metadata(self, session: _Session) -> None:
        command = BppCommand.storeMetadata
        try:
            meta = Metadata.decode(bytes(session.metadata_der))
        except (DerError, ValueError, KeyError, es10.Es10Error) as exc:
            raise _BppFailed(command, BppError.incorrectInputValues, f"StoreMetadata: {exc}") from exc
        session.metadata = meta
        if any(p.iccid == meta.iccid for p in self.card.profiles):
            raise _BppFailed(
                command,
                BppError.installFailedDueToIccidAlreadyExistsOnEuicc,
                f"ICCID {meta.iccid} is on the card",
            )
        session.stage = "metadata_done"

    def _install(self, session: _Session) -> bytes:
        command = BppCommand.loadProfileElements
        meta = session.metadata
        assert meta is not None
        upp = bytes(session.upp)
        try:
            elements = decode_seq(upp, context="profile elements")
        except DerError as exc:
            raise _BppFailed(command, BppError.installFailedDueToPEProcessingError, str(exc)) from exc
        if not elements or elements[0].tag != 0xA0:
            raise _BppFailed(command, BppError.installFailedDueToPEProcessingError, "no ProfileHeader first")
        header = {t.tag: t.value for t in elements[0].children()}
        header_iccid = header.get(0x83, b"").hex().upper().rstrip("F")
        if header_iccid != meta.iccid:
            raise _BppFailed(
                command,
                BppError.installFailedDueToDataMismatch,
                f"ProfileHeader ICCID {header_iccid} is not the metadata's {meta.iccid}",
            )
        profile = self.card.install_profile(meta, len(upp), len(elements))
        body = encode_tlv(0x4F, profile.aid) + encode_tlv(0x04, _SIMA_OK)
        self.session = None
        return self._result(session, meta.iccid, encode_tlv(0xA0, body))

    def _fail(self, session: _Session, failed: _BppFailed) -> bytes:
        self._refuse("LoadBoundProfilePackage", failed.reason, f"{failed.command.name}: {failed}")
        self.session = None
        body = encode_tlv(0x80, encode_int(failed.command)) + encode_tlv(0x81, encode_int(failed.reason))
        iccid = session.metadata.iccid if session.metadata is not None else None
        return self._result(session, iccid, encode_tlv(0xA1, body))

    def _result(self, session: _Session, iccid: str | None, final: bytes) -> bytes:
        seq = self.card.next_seq
        metadata = es10.NotificationMetadata(
            seq, es10.NotificationEvent.install, session.server_address, iccid
        )
        assert session.dppb is not None
        data = encode_tlv(
            TAG_PIR_DATA,
            encode_tlv(0x80, session.transaction_id)
            + metadata.encode()
            + encode_tlv(0x06, _smdp_oid(session.dppb))
            + encode_tlv(0xA2, final),
        )
        pir = encode_tlv(TAG_PIR, data + encode_tlv(0x5F37, self.card.credentials.sign(data)))
        self.card.add_install_notification(metadata, pir)
        return pir


def _public(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
