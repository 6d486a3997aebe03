"""lpac (estkme-group/lpac, a standard SGP.22 LPA in C) drives our simulated modem and card.

lpac talks AT to the simulated modem's pty (``LPAC_APDU=at``: AT+CCHO/AT+CGLA/AT+CCHC;
``LPAC_APDU=at_csim``: AT+CSIM with MANAGE CHANNEL) and ES10 to the simulated eUICC through
it. Each test checks what lpac printed against the card's own state. ``notification
process`` sends ES9+ handleNotification to the notification's address: here a small HTTPS
capture on 127.0.0.1 (lpac does not verify the server certificate), which checks that lpac
retrieved the card's signed notification and forwarded it unchanged. Delivery to a real
SM-DP+ (osmo-smdpp) is not tested here.
"""

from __future__ import annotations

import base64
import datetime as dt
import http.server
import json
import os
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID

from sim.euicc import EuiccConfig, ProfileSpec, SimulatedEuicc
from sim.modem import SimModemConfig, SimulatedModem
from tcu.esim import der, es10

HOME = "89490200001234567890"
LOCAL = "89430100001234567891"
LPAC_TIMEOUT_S = 30  # a hang guard (lpac waits forever for OK/ERROR), not a performance bound


@dataclass
class Es9Capture:
    """An HTTPS server on 127.0.0.1 that records ES9+ requests and answers 204."""

    address: str
    requests: list[tuple[str, dict[str, str], dict[str, Any]]] = field(default_factory=list)


