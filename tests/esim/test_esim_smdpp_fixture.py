"""The osmo-smdpp fixture: a real SM-DP+ on loopback with TLS that chains to the generated CI.

Each check here can fail: the TLS handshake is also tried against a CA that is not the CI and
with a name that is not the server's (both must be refused), and the proxy is asked for a
target it must refuse.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl

import pytest
from cryptography import x509
from smdpp_server import ConnectProxy, SmdpPlus, SmdppTree


def _post(
    server: SmdpPlus, context: ssl.SSLContext, name: str, path: str, body: dict[str, str]
) -> dict[str, object]:
    raw = socket.create_connection((server.host, server.port), timeout=10)
    tls = context.wrap_socket(raw, server_hostname=name)
    conn = http.client.HTTPSConnection(server.host, server.port, timeout=10)
    conn.sock = tls
    conn.request(
        "POST",
        path,
        body=json.dumps(body),
        headers={"Content-Type": "application/json", "X-Admin-Protocol": "gsma/rsp/v2.2.0", "Host": name},
    )
    response = conn.getresponse()
    data = response.read()
    conn.close()
    assert response.status == 200, data[:300]
    result = json.loads(data)
    assert isinstance(result, dict)
    return result


def test_the_generated_set_is_consistent(smdpp_tree: SmdppTree) -> None:
    ci = x509.load_der_x509_certificate(smdpp_tree.ci_certificate_der.read_bytes())
    eum = x509.load_der_x509_certificate(smdpp_tree.eum_certificate.read_bytes())
    euicc = x509.load_der_x509_certificate(smdpp_tree.euicc_certificate.read_bytes())
    euicc.verify_directly_issued_by(eum)
    eum.verify_directly_issued_by(ci)
    assert euicc.public_key().public_numbers() == smdpp_tree.euicc_private_key().public_key().public_numbers()
    assert len(smdpp_tree.ci_pkid()) == 20
    assert len(smdpp_tree.eid) == 32
    assert "TS48v4_SAIP2.3_NoBERTLV" in smdpp_tree.matching_ids


def test_es9_answers_over_tls_verified_against_the_ci(smdpp: SmdpPlus) -> None:
    # A wrong SM-DP+ address: osmo-smdpp must answer with the SGP.22 status 8.8.1 / 3.8.
    body = {
        "smdpAddress": "other-smdp.example.com",
        "euiccChallenge": base64.b64encode(bytes(16)).decode(),
        "euiccInfo1": base64.b64encode(bytes.fromhex("BF2000")).decode(),
    }
    path = "/gsma/rsp2/es9plus/initiateAuthentication"
    answer = _post(smdpp, smdpp.ssl_context(), smdpp.server_name, path, body)
    status = answer["header"]["functionExecutionStatus"]  # type: ignore[index]
    assert status["status"] == "Failed"
    assert status["statusCodeData"]["subjectCode"] == "8.8.1"
    assert status["statusCodeData"]["reasonCode"] == "3.8"


def test_tls_is_refused_without_the_ci_or_with_another_name(smdpp: SmdpPlus) -> None:
    system = ssl.create_default_context()  # the machine's CAs, not the test CI
    with pytest.raises(ssl.SSLCertVerificationError), socket.create_connection(
        (smdpp.host, smdpp.port), timeout=10
    ) as raw:
        system.wrap_socket(raw, server_hostname=smdpp.server_name)
    with pytest.raises(ssl.SSLCertVerificationError), socket.create_connection(
        (smdpp.host, smdpp.port), timeout=10
    ) as raw:
        smdpp.ssl_context().wrap_socket(raw, server_hostname="testsmdpplus2.example.com")


def test_the_proxy_tunnels_only_to_the_smdp(smdpp: SmdpPlus, smdpp_proxy: ConnectProxy) -> None:
    refused = len(smdpp_proxy.refused)
    with socket.create_connection(("127.0.0.1", smdpp_proxy.port), timeout=10) as sock:
        sock.sendall(b"CONNECT elsewhere.example.com:443 HTTP/1.1\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 403")
    assert smdpp_proxy.refused[refused:] == ["CONNECT elsewhere.example.com:443 HTTP/1.1"]
    before = smdpp_proxy.tunnels
    with socket.create_connection(("127.0.0.1", smdpp_proxy.port), timeout=10) as raw:
        raw.sendall(f"CONNECT {smdpp.server_name}:443 HTTP/1.1\r\n\r\n".encode())
        assert raw.recv(100).startswith(b"HTTP/1.1 200")
        with smdpp.ssl_context().wrap_socket(raw, server_hostname=smdpp.server_name) as tls:
            assert tls.getpeercert() is not None
    assert smdpp_proxy.tunnels == before + 1
