"""The LPA's ES10b download messages against asn1tools compiled from the shared SGP.22 module.

Requests the LPA builds must decode under the module and re-encode to the same bytes; answers the
card could give (built here with asn1tools) must be read as the module means them; the bound profile
package is cut into exactly the pieces SGP.22 §2.5.5 (and lpac) send, which join back to the package.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import asn1tools
import pytest

from tcu.esim import es10, es10b
from tcu.esim.der import decode_one

_ASN = Path(os.environ["TCU_SHARED_DATA"], "esim", "sgp22-v2.2.2")
REF = asn1tools.compile_files(
    [str(_ASN / "rsp.asn"), str(_ASN / "PKIXExplicit88.asn"), str(_ASN / "PKIXImplicit88.asn")], codec="der"
)
TID = bytes.fromhex("0123456789ABCDEF0123456789ABCDEF")


def _certificate() -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from sim.euicc import CardCredentials

    cert = x509.load_der_x509_certificate(CardCredentials.generate().euicc_certificate)
    return cert.public_bytes(serialization.Encoding.DER)


CERT = _certificate()


def _same(type_name: str, der: bytes) -> Any:
    value = REF.decode(type_name, der)
    assert REF.encode(type_name, value) == der, type_name
    return value


def test_authenticate_server_request_is_the_modules_encoding() -> None:
    signed1 = REF.encode(
        "ServerSigned1",
        {"transactionId": TID, "euiccChallenge": bytes(16), "serverAddress": "smdp.example.com",
         "serverChallenge": bytes(range(16))},
    )  # fmt: skip
    request = es10b.AuthenticateServerRequest(
        signed1, bytes.fromhex("5F3740") + bytes(64), bytes.fromhex("0414") + bytes(20), CERT, "MATCH-1"
    )
    value = _same("AuthenticateServerRequest", request.encode())
    params = value["ctxParams1"][1]
    assert value["ctxParams1"][0] == "ctxParamsForCommonAuthentication"
    assert params["matchingId"] == "MATCH-1" and params["deviceInfo"]["tac"] == bytes.fromhex("35290611")
    assert value["serverSigned1"]["serverAddress"] == "smdp.example.com"
    decoded = es10b.ServerSigned1.decode(signed1)
    assert decoded.transaction_id == TID and decoded.server_address == "smdp.example.com"
    with pytest.raises(es10.Es10Error, match="AuthenticateServer request"):
        es10b.AuthenticateServerRequest(signed1, b"\x04\x00", b"\x04\x00", CERT, None).encode()


def test_prepare_download_and_cancel_session_requests() -> None:
    signed2 = REF.encode("SmdpSigned2", {"transactionId": TID, "ccRequiredFlag": True})
    assert es10b.PrepareDownloadRequest.cc_required(signed2)
    assert es10b.PrepareDownloadRequest.transaction_id(signed2) == TID
    request = es10b.PrepareDownloadRequest(signed2, bytes.fromhex("5F3740") + bytes(64), CERT, bytes(32))
    assert _same("PrepareDownloadRequest", request.encode())["hashCc"] == bytes(32)
    cancel = es10b.CancelSessionRequest(TID, es10b.CancelSessionReason.timeout).encode()
    assert _same("CancelSessionRequest", cancel) == {"transactionId": TID, "reason": 2}


def test_card_answers_are_read_as_the_module_means_them() -> None:
    auth_error = REF.encode(
        "AuthenticateServerResponse",
        ("authenticateResponseError", {"transactionId": TID, "authenticateErrorCode": 2}),
    )
    answer = es10b.AuthenticateServerResponse.decode(auth_error)
    assert not answer.ok and answer.error is es10b.AuthenticateErrorCode.invalidSignature
    assert answer.transaction_id == TID and answer.der == auth_error
    prep_ok = REF.encode(
        "PrepareDownloadResponse",
        ("downloadResponseOk", {"euiccSigned2": {"transactionId": TID, "euiccOtpk": b"\x04" + bytes(64)},
                                "euiccSignature2": bytes(64)}),
    )  # fmt: skip
    ok = es10b.PrepareDownloadResponse.decode(prep_ok)
    assert ok.ok and ok.transaction_id == TID
    prep_err = REF.encode(
        "PrepareDownloadResponse", ("downloadResponseError", {"transactionId": TID, "downloadErrorCode": 127})
    )
    assert es10b.PrepareDownloadResponse.decode(prep_err).error is es10b.DownloadErrorCode.undefinedError
    cancel_ok = REF.encode(
        "CancelSessionResponse",
        ("cancelSessionResponseOk", {"euiccCancelSessionSigned": {"transactionId": TID,
         "smdpOid": "1.3.6.1.4.1.31746", "reason": 0}, "euiccCancelSessionSignature": bytes(64)}),
    )  # fmt: skip
    assert es10b.CancelSessionResponse.decode(cancel_ok).ok
    cancel_err = REF.encode("CancelSessionResponse", ("cancelSessionResponseError", 5))
    assert (
        es10b.CancelSessionResponse.decode(cancel_err).error is es10b.CancelSessionError.invalidTransactionId
    )


def _pir(final: tuple[str, dict[str, Any]]) -> bytes:
    metadata = {
        "seqNumber": 7,
        "profileManagementOperation": (b"\x80", 1),
        "notificationAddress": "smdp.example.com",
        "iccid": es10.iccid_to_bcd("89000123456789012341"),
    }
    return bytes(
        REF.encode(
            "ProfileInstallationResult",
            {
                "profileInstallationResultData": {
                    "transactionId": TID,
                    "notificationMetadata": metadata,
                    "smdpOid": "1.3.6.1.4.1.31746",
                    "finalResult": final,
                },
                "euiccSignPIR": bytes(64),
            },
        )
    )


def test_profile_installation_result_success_and_error() -> None:
    good = es10b.ProfileInstallationResult.decode(
        _pir(
            ("successResult", {"aid": bytes.fromhex("A0000005591010FFFFFFFF8900001100"), "simaResponse": b""})
        )
    )
    assert good.ok and good.iccid == "89000123456789012341" and good.metadata.seq == 7
    assert good.metadata.event is es10.NotificationEvent.install
    assert es10b.pending_notification_address(good.der) == (7, "smdp.example.com", "89000123456789012341")
    bad = es10b.ProfileInstallationResult.decode(_pir(("errorResult", {"bppCommandId": 5, "errorReason": 8})))
    assert not bad.ok and bad.error is es10b.InstallErrorReason.scp03tSecurityError
    assert bad.error_name == "scp03tSecurityError (8) at loadProfileElements (5)"


@pytest.mark.parametrize("with_a2", [False, True])
def test_the_package_is_cut_into_the_pieces_of_section_2_5_5(with_a2: bool) -> None:
    value: dict[str, Any] = {
        "initialiseSecureChannelRequest": {
            "remoteOpId": 1, "transactionId": TID,
            "controlRefTemplate": {"keyType": b"\x88", "keyLen": b"\x10", "hostId": b"host"},
            "smdpOtpk": b"\x04" + bytes(64), "smdpSign": bytes(64)},
        "firstSequenceOf87": [b"\x01" * 20],
        "sequenceOf88": [b"\x02" * 30, b"\x03" * 300],
        "sequenceOf86": [b"\x04" * 1000, b"\x05" * 10, b"\x06" * 200],
    }  # fmt: skip
    if with_a2:
        value["secondSequenceOf87"] = [b"\x07" * 40]
    bpp = REF.encode("BoundProfilePackage", value)
    pieces = es10b.split_bound_profile_package(bpp)
    assert b"".join(pieces) == bpp
    heads = [p[:2].hex().upper() for p in pieces]
    expected = ["BF36", "A0", "A1", "88", "88"] + (["A2"] if with_a2 else []) + ["A3", "86", "86", "86"]
    assert [h if h.startswith("BF") else h[:2] for h in heads] == expected
    assert decode_one(pieces[1]).tag == 0xA0  # ConfigureISDP travels whole
    assert len(pieces) == es10b.bpp_segment_count(bpp)
    with pytest.raises(es10.Es10Error, match="BoundProfilePackage"):
        es10b.split_bound_profile_package(bpp[:-1])
