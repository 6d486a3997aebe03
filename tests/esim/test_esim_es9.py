"""The ES9+ client against a real SM-DP+ (osmo-smdpp on loopback, TLS chaining to its generated CI).

InitiateAuthentication needs no card: the client sends the EUICCInfo1 a card with the generated CI
would send. Each refusal is shown: the server's own status codes, a CA that is not the CI, a name the
certificate does not carry (an activation code naming another SM-DP+), and a link that is not there.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from loopback import free_port
from smdpp_server import SmdpPlus

from tcu.errors import EsimError, InputError
from tcu.esim import es10, es10b
from tcu.esim.es9 import (
    Es9CertificateError,
    Es9Client,
    Es9Config,
    Es9LinkError,
    Es9StatusError,
    parse_activation_code,
)


def _config(smdpp: SmdpPlus, ca: Path | None = None) -> Es9Config:
    return Es9Config(
        ca_file=ca or smdpp.tree.ci_certificate, connect_to=(smdpp.host, smdpp.port), timeout_s=10
    )


def _info1(smdpp: SmdpPlus) -> bytes:
    pkid = smdpp.tree.ci_pkid()
    return es10.EuiccInfo1(bytes([2, 2, 2]), (pkid,), (pkid,)).encode()


def test_activation_codes() -> None:
    code = parse_activation_code("LPA:1$testsmdpplus1.example.com$TS48v4_SAIP2.3_NoBERTLV")
    assert (code.smdp_address, code.matching_id, code.cc_required) == (
        "testsmdpplus1.example.com",
        "TS48v4_SAIP2.3_NoBERTLV",
        False,
    )
    assert parse_activation_code("1$smdp.example.com$X$1.2.3$1").cc_required
    for bad in ("LPA:2$smdp$X", "LPA:1$smdp.example.com", "LPA:1$smdp example.com$X", "LPA:1$a/b$X", ""):
        with pytest.raises(InputError, match=r"activation code"):
            parse_activation_code(bad)


async def test_initiate_authentication_over_verified_tls(smdpp: SmdpPlus) -> None:
    client = Es9Client(smdpp.address, _config(smdpp))
    challenge = os.urandom(16)
    answer = await client.initiate_authentication(challenge, _info1(smdpp))
    signed = es10b.ServerSigned1.decode(answer.server_signed1)
    assert signed.euicc_challenge == challenge and signed.server_address == smdpp.address
    assert signed.transaction_id.hex().upper() == answer.transaction_id
    assert answer.euicc_ci_pkid_to_be_used == b"\x04\x14" + smdpp.tree.ci_pkid()
    assert answer.server_signature1[:3] == bytes.fromhex("5F3740")
    x509.load_der_x509_certificate(answer.server_certificate)  # CERT.DPauth.ECDSA
    assert client.calls == ["initiateAuthentication"]


async def test_the_servers_status_codes_become_errors(smdpp: SmdpPlus) -> None:
    # The certificate names the server, but the client asks for another SM-DP+ address.
    client = Es9Client(smdpp.address, _config(smdpp))
    client.smdp_address = "other-smdp.example.com"
    with pytest.raises(Es9StatusError) as caught:
        await client.initiate_authentication(os.urandom(16), _info1(smdpp))
    assert (caught.value.subject_code, caught.value.reason_code) == ("8.8.1", "3.8")
    assert caught.value.function == "initiateAuthentication" and caught.value.status == "Failed"
    # A CI the server has no certificate for.
    other = es10.EuiccInfo1(bytes([2, 2, 2]), (bytes(20),), (bytes(20),)).encode()
    with pytest.raises(Es9StatusError) as caught:
        await Es9Client(smdpp.address, _config(smdpp)).initiate_authentication(os.urandom(16), other)
    assert caught.value.subject_code.startswith("8.8")


def _foreign_ca(path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not the CI")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=9))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


async def test_a_certificate_not_chaining_to_the_ci_is_refused(smdpp: SmdpPlus, tmp_path: Path) -> None:
    client = Es9Client(smdpp.address, _config(smdpp, _foreign_ca(tmp_path / "ca.pem")))
    with pytest.raises(
        Es9CertificateError, match=r"does not verify against .*ca.pem: unable to get local issuer"
    ):
        await client.initiate_authentication(os.urandom(16), _info1(smdpp))


async def test_an_activation_code_naming_another_smdp_is_refused_by_tls(smdpp: SmdpPlus) -> None:
    code = parse_activation_code("LPA:1$smdp.other-operator.example.com$TS48v4_SAIP2.3_NoBERTLV")
    client = Es9Client(code.smdp_address, _config(smdpp))
    with pytest.raises(Es9CertificateError, match=r"smdp.other-operator.example.com.*Hostname mismatch"):
        await client.initiate_authentication(os.urandom(16), _info1(smdpp))


def test_a_ca_file_that_is_no_certificate_is_refused_at_once() -> None:
    config = Es9Config(ca_file=Path(__file__), connect_to=("127.0.0.1", free_port()), timeout_s=2)
    with pytest.raises(EsimError, match=r"CA file .*test_esim_es9.py: cannot load"):
        Es9Client("smdp.example.com", config)


async def test_a_refused_connection_is_a_link_error(smdpp: SmdpPlus) -> None:
    config = Es9Config(ca_file=smdpp.tree.ci_certificate, connect_to=("127.0.0.1", free_port()), timeout_s=2)
    with pytest.raises(Es9LinkError, match=r"link to testsmdpplus1.example.com .*refused"):
        await Es9Client(smdpp.address, config).initiate_authentication(os.urandom(16), _info1(smdpp))
