"""A simulated eUICC that answers command APDUs the way a card does.

:class:`SimulatedEuicc` takes a command APDU and returns response data + SW1 SW2:

* ``MANAGE CHANNEL`` (INS 70) opens (P1 00) and closes (P1 80) logical channels 1-3.
* ``SELECT`` (INS A4, P1 04) by AID; only the ISD-R is selectable (else ``6A82``).
* ``STORE DATA`` (INS E2) carries ES10 requests: P1 ``11`` more blocks, ``91`` last block,
  P2 the block number from 0. Blocks are reassembled per channel; a block out of order
  answers ``6A86`` and discards the partial request. Data without ISD-R selected: ``6985``.
* Responses longer than ``max_response_b`` (256) - or every response when
  ``always_chain`` is set - are announced with ``61xx`` and fetched with ``GET RESPONSE``
  (INS C0).
* ES10 processing keeps real card rules: exactly one profile is enabled at a time
  (enabling B while A is enabled disables A), result codes ``iccidOrAidNotFound``,
  ``profileNotInDisabledState``, ``profileNotInEnabledState``, ``catBusy`` (injectable),
  notifications with rising sequence numbers on enable / disable / delete (listed, and
  retrieved signed with RetrieveNotificationsList), nicknames, eUICCMemoryReset,
  GetEuiccInfo1/2, GetEuiccChallenge, EuiccConfiguredAddresses, SetDefaultDpAddress and
  GetRAT, and the download family (AuthenticateServer, PrepareDownload, the bound profile
  package's pieces, CancelSession: :mod:`sim.euicc_rsp`). Enable/disable with refreshFlag TRUE
  answer ``9110`` (REFRESH pending). A downloaded profile's notifications go to the addresses
  its metadata names; the install notification is the signed ProfileInstallationResult.

Fault injection: :attr:`SimulatedEuicc.cat_busy`, :meth:`inject_sw` (e.g. ``6F00`` for the
next N ES10 commands), :meth:`inject_truncation` (the next N responses lose their SW),
:attr:`SimulatedEuicc.mute` (the card stops answering: ``transmit`` raises ``TimeoutError``).

:class:`EuiccTransport` is the in-process :class:`tcu.esim.session.ApduTransport` for unit
tests. This module imports only the standard library, ``cryptography`` and ``tcu``.

The card's identity (:class:`CardCredentials`) is a real certificate chain: a test CI, an
EUM certificate signed by it and the eUICC certificate signed by the EUM, all ECDSA P-256
(generated once per process unless given). EUICCInfo1/2 list the CI's 20-byte
SubjectKeyIdentifier as the CI public key identifier for verification and signing, and
notifications are signed with the eUICC key (SGP.22 ``r || s``).
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from sim.euicc_rsp import DownloadFunctions, Metadata
from tcu.errors import EsimError
from tcu.esim import es10
from tcu.esim.der import Tlv, encode_tlv
from tcu.esim.session import ISDR_AID

__all__ = ["CardCredentials", "EuiccConfig", "EuiccTransport", "ProfileSpec", "SimProfile", "SimulatedEuicc"]

SW_OK = 0x9000
SW_REFRESH_PENDING = 0x9110
SW_WRONG_LENGTH = 0x6700
SW_CONDITIONS = 0x6985
SW_WRONG_DATA = 0x6A80
SW_FUNC_NOT_SUPPORTED = 0x6A81
SW_FILE_NOT_FOUND = 0x6A82
SW_WRONG_P1P2 = 0x6A86
SW_INS_NOT_SUPPORTED = 0x6D00
SW_CLA_NOT_SUPPORTED = 0x6E00
SW_CHANNEL_NOT_SUPPORTED = 0x6881
SW_TECHNICAL = 0x6F00

_MAX_CHANNELS = 4
_SVN = bytes([2, 2, 2])  # SGP.22 v2.2.2


@dataclass(frozen=True, slots=True)
class ProfileSpec:
    """An installed profile at power-on."""

    iccid: str
    name: str
    provider: str
    profile_class: es10.ProfileClass = es10.ProfileClass.operational
    enabled: bool = False
    nickname: str | None = None
    size_b: int = 0


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tcu simulated eUICC (test only)"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


@dataclass(frozen=True, slots=True)
class CardCredentials:
    """The eUICC's key and certificates (DER) and the CI public key identifier it trusts."""

    ci_pkid: bytes
    ci_certificate: bytes
    eum_certificate: bytes
    euicc_certificate: bytes
    euicc_key: ec.EllipticCurvePrivateKey

    @classmethod
    def from_files(
        cls, euicc_certificate: Path, euicc_key: Path, eum_certificate: Path, ci_certificate: Path
    ) -> CardCredentials:
        """Load a set from files (certificates DER or PEM, the key PEM), e.g. pySim's generated set."""

        def cert(path: Path) -> x509.Certificate:
            data = path.read_bytes()
            if data.startswith(b"-----BEGIN"):
                return x509.load_pem_x509_certificate(data)
            return x509.load_der_x509_certificate(data)

        key = serialization.load_pem_private_key(euicc_key.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise EsimError(f"{euicc_key}: not an EC private key")
        ci = cert(ci_certificate)
        ski = ci.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        der = serialization.Encoding.DER
        return cls(
            ski,
            ci.public_bytes(der),
            cert(eum_certificate).public_bytes(der),
            cert(euicc_certificate).public_bytes(der),
            key,
        )

    @classmethod
    def generate(cls, eid: str = "89049032001001234500012345678901") -> CardCredentials:
        """A fresh test chain CI → EUM → eUICC (ECDSA P-256, valid for ten years)."""
        now = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
        keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(3)]
        names = [_name("Test CI"), _name("Test EUM"), _name(f"eUICC {eid}")]
        skis = [x509.SubjectKeyIdentifier.from_public_key(k.public_key()) for k in keys]
        certs: list[x509.Certificate] = []
        for i in range(3):
            issuer = max(i - 1, 0)
            builder = (
                x509.CertificateBuilder()
                .subject_name(names[i])
                .issuer_name(names[issuer])
                .public_key(keys[i].public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now)
                .not_valid_after(now + dt.timedelta(days=3650))
                .add_extension(skis[i], critical=False)
                .add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(skis[issuer]),
                    critical=False,
                )
                .add_extension(x509.BasicConstraints(ca=i < 2, path_length=None), critical=True)
            )
            certs.append(builder.sign(keys[issuer], hashes.SHA256()))
        ders = [c.public_bytes(serialization.Encoding.DER) for c in certs]
        return cls(skis[0].digest, ders[0], ders[1], ders[2], keys[2])

    def sign(self, data: bytes) -> bytes:
        """ECDSA P-256 / SHA-256 signature as SGP.22 carries it: ``r || s``, 32 bytes each."""
        r, s = decode_dss_signature(self.euicc_key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


@functools.cache
def _default_credentials() -> CardCredentials:
    return CardCredentials.generate()


@dataclass(frozen=True, slots=True)
class EuiccConfig:
    eid: str = "89049032001001234500012345678901"
    profiles: tuple[ProfileSpec, ...] = ()
    max_response_b: int = 256
    always_chain: bool = False
    notification_address: str = "smdp.example.com"
    default_dp_address: str | None = None
    root_ds_address: str = "testrootsmds.example.com"
    rat: tuple[es10.PprRule, ...] = (
        es10.PprRule(frozenset({1, 2}), (bytes.fromhex("EEEEEE"),), consent_required=True),
    )
    """Rules Authorisation Table: by default PPR1/PPR2 for any operator (wildcard), with consent."""
    credentials: CardCredentials | None = None
    """The card's certificates and key; ``None``: a test chain generated once per process."""
    memory_b: int | None = None
    """Bytes of profile packages the card can hold (``None``: no limit); profiles configured at
    power-on count with their ``ProfileSpec.size_b``."""


@dataclass(slots=True)
class SimProfile:
    iccid: str
    aid: bytes
    name: str
    provider: str
    profile_class: es10.ProfileClass
    state: es10.ProfileState
    nickname: str | None = None
    size_b: int = 0
    elements: int = 0
    """How many profile elements a downloaded profile had (0 for one configured at power-on)."""
    notify_to: dict[es10.NotificationEvent, str] | None = None
    """Where the notifications of each event go (from the download's metadata; an event not named
    has none); ``None`` (a profile configured at power-on): every event to the card's address."""

    def info(self) -> es10.ProfileInfo:
        return es10.ProfileInfo(
            iccid=self.iccid,
            aid=self.aid,
            state=self.state,
            nickname=self.nickname,
            service_provider=self.provider,
            profile_name=self.name,
            profile_class=self.profile_class,
        )


@dataclass(slots=True)
class _Channel:
    selected: bool = False
    buffer: bytearray = field(default_factory=bytearray)
    next_block: int = 0
    pending: bytes = b""
    pending_sw: int = SW_OK


class SimulatedEuicc:
    """An eUICC with an ISD-R answering ES10 over APDUs; thread-safe (one lock per card)."""

    def __init__(self, config: EuiccConfig) -> None:
        if sum(p.enabled for p in config.profiles) > 1:
            raise EsimError("simulated eUICC: more than one profile configured as enabled")
        self.config = config
        self.eid = bytes.fromhex(config.eid)
        self.credentials = config.credentials or _default_credentials()
        self.default_dp_address = config.default_dp_address
        self.euicc_challenge: bytes | None = None
        self.profiles: list[SimProfile] = [
            SimProfile(
                iccid=p.iccid,
                aid=bytes.fromhex(f"A0000005591010FFFFFFFF89{0x1000 + 0x100 * i:08X}"),
                name=p.name,
                provider=p.provider,
                profile_class=p.profile_class,
                state=es10.ProfileState.enabled if p.enabled else es10.ProfileState.disabled,
                nickname=p.nickname,
                size_b=p.size_b,
            )
            for i, p in enumerate(config.profiles)
        ]
        self._next_isdp = len(self.profiles)
        self.notifications: list[es10.NotificationMetadata] = []
        self.install_results: dict[int, bytes] = {}
        """The signed ProfileInstallationResult (BF37) of each pending install notification, by seq."""
        self.download = DownloadFunctions(self)
        self.next_seq = 1
        self.cat_busy = False
        self.mute = False
        self.es10_log: list[str] = []
        self.refresh_count = 0
        self._injected_sw: list[int] = []
        self._truncations = 0
        self._channels: dict[int, _Channel] = {0: _Channel()}
        self._lock = threading.Lock()

    # --- fault injection --------------------------------------------------------------

    def inject_sw(self, sw: int, count: int = 1) -> None:
        """Answer the next ``count`` ES10 commands (last STORE DATA block) with ``sw``."""
        with self._lock:
            self._injected_sw.extend([sw] * count)

    def inject_truncation(self, count: int = 1) -> None:
        """Drop the status word of the next ``count`` responses."""
        with self._lock:
            self._truncations += count

    # --- observers ---------------------------------------------------------------------

    @property
    def enabled_iccids(self) -> list[str]:
        return [p.iccid for p in self.profiles if p.state is es10.ProfileState.enabled]

    @property
    def enabled(self) -> SimProfile | None:
        return next((p for p in self.profiles if p.state is es10.ProfileState.enabled), None)

    def power_cycle(self) -> None:
        """Reset: all logical channels closed, partial commands dropped, a download interrupted."""
        with self._lock:
            self._channels = {0: _Channel()}
            self.download.interrupt("power cycle")

    # --- APDU level --------------------------------------------------------------------

    def transmit(self, apdu: bytes) -> bytes:
        """Process one command APDU; return response data + SW1 SW2."""
        with self._lock:
            if self.mute:
                raise TimeoutError("simulated eUICC does not answer")
            data, sw = self._dispatch(apdu)
            out = data + sw.to_bytes(2, "big")
            if self._truncations:
                self._truncations -= 1
                return out[:-2]
            return out

    def _dispatch(self, apdu: bytes) -> tuple[bytes, int]:  # noqa: PLR0911 - one answer per case
        if len(apdu) < 4:
            return b"", SW_WRONG_LENGTH
        cla, ins, p1, p2 = apdu[:4]
        body = apdu[4:]
        data = b""
        if len(body) > 1:
            lc = body[0]
            if len(body) not in (1 + lc, 2 + lc):
                return b"", SW_WRONG_LENGTH
            data = body[1 : 1 + lc]
        le = body[0] if len(body) == 1 else None
        if cla & 0x40:
            channel = 4 + (cla & 0x0F)
        elif cla & 0x80 and cla & 0x7C not in (0x00,):
            return b"", SW_CLA_NOT_SUPPORTED
        else:
            channel = cla & 0x03
        state = self._channels.get(channel)
        if state is None:
            return b"", SW_CHANNEL_NOT_SUPPORTED
        if ins == 0x70:
            return self._manage_channel(p1, p2)
        if ins == 0xA4:
            if p1 != 0x04:
                return b"", SW_WRONG_P1P2
            state.selected = data == ISDR_AID
            state.buffer.clear()
            state.next_block = 0
            return (b"", SW_OK) if state.selected else (b"", SW_FILE_NOT_FOUND)
        if ins == 0xC0:
            return self._get_response(state, le or 0)
        if ins == 0xE2:
            return self._store_data(state, p1, p2, data)
        return b"", SW_INS_NOT_SUPPORTED

    def _manage_channel(self, p1: int, p2: int) -> tuple[bytes, int]:
        if p1 == 0x00:
            for number in range(1, _MAX_CHANNELS):
                if number not in self._channels:
                    self._channels[number] = _Channel()
                    return bytes([number]), SW_OK
            return b"", SW_FUNC_NOT_SUPPORTED
        if p1 == 0x80:
            if p2 == 0 or p2 not in self._channels:
                return b"", SW_WRONG_P1P2
            del self._channels[p2]
            return b"", SW_OK
        return b"", SW_WRONG_P1P2

    def _get_response(self, state: _Channel, le: int) -> tuple[bytes, int]:
        if not state.pending:
            return b"", SW_CONDITIONS
        size = le or 256
        chunk, state.pending = state.pending[:size], state.pending[size:]
        if state.pending:
            return chunk, 0x6100 | (min(len(state.pending), 256) & 0xFF)
        return chunk, state.pending_sw

    def _store_data(self, state: _Channel, p1: int, p2: int, data: bytes) -> tuple[bytes, int]:  # noqa: PLR0911 - one answer per case
        if not state.selected:
            return b"", SW_CONDITIONS
        if p1 not in (0x11, 0x91):
            return b"", SW_WRONG_P1P2
        if p2 != state.next_block:
            state.buffer.clear()
            state.next_block = 0
            return b"", SW_WRONG_P1P2
        state.buffer += data
        state.next_block += 1
        if p1 == 0x11:
            return b"", SW_OK
        request = bytes(state.buffer)
        state.buffer.clear()
        state.next_block = 0
        if self._injected_sw:
            return b"", self._injected_sw.pop(0)
        try:
            response, sw = self._es10(request)
        except EsimError:
            return b"", SW_WRONG_DATA
        if response and (self.config.always_chain or len(response) > self.config.max_response_b):
            state.pending, state.pending_sw = response, sw
            return b"", 0x6100 | (min(len(response), 256) & 0xFF)
        return response, sw

    # --- ES10 level ---------------------------------------------------------------------

    def _find(self, ref: es10.ProfileRef) -> SimProfile | None:
        for profile in self.profiles:
            if (ref.iccid is not None and profile.iccid == ref.iccid) or (
                ref.aid is not None and profile.aid == ref.aid
            ):
                return profile
        return None

    def _notify(self, event: es10.NotificationEvent, profile: SimProfile) -> None:
        if profile.notify_to is None:
            address: str | None = self.config.notification_address
        else:
            address = profile.notify_to.get(event)
        if address is None:
            return
        self.notifications.append(es10.NotificationMetadata(self.next_seq, event, address, profile.iccid))
        self.next_seq += 1

    # --- the download family's card side (called by sim.euicc_rsp under the lock) --------------

    def euicc_info2_der(self) -> bytes:
        return self._euicc_info2().encode()

    def used_memory_b(self) -> int:
        return sum(p.size_b for p in self.profiles)

    def install_profile(self, meta: Metadata, size_b: int, elements: int) -> SimProfile:
        """Add a downloaded profile, disabled, in a new ISD-P."""
        aid = bytes.fromhex(f"A0000005591010FFFFFFFF89{0x1000 + 0x100 * self._next_isdp:08X}")
        self._next_isdp += 1
        profile = SimProfile(
            iccid=meta.iccid,
            aid=aid,
            name=meta.name,
            provider=meta.service_provider,
            profile_class=meta.profile_class,
            state=es10.ProfileState.disabled,
            size_b=size_b,
            elements=elements,
            notify_to=dict(meta.notify_to),
        )
        self.profiles.append(profile)
        return profile

    def add_install_notification(self, metadata: es10.NotificationMetadata, result: bytes) -> None:
        """Keep a ProfileInstallationResult as the pending install notification ``metadata.seq``."""
        if metadata.seq != self.next_seq:
            raise EsimError(f"install notification {metadata.seq}, expected {self.next_seq}")
        self.notifications.append(metadata)
        self.install_results[metadata.seq] = result
        self.next_seq += 1

    def _es10(self, der: bytes) -> tuple[bytes, int]:  # noqa: PLR0911 - one answer per case
        if self.download.handles(der):
            self.es10_log.append(f"ES10b {der[:2].hex().upper()}")
            return self.download.handle(der), SW_OK
        request = es10.decode_request(der)
        self.es10_log.append(type(request).__name__)
        sw = SW_OK
        if isinstance(request, es10.GetEidRequest):
            return es10.GetEidResponse(self.eid).encode(), sw
        if isinstance(request, es10.GetEuiccInfo2Request):
            return self._euicc_info2().encode(), sw
        if isinstance(request, es10.GetProfilesInfoRequest):
            if request.search is not None:
                found = self._find(request.search)
                selected = [found] if found else []
            elif request.profile_class is not None:
                selected = [p for p in self.profiles if p.profile_class == request.profile_class]
            else:
                selected = list(self.profiles)
            return es10.GetProfilesInfoResponse(profiles=tuple(p.info() for p in selected)).encode(), sw
        if isinstance(request, es10.EnableProfileRequest):
            result = self._enable(request.ref)
            if result is es10.EnableResult.ok and request.refresh:
                self.refresh_count += 1
                sw = SW_REFRESH_PENDING
            return es10.EnableProfileResponse(result).encode(), sw
        if isinstance(request, es10.DisableProfileRequest):
            dresult = self._disable(request.ref)
            if dresult is es10.DisableResult.ok and request.refresh:
                self.refresh_count += 1
                sw = SW_REFRESH_PENDING
            return es10.DisableProfileResponse(dresult).encode(), sw
        if isinstance(request, es10.DeleteProfileRequest):
            return es10.DeleteProfileResponse(self._delete(request.ref)).encode(), sw
        if isinstance(request, es10.SetNicknameRequest):
            profile = self._find(es10.ProfileRef(iccid=request.iccid))
            if profile is None:
                return es10.SetNicknameResponse(es10.SetNicknameResult.iccidNotFound).encode(), sw
            profile.nickname = request.nickname
            return es10.SetNicknameResponse(es10.SetNicknameResult.ok).encode(), sw
        if isinstance(request, es10.EuiccMemoryResetRequest):
            return es10.EuiccMemoryResetResponse(self._memory_reset(request)).encode(), sw
        if isinstance(request, es10.GetEuiccInfo1Request):
            pkids = (self.credentials.ci_pkid,)
            return es10.EuiccInfo1(_SVN, pkids, pkids).encode(), sw
        if isinstance(request, es10.GetEuiccChallengeRequest):
            self.euicc_challenge = os.urandom(16)
            return es10.GetEuiccChallengeResponse(self.euicc_challenge).encode(), sw
        if isinstance(request, es10.EuiccConfiguredAddressesRequest):
            addresses = es10.EuiccConfiguredAddressesResponse(
                self.config.root_ds_address, self.default_dp_address
            )
            return addresses.encode(), sw
        if isinstance(request, es10.SetDefaultDpAddressRequest):
            self.default_dp_address = request.address or None
            return es10.SetDefaultDpAddressResponse(es10.SetDefaultDpAddressResult.ok).encode(), sw
        if isinstance(request, es10.GetRatRequest):
            return es10.GetRatResponse(self.config.rat).encode(), sw
        if isinstance(request, es10.RetrieveNotificationsListRequest):
            return self._retrieve_notifications(request).encode(), sw
        if isinstance(request, es10.ListNotificationRequest):
            items = tuple(
                n for n in self.notifications if request.events is None or n.event in request.events
            )
            return es10.ListNotificationResponse(notifications=items).encode(), sw
        if not isinstance(request, es10.NotificationSentRequest):
            # Decodable, but not implemented by this card (none left today; kept for new requests).
            raise es10.Es10Error("ES10 request", f"{type(request).__name__} is not supported by this card")
        before = len(self.notifications)
        self.notifications = [n for n in self.notifications if n.seq != request.seq]
        self.install_results.pop(request.seq, None)
        status = (
            es10.NotificationSentResult.ok
            if len(self.notifications) < before
            else (es10.NotificationSentResult.nothingToDelete)
        )
        return es10.NotificationSentResponse(status).encode(), sw

    def _retrieve_notifications(
        self, request: es10.RetrieveNotificationsListRequest
    ) -> es10.RetrieveNotificationsListResponse:
        selected = [
            n
            for n in self.notifications
            if (request.seq is None or n.seq == request.seq)
            and (request.events is None or n.event in request.events)
        ]
        if request.seq is not None and not selected:
            none = es10.RetrieveNotificationsError.noResultAvailable
            return es10.RetrieveNotificationsListResponse(error=none)
        creds = self.credentials
        signed = tuple(
            self.install_results.get(n.seq)
            or es10.other_signed_notification(
                n, creds.sign(n.encode()), creds.euicc_certificate, creds.eum_certificate
            )
            for n in selected
        )
        return es10.RetrieveNotificationsListResponse(notifications=signed)

    def _enable(self, ref: es10.ProfileRef) -> es10.EnableResult:
        profile = self._find(ref)
        if profile is None:
            return es10.EnableResult.iccidOrAidNotFound
        if profile.state is es10.ProfileState.enabled:
            return es10.EnableResult.profileNotInDisabledState
        if self.cat_busy:
            return es10.EnableResult.catBusy
        current = self.enabled
        if current is not None:
            current.state = es10.ProfileState.disabled
            self._notify(es10.NotificationEvent.disable, current)
        profile.state = es10.ProfileState.enabled
        self._notify(es10.NotificationEvent.enable, profile)
        return es10.EnableResult.ok

    def _disable(self, ref: es10.ProfileRef) -> es10.DisableResult:
        profile = self._find(ref)
        if profile is None:
            return es10.DisableResult.iccidOrAidNotFound
        if profile.state is not es10.ProfileState.enabled:
            return es10.DisableResult.profileNotInEnabledState
        if self.cat_busy:
            return es10.DisableResult.catBusy
        profile.state = es10.ProfileState.disabled
        self._notify(es10.NotificationEvent.disable, profile)
        return es10.DisableResult.ok

    def _delete(self, ref: es10.ProfileRef) -> es10.DeleteResult:
        profile = self._find(ref)
        if profile is None:
            return es10.DeleteResult.iccidOrAidNotFound
        if profile.state is es10.ProfileState.enabled:
            return es10.DeleteResult.profileNotInDisabledState
        self.profiles.remove(profile)
        self._notify(es10.NotificationEvent.delete, profile)
        return es10.DeleteResult.ok

    def _memory_reset(self, request: es10.EuiccMemoryResetRequest) -> es10.MemoryResetResult:
        if self.cat_busy:
            return es10.MemoryResetResult.catBusy
        doomed = [
            p
            for p in self.profiles
            if (request.delete_operational and p.profile_class is es10.ProfileClass.operational)
            or (request.delete_field_loaded_test and p.profile_class is es10.ProfileClass.test)
        ]
        reset_dp = request.reset_default_smdp and self.default_dp_address is not None
        if not doomed and not reset_dp:
            return es10.MemoryResetResult.nothingToDelete
        for profile in doomed:
            self.profiles.remove(profile)
        if request.reset_default_smdp:
            self.default_dp_address = None
        return es10.MemoryResetResult.ok

    def _ci_pkid_list(self) -> bytes:
        """SEQUENCE OF SubjectKeyIdentifier content: one OCTET STRING of 20 bytes."""
        return encode_tlv(0x04, self.credentials.ci_pkid)

    def _euicc_info2(self) -> es10.EuiccInfo2:
        return es10.EuiccInfo2(
            items=(
                Tlv(0x81, bytes([2, 3, 1])),
                Tlv(0x82, _SVN),
                Tlv(0x83, bytes([1, 0, 0])),
                Tlv(0x84, bytes.fromhex("810100820400062824830400001922")),
                Tlv(0x85, bytes.fromhex("067F36C0")),
                Tlv(0x88, bytes.fromhex("0490")),
                Tlv(0xA9, self._ci_pkid_list()),
                Tlv(0xAA, self._ci_pkid_list()),
                Tlv(0x04, bytes([1, 0, 0])),
                Tlv(0x0C, b"SIM-TCU-0001"),
            )
        )


class EuiccTransport:
    """In-process :class:`~tcu.esim.session.ApduTransport` over a :class:`SimulatedEuicc`.

    ``open_channel`` sends MANAGE CHANNEL and SELECT; ``transmit`` patches the channel
    number into CLA like a modem does. Calls complete immediately (no I/O).
    """

    def __init__(self, card: SimulatedEuicc) -> None:
        self.card = card

    async def open_channel(self, aid: bytes) -> int:
        answer = self.card.transmit(bytes([0x00, 0x70, 0x00, 0x00, 0x01]))
        if len(answer) != 3 or answer[-2:] != b"\x90\x00":
            raise EsimError(f"MANAGE CHANNEL open: card answered {answer.hex().upper()}")
        channel = answer[0]
        select = bytes([channel, 0xA4, 0x04, 0x00, len(aid)]) + aid
        answer = self.card.transmit(select)
        if answer[-2:] != b"\x90\x00":
            self.card.transmit(bytes([0x00, 0x70, 0x80, channel]))
            raise EsimError(f"SELECT {aid.hex().upper()}: card answered {answer.hex().upper()}")
        return channel

    async def transmit(self, handle: int, apdu: bytes) -> bytes:
        return self.card.transmit(bytes([(apdu[0] & 0xFC) | handle]) + apdu[1:])

    async def close_channel(self, handle: int) -> None:
        self.card.transmit(bytes([0x00, 0x70, 0x80, handle]))