@pytest.fixture(scope="module")
def es9_capture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Es9Capture]:
    folder = tmp_path_factory.mktemp("es9")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    seen: list[tuple[str, dict[str, str], dict[str, Any]]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            seen.append((self.path, dict(self.headers.items()), json.loads(body)))
            self.send_response(204)
            self.send_header("X-Admin-Protocol", "gsma/rsp/v2.2.0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, name="es9-capture", daemon=True)
    thread.start()
    try:
        yield Es9Capture(f"127.0.0.1:{server.server_address[1]}", seen)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def modem(request: pytest.FixtureRequest, es9_capture: Es9Capture) -> Iterator[SimulatedModem]:
    card = SimulatedEuicc(
        EuiccConfig(
            profiles=(
                ProfileSpec(HOME, "Telekom DE", "Telekom", enabled=True),
                ProfileSpec(LOCAL, "Magenta AT", "Magenta"),
            ),
            notification_address=es9_capture.address,
        )
    )
    overrides = getattr(request, "param", {})
    config = SimModemConfig(home_plmn={HOME: "26201", LOCAL: "23203"}, attach_delay_s=0.05, **overrides)
    with SimulatedModem(card, config) as sim:
        yield sim


class Lpac:
    def __init__(self, binary: Path, modem: SimulatedModem, driver: str = "at") -> None:
        self.binary, self.modem, self.driver = binary, modem, driver
        self.outputs: list[str] = []

    def run(self, *args: str) -> Any:
        """Run ``lpac ARGS``; return the ``data`` of its final ``lpa`` line (code 0 required)."""
        env = dict(os.environ, LPAC_APDU=self.driver, LPAC_APDU_AT_DEVICE=self.modem.port)
        try:
            done = subprocess.run(
                [str(self.binary), *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=LPAC_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            last = self.modem.commands[-5:]
            pytest.fail(f"lpac {' '.join(args)} hung; last AT commands: {last}; {exc.stderr!r}")
        lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        final = [line for line in lines if line["type"] == "lpa"]
        assert final, f"lpac {' '.join(args)}: no result line; stderr: {done.stderr}"
        payload = final[-1]["payload"]
        self.outputs.append(final[-1])
        assert (done.returncode, payload["code"], payload["message"]) == (0, 0, "success"), (
            f"lpac {' '.join(args)}: {payload}; stderr: {done.stderr}"
        )
        return payload["data"]


@pytest.fixture
def lpac(lpac_binary: Path, modem: SimulatedModem) -> Lpac:
    return Lpac(lpac_binary, modem)


def test_chip_info(lpac: Lpac, modem: SimulatedModem) -> None:
    info = lpac.run("chip", "info")
    card = modem.card
    assert info["eidValue"] == card.config.eid
    pkid = card.credentials.ci_pkid.hex()
    assert info["EUICCInfo2"]["euiccCiPKIdListForVerification"] == [pkid]  # was [] with the malformed DER
    assert info["EUICCInfo2"]["euiccCiPKIdListForSigning"] == [pkid]
    assert info["EUICCInfo2"]["svn"] == "2.2.2"
    assert info["EuiccConfiguredAddresses"] == {
        "defaultDpAddress": None,
        "rootDsAddress": card.config.root_ds_address,
    }
    assert info["rulesAuthorisationTable"] == [
        {
            "pprIds": ["ppr1", "ppr2"],
            "allowedOperators": [{"plmn": "eeeeee", "gid1": None, "gid2": None}],
            "pprFlags": ["consentRequired"],
        }
    ]
    # lpac probed the 27.007 test forms first, and every ES10 call got an answer
    assert modem.commands[1:4] == ["AT+CCHO=?", "AT+CCHC=?", "AT+CGLA=?"]
    for function in ("GetEidRequest", "GetEuiccInfo2Request", "EuiccConfiguredAddressesRequest"):
        assert function in card.es10_log
    assert "GetRatRequest" in card.es10_log


def test_set_default_smdp(lpac: Lpac, modem: SimulatedModem) -> None:
    lpac.run("chip", "defaultsmdp", "smdp.example.org")
    assert modem.card.default_dp_address == "smdp.example.org"
    assert lpac.run("chip", "info")["EuiccConfiguredAddresses"]["defaultDpAddress"] == "smdp.example.org"


def test_profile_list_enable_nickname_disable_delete(lpac: Lpac, modem: SimulatedModem) -> None:
    card = modem.card
    listed = lpac.run("profile", "list")
    assert [(p["iccid"], p["profileState"], p["profileName"]) for p in listed] == [
        (HOME, "enabled", "Telekom DE"),
        (LOCAL, "disabled", "Magenta AT"),
    ]
    assert [p["isdpAid"] for p in listed] == [p.aid.hex() for p in card.profiles]

    lpac.run("profile", "enable", LOCAL)
    assert card.enabled_iccids == [LOCAL]
    lpac.run("profile", "nickname", LOCAL, "Österreich")
    assert card.profiles[1].nickname == "Österreich"
    listed = lpac.run("profile", "list")
    assert [(p["profileState"], p["profileNickname"]) for p in listed] == [
        ("disabled", None),
        ("enabled", "Österreich"),
    ]

    lpac.run("profile", "disable", LOCAL)
    assert card.enabled_iccids == []
    lpac.run("profile", "delete", LOCAL)
    assert [p.iccid for p in card.profiles] == [HOME]
    assert [p["iccid"] for p in lpac.run("profile", "list")] == [HOME]
    assert [(n.seq, n.event.name) for n in card.notifications] == [
        (1, "disable"),
        (2, "enable"),
        (3, "disable"),
        (4, "delete"),
    ]


def test_a_refused_operation_is_reported_by_lpac(lpac_binary: Path, modem: SimulatedModem) -> None:
    """The check can fail: enabling the enabled profile is refused by the card and by lpac."""
    env = dict(os.environ, LPAC_APDU="at", LPAC_APDU_AT_DEVICE=modem.port)
    done = subprocess.run(
        [str(lpac_binary), "profile", "enable", HOME],
        env=env,
        capture_output=True,
        text=True,
        timeout=LPAC_TIMEOUT_S,
        check=False,
    )
    result = json.loads(done.stdout.splitlines()[-1])["payload"]
    assert result["code"] != 0 and "profile" in result["data"].lower()
    assert modem.card.enabled_iccids == [HOME]


def _verify_signed(card: SimulatedEuicc, pending: bytes) -> es10.NotificationMetadata:
    items = der.decode_one(pending).children()
    assert [t.tag for t in items] == [0xBF2F, 0x5F37, 0x30, 0x30]
    public = x509.load_der_x509_certificate(items[2].encode()).public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    sig = items[1].value
    signature = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    public.verify(signature, items[0].encode(), ec.ECDSA(hashes.SHA256()))
    assert items[2].encode() == card.credentials.euicc_certificate
    return es10.NotificationMetadata.from_tlv(items[0], "test")


def test_notification_list_process_remove(lpac: Lpac, modem: SimulatedModem, es9_capture: Es9Capture) -> None:
    card = modem.card
    lpac.run("profile", "enable", LOCAL)
    listed = lpac.run("notification", "list")
    assert listed == [
        {
            "seqNumber": 1,
            "profileManagementOperation": "disable",
            "notificationAddress": es9_capture.address,
            "iccid": HOME,
        },
        {
            "seqNumber": 2,
            "profileManagementOperation": "enable",
            "notificationAddress": es9_capture.address,
            "iccid": LOCAL,
        },
    ]

    es9_capture.requests.clear()
    lpac.run("notification", "process", "2")
    assert "RetrieveNotificationsListRequest" in card.es10_log
    ((path, headers, body),) = es9_capture.requests
    assert path == "/gsma/rsp2/es9plus/handleNotification"
    assert headers["X-Admin-Protocol"].startswith("gsma/rsp/v2")
    pending = base64.b64decode(body["pendingNotification"])
    meta = _verify_signed(card, pending)  # what lpac retrieved is the card's signed notification
    assert (meta.seq, meta.event, meta.iccid) == (2, es10.NotificationEvent.enable, LOCAL)
    assert [n.seq for n in card.notifications] == [1, 2]  # processed, not removed (no -r)

    lpac.run("notification", "remove", "2")
    assert [n.seq for n in card.notifications] == [1]
    assert [n["seqNumber"] for n in lpac.run("notification", "list")] == [1]


@pytest.mark.parametrize("modem", [{"support_cgla": False}], indirect=True)
def test_at_csim_driver(lpac_binary: Path, modem: SimulatedModem) -> None:
    """A modem without AT+CGLA: lpac's at_csim driver opens the channel itself over AT+CSIM."""
    lpac = Lpac(lpac_binary, modem, driver="at_csim")
    assert lpac.run("chip", "info")["EUICCInfo2"]["euiccCiPKIdListForSigning"] == [
        modem.card.credentials.ci_pkid.hex()
    ]
    assert [p["iccid"] for p in lpac.run("profile", "list")] == [HOME, LOCAL]
    lpac.run("profile", "enable", LOCAL)
    assert modem.card.enabled_iccids == [LOCAL]
    assert "AT+CSIM=?" in modem.commands
    assert not any(c.startswith("AT+CGLA") for c in modem.commands)
