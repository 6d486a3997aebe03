"""lpac downloads a TS.48 test profile from the real osmo-smdpp into our simulated card.

The whole chain is software written elsewhere except the simulated modem and card: lpac
(estkme-group) runs ES9+ against osmo-smdpp (osmocom pySim, ``tests/smdpp_server.py``) and
ES10b through the modem's AT port to the card, which verifies the SM-DP+ (CERT.DPauth and
CERT.DPpb under the generated CI, their signatures), binds the package to its one-time key and
decrypts it (SCP03t). lpac does not verify TLS (its curl driver turns verification off) and
reaches ``testsmdpplus1.example.com`` through the fixture's CONNECT proxy (``https_proxy``),
which forwards only that name to the loopback port.

Checked against things the card did not make: the installed package's size and element count
equal those of the TS.48 file osmo-smdpp served, the ProfileInstallationResult decodes under the
shared SGP.22 ASN.1 and verifies with the eUICC certificate, and osmo-smdpp's log shows the
install notification received and, for the enable notification, its own check of our
signature and certificate chain (``handleNotification: EID ...``).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asn1tools
import pytest
from cryptography import x509
from smdpp_server import ConnectProxy, SmdpPlus, SmdppTree

from sim.euicc import EuiccConfig, ProfileSpec, SimulatedEuicc
from sim.euicc_rsp import verify_raw_signature
from sim.modem import SimModemConfig, SimulatedModem
from tcu.esim import der

HOME = "89490200001234567890"
MATCHING_ID = "TS48V4-SAIP2-3-NOBERTLV-UNIQUE"  # lpac accepts only letters, digits and '-' in a matching id
LPAC_TIMEOUT_S = 60  # a hang guard, not a performance bound
_ASN = Path(os.environ["TCU_SHARED_DATA"], "esim", "sgp22-v2.2.2")


@dataclass
class Result:
    returncode: int
    payload: dict[str, Any]
    stderr: str


@pytest.fixture
def modem(smdpp_tree: SmdppTree, smdpp: SmdpPlus) -> Iterator[SimulatedModem]:
    credentials = smdpp_tree.card_credentials()
    card = SimulatedEuicc(
        EuiccConfig(
            eid=smdpp_tree.eid,
            credentials=credentials,
            profiles=(ProfileSpec(HOME, "Telekom DE", "Telekom", enabled=True),),
            notification_address=smdpp.address,
        )
    )
    with SimulatedModem(card, SimModemConfig(home_plmn={HOME: "26201"}, attach_delay_s=0.05)) as sim:
        yield sim


def lpac(binary: Path, modem: SimulatedModem, proxy: ConnectProxy, *args: str) -> Result:
    env = dict(
        os.environ,
        LPAC_APDU="at",
        LPAC_APDU_AT_DEVICE=modem.port,
        https_proxy=proxy.url,
        HTTPS_PROXY=proxy.url,
        no_proxy="",
        NO_PROXY="",
    )
    done = subprocess.run(
        [str(binary), *args], env=env, capture_output=True, text=True, timeout=LPAC_TIMEOUT_S, check=False
    )
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    final = [line for line in lines if line["type"] == "lpa"]
    assert final, f"lpac {' '.join(args)}: no result line; stderr: {done.stderr}"
    return Result(done.returncode, final[-1]["payload"], done.stderr)


def ok(result: Result) -> Any:
    assert (result.returncode, result.payload["code"]) == (0, 0), result
    return result.payload["data"]


def test_lpac_downloads_a_ts48_profile_and_delivers_the_notifications(
    lpac_binary: Path,
    modem: SimulatedModem,
    smdpp: SmdpPlus,
    smdpp_tree: SmdppTree,
    smdpp_proxy: ConnectProxy,
) -> None:
    card = modem.card
    refused_before = len(smdpp_proxy.refused)
    served = (smdpp_tree.upp_dir / f"{MATCHING_ID}.der").read_bytes()
    header = {t.tag: t.value for t in der.decode_seq(served)[0].children()}
    iccid = header[0x83].hex().upper().rstrip("F")

    data = ok(
        lpac(lpac_binary, modem, smdpp_proxy, "profile", "download", "-a", smdpp.activation_code(MATCHING_ID))
    )
    assert data["iccid"] == iccid
    assert card.download.refusals == []
    new = card.profiles[-1]
    assert (new.iccid, new.name, new.provider, new.state.name) == (
        iccid,
        MATCHING_ID,
        "OsmocomSPN",
        "disabled",
    )
    assert (new.size_b, new.elements) == (len(served), len(der.decode_seq(served)))
    listed = ok(lpac(lpac_binary, modem, smdpp_proxy, "profile", "list"))
    assert [(p["iccid"], p["profileState"]) for p in listed] == [(HOME, "enabled"), (iccid, "disabled")]
    assert card.enabled_iccids == [HOME]

    # The install notification: a ProfileInstallationResult under the shared ASN.1, signed by the eUICC.
    notes = ok(lpac(lpac_binary, modem, smdpp_proxy, "notification", "list"))
    assert [(n["profileManagementOperation"], n["iccid"], n["notificationAddress"]) for n in notes] == [
        ("install", iccid, smdpp.address)
    ]
    pir = card.install_results[notes[0]["seqNumber"]]
    ref = asn1tools.compile_files(
        [str(_ASN / "rsp.asn"), str(_ASN / "PKIXExplicit88.asn"), str(_ASN / "PKIXImplicit88.asn")],
        codec="der",
    )
    decoded = ref.decode("ProfileInstallationResult", pir)
    assert ref.encode("ProfileInstallationResult", decoded) == pir
    assert decoded["profileInstallationResultData"]["finalResult"][0] == "successResult"
    data_tlv = der.decode_one(pir).children()[0].encode()
    euicc_cert = x509.load_der_x509_certificate(smdpp_tree.euicc_certificate.read_bytes())
    assert verify_raw_signature(euicc_cert, decoded["euiccSignPIR"], data_tlv)

    mark = smdpp.log_mark()
    ok(lpac(lpac_binary, modem, smdpp_proxy, "notification", "process", "-a", "-r"))
    log = smdpp.log_text(since=mark)
    assert log.count('POST /gsma/rsp2/es9plus/handleNotification HTTP/1.1" 204') == 1
    assert "Rx profileInstallationResult" in log
    assert card.notifications == [] and card.install_results == {}

    # Enable it: the enable notification goes to the address from the metadata; osmo-smdpp
    # checks the certificate chain and our signature before it logs the EID and the ICCID.
    ok(lpac(lpac_binary, modem, smdpp_proxy, "profile", "enable", iccid))
    assert card.enabled_iccids == [iccid]
    mark = smdpp.log_mark()
    ok(lpac(lpac_binary, modem, smdpp_proxy, "notification", "process", "-a", "-r"))
    log = smdpp.log_text(since=mark)
    assert f"handleNotification: EID {smdpp_tree.eid}" in log
    assert f"of {iccid}" in log
    assert card.notifications == []
    assert smdpp_proxy.refused[refused_before:] == []  # lpac went nowhere else


def test_the_card_refuses_a_second_copy_and_stays_as_it_was(
    lpac_binary: Path, modem: SimulatedModem, smdpp: SmdpPlus, smdpp_proxy: ConnectProxy
) -> None:
    card = modem.card
    code = smdpp.activation_code(MATCHING_ID)
    ok(lpac(lpac_binary, modem, smdpp_proxy, "profile", "download", "-a", code))
    profiles = [(p.iccid, p.state) for p in card.profiles]
    again = lpac(lpac_binary, modem, smdpp_proxy, "profile", "download", "-a", code)
    assert again.payload["code"] != 0
    assert again.payload["data"] == "store_metadata,install_failed_due_to_iccid_already_exists_on_euicc"
    assert [(p.iccid, p.state) for p in card.profiles] == profiles
    refusal = "LoadBoundProfilePackage: installFailedDueToIccidAlreadyExistsOnEuicc: storeMetadata"
    assert card.download.refusals[0].startswith(refusal)
    # lpac then cancels the session the card had already ended with the errorResult: refused, and counted.
    assert [r.split(":")[:2] for r in card.download.refusals[1:]] == [
        ["CancelSession", " invalidTransactionId"]
    ]
    # The errorResult is the second pending install notification (for the SM-DP+), beside the first's.
    assert [n.event.name for n in card.notifications] == ["install", "install"]
    failed = der.decode_one(card.install_results[card.notifications[1].seq]).children()[0]
    final = next(t for t in failed.children() if t.tag == 0xA2).children()[0]
    assert final.tag == 0xA1  # errorResult {bppCommandId storeMetadata(2), errorReason 9}
    assert final.value == bytes.fromhex("800102810109")


def test_an_unknown_matching_id_changes_nothing(
    lpac_binary: Path, modem: SimulatedModem, smdpp: SmdpPlus, smdpp_proxy: ConnectProxy
) -> None:
    card = modem.card
    refused = lpac(
        lpac_binary, modem, smdpp_proxy, "profile", "download", "-a", smdpp.activation_code("NO-SUCH-ID")
    )
    assert refused.payload["code"] != 0
    assert [p.iccid for p in card.profiles] == [HOME]
    assert card.notifications == []


def test_a_declined_preview_cancels_the_session_on_card_and_server(
    lpac_binary: Path, modem: SimulatedModem, smdpp: SmdpPlus, smdpp_proxy: ConnectProxy
) -> None:
    """``lpac profile download -p`` answered ``n``: ES10b CancelSession, then ES9+ cancelSession.

    osmo-smdpp checks our euiccCancelSessionSignature (it would answer "eUICC signature is
    invalid") and then compares the smdpOid with the OID of its DPauth certificate's
    SubjectAlternativeName *extension* (2.5.29.17), not with the registeredID in it, so it answers
    8.8/3.10 to every CancelSession; that is osmo-smdpp's code, the test only reads its log.
    """
    card = modem.card
    mark = smdpp.log_mark()
    done = subprocess.run(
        [str(lpac_binary), "profile", "download", "-p", "-a", smdpp.activation_code("TS48V1-A-UNIQUE")],
        env=dict(
            os.environ,
            LPAC_APDU="at",
            LPAC_APDU_AT_DEVICE=modem.port,
            https_proxy=smdpp_proxy.url,
            HTTPS_PROXY=smdpp_proxy.url,
            no_proxy="",
            NO_PROXY="",
        ),
        input="n\n",
        capture_output=True,
        text=True,
        timeout=LPAC_TIMEOUT_S,
        check=False,
    )
    assert '"message":"es10b_cancel_session"' in done.stdout and '"message":"cancelled"' in done.stdout
    assert card.download.session is None and card.download.refusals == []
    assert [p.iccid for p in card.profiles] == [HOME] and card.notifications == []
    log = smdpp.log_text(since=mark)
    assert "Rx cancelSessionResponseOk" in log and "'smdpOid': '2.999.10', 'reason': 0" in log
    assert "eUICC signature is invalid" not in log
