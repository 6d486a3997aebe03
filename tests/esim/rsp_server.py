"""A minimal SM-DP+ side for the card's unit tests: it builds what ES9+/ES8+ hand the card.

Written for the tests, independently of ``sim/euicc_rsp.py``: the signed structures are encoded
with asn1tools from the shared SGP.22 ASN.1 (``$TCU_SHARED_DATA/esim/sgp22-v2.2.2``), the SCP03t
sending side (encrypt, C-MAC) and the key derivation are its own. A test PKI (:class:`Pki`) has a
CI with DPauth and DPpb (the SGP.22 policy OIDs, registeredID ``2.999.10``), an EUM and the eUICC.
The real SM-DP+ (osmo-smdpp) is run in ``tests/interop/test_interop_lpac_download.py``.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asn1tools
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.cmac import CMAC
from cryptography.hazmat.primitives.kdf.x963kdf import X963KDF
from cryptography.x509.oid import NameOID

from sim.euicc import CardCredentials
from tcu.esim import der

_ASN = Path(os.environ["TCU_SHARED_DATA"], "esim", "sgp22-v2.2.2")
REF = asn1tools.compile_files(
    [str(_ASN / "rsp.asn"), str(_ASN / "PKIXExplicit88.asn"), str(_ASN / "PKIXImplicit88.asn")], codec="der"
)
POLICY_DP_AUTH = "2.23.146.1.2.1.4"
POLICY_DP_PB = "2.23.146.1.2.1.5"
EID = "89049032123451234512345678901235"


def tlv(tag: int, value: bytes) -> bytes:
    return der.encode_tlv(tag, value)


def sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool,
    policy: str | None = None,
    days: tuple[int, int] = (-1, 3650),
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer if issuer is not None else (name, key)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + dt.timedelta(days=days[0]))
        .not_valid_after(now + dt.timedelta(days=days[1]))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if policy is not None:
        builder = builder.add_extension(
            x509.CertificatePolicies([x509.PolicyInformation(x509.ObjectIdentifier(policy), None)]),
            critical=True,
        ).add_extension(
            x509.SubjectAlternativeName([x509.RegisteredID(x509.ObjectIdentifier("2.999.10"))]),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


@dataclass
class Pki:
    """A test CI with an SM-DP+ (DPauth, DPpb) and a card (EUM, eUICC)."""

    ci_key: ec.EllipticCurvePrivateKey
    ci: x509.Certificate
    dpauth_key: ec.EllipticCurvePrivateKey
    dpauth: x509.Certificate
    dppb_key: ec.EllipticCurvePrivateKey
    dppb: x509.Certificate
    credentials: CardCredentials

    @classmethod
    def generate(cls) -> Pki:
        keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(5)]
        ci = _cert("Test CI", keys[0], None, ca=True)
        under_ci = (ci.subject, keys[0])
        dpauth = _cert("smdp auth", keys[1], under_ci, ca=False, policy=POLICY_DP_AUTH)
        dppb = _cert("smdp pb", keys[2], under_ci, ca=False, policy=POLICY_DP_PB)
        eum = _cert("Test EUM", keys[3], under_ci, ca=True)
        euicc = _cert(f"eUICC {EID}", keys[4], (eum.subject, keys[3]), ca=False)
        ski = ci.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        credentials = CardCredentials(ski, _der(ci), _der(eum), _der(euicc), keys[4])
        return cls(keys[0], ci, keys[1], dpauth, keys[2], dppb, credentials)

    def issue(
        self, subject: str, policy: str, *, days: tuple[int, int] = (-1, 3650)
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        return key, _cert(subject, key, (self.ci.subject, self.ci_key), ca=False, policy=policy, days=days)


def derive(shared: bytes, host_id: bytes, eid: bytes) -> tuple[bytes, bytes, bytes]:
    info = bytes([0x88, 0x10, len(host_id)]) + host_id + bytes([len(eid)]) + eid
    out = X963KDF(algorithm=hashes.SHA256(), length=48, sharedinfo=info).derive(shared)
    return out[:16], out[16:32], out[32:]


class Sender:
    """The sending side of SCP03t: encrypt (AES-CBC, ICV from the block counter) and C-MAC."""

    def __init__(self, s_enc: bytes, s_mac: bytes, mcv: bytes) -> None:
        self.s_enc, self.s_mac, self.mcv, self.counter = s_enc, s_mac, mcv, 1

    def _mac(self, tag: int, payload: bytes) -> bytes:
        head = bytes([tag]) + der.encode_length(len(payload) + 8)
        cmac = CMAC(algorithms.AES(self.s_mac))
        cmac.update(self.mcv + head + payload)
        self.mcv = cmac.finalize()
        self.counter += 1
        return head + payload + self.mcv[:8]

    def encrypt(self, tag: int, plain: bytes, segment: int = 1000) -> list[bytes]:
        out = []
        for start in range(0, len(plain), segment):
            chunk = plain[start : start + segment] + b"\x80"
            chunk += bytes(-len(chunk) % 16)
            ecb = Cipher(algorithms.AES(self.s_enc), modes.ECB()).encryptor()
            icv = ecb.update(self.counter.to_bytes(16, "big")) + ecb.finalize()
            enc = Cipher(algorithms.AES(self.s_enc), modes.CBC(icv)).encryptor()
            out.append(self._mac(tag, enc.update(chunk) + enc.finalize()))
        return out

    def mac_only(self, tag: int, plain: bytes, segment: int = 1000) -> list[bytes]:
        return [self._mac(tag, plain[i : i + segment]) for i in range(0, len(plain), segment)]


def split_bpp(bpp: bytes) -> list[bytes]:
    """The pieces an LPA sends (SGP.22 §2.5.5): BF36 header + BF23, A0, A1 header, each 88,
    A2, A3 header, each 86."""
    outer = der.decode_one(bpp)
    head = bpp[: len(bpp) - len(outer.value)]
    parts = der.decode_seq(outer.value)
    pieces = [head + parts[0].encode()]
    for part in parts[1:]:
        if part.tag in (0xA1, 0xA3):
            encoded = part.encode()
            pieces.append(encoded[: len(encoded) - len(part.value)])
            pieces.extend(t.encode() for t in der.decode_seq(part.value))
        else:
            pieces.append(part.encode())
    return pieces


def iccid_bcd(iccid: str) -> bytes:
    digits = iccid + "F" * (20 - len(iccid))
    return bytes(int(digits[i + 1] + digits[i], 16) for i in range(0, 20, 2))


def make_upp(iccid: str, elements: int = 6, size: int = 400) -> bytes:
    """A profile package: a ProfileHeader (ICCID in plain hex, as TS.48 packages have it) and more
    elements of ``size`` bytes."""
    header = (
        tlv(0x80, b"\x02") + tlv(0x81, b"\x03") + tlv(0x83, bytes.fromhex(iccid + "F" * (20 - len(iccid))))
    )
    out = tlv(0xA0, header)
    for i in range(elements - 1):
        out += tlv(0xA1 + i % 5, tlv(0x04, os.urandom(size)))
    return out


@dataclass
class SmdpSide:
    """One download's server side; each step returns the request DER for the card."""

    pki: Pki
    address: str = "smdp.test.example"
    iccid: str = "89000123456789012341"
    name: str = "Test profile"
    upp: bytes = b""
    transaction_id: bytes = field(default_factory=lambda: os.urandom(16))
    server_challenge: bytes = field(default_factory=lambda: os.urandom(16))
    euicc_signature1: bytes = b""
    smdp_signature2: bytes = b""
    euicc_otpk: bytes = b""

    def authenticate_server(
        self,
        euicc_challenge: bytes,
        *,
        cert: x509.Certificate | None = None,
        key: ec.EllipticCurvePrivateKey | None = None,
        ci_pkid: bytes | None = None,
        tamper_signature: bool = False,
    ) -> bytes:
        signed1 = REF.encode(
            "ServerSigned1",
            {
                "transactionId": self.transaction_id,
                "euiccChallenge": euicc_challenge,
                "serverAddress": self.address,
                "serverChallenge": self.server_challenge,
            },
        )
        signature = sign(key or self.pki.dpauth_key, signed1)
        if tamper_signature:
            signature = bytes([signature[0] ^ 1]) + signature[1:]
        ctx = REF.encode(
            "CtxParams1",
            ("ctxParamsForCommonAuthentication", {"matchingId": "MID-1", "deviceInfo": {
                "tac": bytes.fromhex("35290611"), "deviceCapabilities": {}}}),
        )  # fmt: skip
        pkid = ci_pkid if ci_pkid is not None else self.pki.credentials.ci_pkid
        body = signed1 + tlv(0x5F37, signature) + tlv(0x04, pkid) + _der(cert or self.pki.dpauth) + ctx
        return tlv(0xBF38, body)

    def take_authenticate_response(self, response: bytes) -> dict[str, Any]:
        kind, value = REF.decode("AuthenticateServerResponse", response)
        assert REF.encode("AuthenticateServerResponse", (kind, value)) == response
        if kind == "authenticateResponseOk":
            self.euicc_signature1 = value["euiccSignature1"]
        return {"kind": kind, **value}

    def prepare_download(
        self,
        *,
        transaction_id: bytes | None = None,
        cert: x509.Certificate | None = None,
        key: ec.EllipticCurvePrivateKey | None = None,
        tamper_signature: bool = False,
    ) -> bytes:
        signed2 = REF.encode(
            "SmdpSigned2", {"transactionId": transaction_id or self.transaction_id, "ccRequiredFlag": False}
        )
        signature = sign(key or self.pki.dppb_key, signed2 + tlv(0x5F37, self.euicc_signature1))
        if tamper_signature:
            signature = bytes([signature[0] ^ 1]) + signature[1:]
        self.smdp_signature2 = tlv(0x5F37, signature)
        return tlv(0xBF21, signed2 + self.smdp_signature2 + _der(cert or self.pki.dppb))

    def take_prepare_response(self, response: bytes) -> dict[str, Any]:
        kind, value = REF.decode("PrepareDownloadResponse", response)
        assert REF.encode("PrepareDownloadResponse", (kind, value)) == response
        if kind == "downloadResponseOk":
            self.euicc_otpk = value["euiccSigned2"]["euiccOtpk"]
        return {"kind": kind, **value}

    def metadata(self, iccid: str | None = None) -> bytes:
        return REF.encode(
            "StoreMetadataRequest",
            {
                "iccid": iccid_bcd(iccid or self.iccid),
                "serviceProviderName": "Test SP",
                "profileName": self.name,
                "profileClass": 0,
                "notificationConfigurationInfo": [
                    {"profileManagementOperation": (b"\x40", 2), "notificationAddress": self.address}
                ],
            },
        )

    def bpp(
        self,
        *,
        transaction_id: bytes | None = None,
        key_type: int = 0x88,
        tamper_signature: bool = False,
        replace_keys: bool = True,
        metadata_iccid: str | None = None,
    ) -> list[bytes]:
        upp = self.upp or make_upp(self.iccid)
        ot = ec.generate_private_key(ec.SECP256R1())
        ot_pk = ot.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        host_id = b"test-host"
        objects = (
            tlv(0x82, b"\x01")
            + tlv(0x80, transaction_id or self.transaction_id)
            + tlv(0xA6, tlv(0x80, bytes([key_type])) + tlv(0x81, b"\x10") + tlv(0x84, host_id))
            + tlv(0x5F49, ot_pk)
        )
        smdp_sign = sign(self.pki.dppb_key, objects + tlv(0x5F49, self.euicc_otpk))
        if tamper_signature:
            smdp_sign = bytes([smdp_sign[0] ^ 1]) + smdp_sign[1:]
        isc = tlv(0xBF23, objects + tlv(0x5F37, smdp_sign))
        peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), self.euicc_otpk)
        mcv, s_enc, s_mac = derive(ot.exchange(ec.ECDH(), peer), host_id, bytes.fromhex(EID))
        sender = Sender(s_enc, s_mac, mcv)
        body = isc + tlv(0xA0, b"".join(sender.encrypt(0x87, REF.encode("ConfigureISDPRequest", {}))))
        body += tlv(0xA1, b"".join(sender.mac_only(0x88, self.metadata(metadata_iccid), segment=40)))
        if replace_keys:
            ppk = (os.urandom(16), os.urandom(16), os.urandom(16))
            rsk = REF.encode(
                "ReplaceSessionKeysRequest",
                {"initialMacChainingValue": ppk[0], "ppkEnc": ppk[1], "ppkCmac": ppk[2]},
            )
            body += tlv(0xA2, b"".join(sender.encrypt(0x87, rsk)))
            sender = Sender(ppk[1], ppk[2], ppk[0])
        body += tlv(0xA3, b"".join(sender.encrypt(0x86, upp)))
        return split_bpp(tlv(0xBF36, body))
