"""Profile download end to end: the TCU's LPA, a real SM-DP+ (osmo-smdpp) and the simulated card.

The card carries the eUICC certificate and key of the certificate set osmo-smdpp was started with
(``tools/build_smdpp.sh``), so the two trust each other through the generated CI. ``tcu esim download``
runs over the simulated modem's pty; the bad-input cases run the same :class:`~tcu.esim.lpa.Lpa` over
the in-process transport, with the fault put where it would happen: a tampered server answer (a man
in the middle), a TLS name or CA that does not fit, a matching id the server lacks, a full card, and a
link that goes down before each ES9+ call. Each must leave the card as it was, say clearly what failed,
be audited, and cancel the session where the protocol can.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from smdpp_server import SERVER_NAME, SmdpPlus, SmdppTree

from sim.euicc import CardCredentials, EuiccConfig, EuiccTransport, ProfileSpec, SimulatedEuicc
from sim.modem import SimModemConfig, SimulatedModem
from tcu.cli.main import main
from tcu.esim import AuditLog, es10b, verify
from tcu.esim.es9 import (
    AuthenticateClientResult,
    Es9Client,
    Es9Config,
    InitiateAuthenticationResult,
    parse_activation_code,
)
from tcu.esim.lpa import DownloadError, Lpa

HOME = "89490200001234567890"
MATCHING_ID = "TS48V2-SAIP2-1-BERTLV-UNIQUE"
TS48_ICCID = "8949449999999990049"  # the header ICCID of that TS.48 profile


def make_card(tree: SmdppTree, **config: Any) -> SimulatedEuicc:
    credentials = CardCredentials(
        ci_pkid=tree.ci_pkid(),
        ci_certificate=tree.ci_certificate_der.read_bytes(),
        eum_certificate=tree.eum_certificate.read_bytes(),
        euicc_certificate=tree.euicc_certificate.read_bytes(),
        euicc_key=tree.euicc_private_key(),
    )
    profiles = (ProfileSpec(HOME, "Home DE", "OpDE", enabled=True),)
    config.setdefault("notification_address", SERVER_NAME)
    return SimulatedEuicc(EuiccConfig(eid=tree.eid, profiles=profiles, credentials=credentials, **config))


def _snapshot(card: SimulatedEuicc) -> list[tuple[str, str]]:
    return [(p.iccid, p.state.name) for p in card.profiles]


def _entries(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _es9(smdpp: SmdpPlus, port: int | None = None) -> Es9Config:
    return Es9Config(
        ca_file=smdpp.tree.ci_certificate, connect_to=(smdpp.host, port or smdpp.port), timeout_s=10
    )


# --- the happy path over the simulated modem ------------------------------------------------


def test_tcu_esim_download_installs_a_ts48_profile_and_delivers_its_notification(
    smdpp: SmdpPlus, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    card = make_card(smdpp.tree)
    audit = tmp_path / "audit.jsonl"
    config = SimModemConfig(home_plmn={HOME: "26201", TS48_ICCID: "00101"}, attach_delay_s=0.05)
    with SimulatedModem(card, config) as modem:
        code = smdpp.activation_code(MATCHING_ID)
        args = ["esim", "--port", modem.port, "--timeout-s", "5", "--audit", str(audit), "download", code]
        args += [
            "--ca",
            str(smdpp.tree.ci_certificate),
            "--connect",
            f"{smdpp.host}:{smdpp.port}",
            "--enable",
        ]
        assert main(args) == 0
    out = capsys.readouterr().out
    assert f"installed {TS48_ICCID} from {smdpp.address}" in out
    assert card.enabled_iccids == [TS48_ICCID]
    assert [p.iccid for p in card.profiles] == [HOME, TS48_ICCID]
    # the install notification, then those of the enable, reached osmo-smdpp and left the card
    assert card.notifications == [] and "delivered and removed" in out
    log = smdpp.log_text()
    # osmo-smdpp decoded the install result (it then looks its session up by the transaction id in
    # lower-case hex while it stores upper-case ids, logs "Unable to find session" and answers 204:
    # its quirk, seen in its log), and it verified the enable and disable notifications' signatures
    # and certificate chains ("handleNotification: EID ...: enable of <ICCID>")
    assert "Rx profileInstallationResult" in log
    assert f"enable of {TS48_ICCID}" in log and f"disable of {HOME}" in log
    assert main(["esim", "audit", "verify", str(audit)]) == 0
    entries = _entries(audit)
    es9 = [e["function"] for e in entries if e["kind"] == "es9"]
    assert es9[:4] == [
        "initiateAuthentication",
        "authenticateClient",
        "getBoundProfilePackage",
        "handleNotification",
    ]
    es10 = [e["function"] for e in entries if e["kind"] == "es10" and e["ok"]]
    for function in ("GetEuiccChallenge", "GetEuiccInfo1", "AuthenticateServer", "PrepareDownload",
                     "LoadBoundProfilePackage", "RetrieveNotificationsList", "NotificationSent"):  # fmt: skip
        assert function in es10, function
    done = [e for e in entries if e["kind"] == "download" and e["step"] == "done"]
    assert done and done[0]["iccid"] == TS48_ICCID and done[0]["notifications_pending"] == []
    installed = [e for e in entries if e["kind"] == "notification" and e["iccid"] == TS48_ICCID]
    assert installed[0]["delivered"] and installed[0]["removed"]


# --- bad input -------------------------------------------------------------------------------


def _run(
    lpa: Lpa, smdpp: SmdpPlus, matching_id: str = MATCHING_ID, address: str | None = None
) -> DownloadError:
    import asyncio

    code = parse_activation_code(f"LPA:1${address or smdpp.address}${matching_id}")
    with pytest.raises(DownloadError) as caught:
        asyncio.run(lpa.download(code))
    return caught.value


@dataclass
class Setup:
    card: SimulatedEuicc
    audit: Path
    before: list[tuple[str, str]]

    def lpa(self, es9: Es9Config, factory: Any = Es9Client) -> Lpa:
        return Lpa(EuiccTransport(self.card), es9, audit=AuditLog(self.audit), client_factory=factory)

    def assert_unchanged(self) -> None:
        assert _snapshot(self.card) == self.before
        assert self.card.enabled_iccids == [HOME]
        assert verify(self.audit) > 0

    def failed(self) -> dict[str, Any]:
        return next(e for e in _entries(self.audit) if e["kind"] == "download" and e["step"] == "failed")

    def cancels(self) -> list[dict[str, Any]]:
        return [e for e in _entries(self.audit) if e["kind"] == "cancel_session"]


@pytest.fixture
def setup(smdpp: SmdpPlus, tmp_path: Path) -> Setup:
    card = make_card(smdpp.tree)
    return Setup(card, tmp_path / "audit.jsonl", _snapshot(card))


class _ForgedSignature(Es9Client):
    """A man in the middle that changes one byte of serverSignature1."""

    async def initiate_authentication(
        self, euicc_challenge: bytes, euicc_info1: bytes
    ) -> InitiateAuthenticationResult:
        real = await super().initiate_authentication(euicc_challenge, euicc_info1)
        signature = bytearray(real.server_signature1)
        signature[-1] ^= 0x01
        return InitiateAuthenticationResult(
            real.transaction_id, real.server_signed1, bytes(signature), real.euicc_ci_pkid_to_be_used,
            real.server_certificate,
        )  # fmt: skip


def test_a_wrongly_signed_server_answer_is_refused_by_the_card(smdpp: SmdpPlus, setup: Setup) -> None:
    error = _run(setup.lpa(_es9(smdpp), _ForgedSignature), smdpp)
    assert error.step == "AuthenticateServer" and "invalidSignature" in str(error)
    setup.assert_unchanged()
    assert setup.failed()["failed_step"] == "AuthenticateServer"
    # the card opened no session, so it has no signed cancellation to give; that is said, not hidden
    assert "SM-DP+ not told" in error.cancelled


class _ForgedBinding(Es9Client):
    """A man in the middle that changes one byte of smdpSignature2 (the binding signature)."""

    async def authenticate_client(
        self, transaction_id: str, authenticate_server_response: bytes
    ) -> AuthenticateClientResult:
        real = await super().authenticate_client(transaction_id, authenticate_server_response)
        signature = bytearray(real.smdp_signature2)
        signature[-1] ^= 0x01
        return dataclasses.replace(real, smdp_signature2=bytes(signature))


def test_a_wrongly_signed_binding_is_refused_and_the_session_cancelled_on_both_sides(
    smdpp: SmdpPlus, setup: Setup
) -> None:
    mark = smdpp.log_mark()
    error = _run(setup.lpa(_es9(smdpp), _ForgedBinding), smdpp)
    assert error.step == "PrepareDownload" and "invalidSignature" in str(error)
    setup.assert_unchanged()
    # The card holds a session here: the LPA relays its signed cancellation to osmo-smdpp, which
    # checks the eUICC's signature and then refuses every CancelSession with 8.8/3.10 (it compares
    # the smdpOid with the OID of its certificate's SAN extension, not the registeredID in it:
    # its code; see tests/interop/test_interop_lpac_download.py). The refusal is reported.
    assert error.cancelled.startswith("cancelled on the card; SM-DP+ cancelSession failed")
    assert "subject 8.8 reason 3.10" in error.cancelled
    log = smdpp.log_text(since=mark)
    assert "Rx cancelSessionResponseOk" in log and "eUICC signature is invalid" not in log
    assert setup.cancels()[-1]["card"] is True and setup.cancels()[-1]["smdp"] is False


class _BadMac(Es9Client):
    """A man in the middle that changes one byte inside the last profile segment (its MAC no longer fits)."""

    async def get_bound_profile_package(self, transaction_id: str, prepare_download_response: bytes) -> bytes:
        bpp = await super().get_bound_profile_package(transaction_id, prepare_download_response)
        pieces = es10b.split_bound_profile_package(bpp)
        assert pieces[-1][0] == 0x86
        tampered = bytearray(bpp)
        tampered[len(bpp) - 20] ^= 0x01  # inside the last 86 TLV's value (its MAC covers it)
        return bytes(tampered)


def test_a_package_with_a_bad_mac_is_refused_and_the_result_reaches_the_server(
    smdpp: SmdpPlus, setup: Setup
) -> None:
    error = _run(setup.lpa(_es9(smdpp), _BadMac), smdpp)
    assert error.step == "LoadBoundProfilePackage"
    assert "scp03tSecurityError" in str(error) or "scp03tStructureError" in str(error)
    setup.assert_unchanged()
    assert "result notification delivered" in error.cancelled
    assert not [n for n in setup.card.notifications if n.iccid == TS48_ICCID]


def test_a_card_out_of_memory_refuses_the_profile_and_keeps_the_previous_one(
    smdpp: SmdpPlus, tmp_path: Path
) -> None:
    card = make_card(smdpp.tree, memory_b=2000)  # a TS.48 profile needs about 12 KB
    setup = Setup(card, tmp_path / "audit.jsonl", _snapshot(card))
    error = _run(setup.lpa(_es9(smdpp)), smdpp)
    assert error.step == "LoadBoundProfilePackage"
    assert "installFailedDueToInsufficientMemoryForProfile" in str(error)
    setup.assert_unchanged()
    assert "result notification delivered" in error.cancelled


def test_an_activation_code_naming_another_smdp_is_refused(smdpp: SmdpPlus, setup: Setup) -> None:
    error = _run(setup.lpa(_es9(smdpp)), smdpp, address="smdp.other-operator.example.com")
    assert error.step == "initiateAuthentication" and "Hostname mismatch" in str(error)
    setup.assert_unchanged()
    assert "AuthenticateServerRequest" not in setup.card.es10_log


def test_a_matching_id_the_server_does_not_know_cancels_the_session(smdpp: SmdpPlus, setup: Setup) -> None:
    error = _run(setup.lpa(_es9(smdpp)), smdpp, matching_id="NO-SUCH-PROFILE")
    assert error.step == "authenticateClient" and "8.2.6" in str(error) and "3.8" in str(error)
    setup.assert_unchanged()
    assert setup.cancels()[-1]["card"] is True
    # osmo-smdpp keeps no eUICC certificate for a session it refused and answers the relayed
    # cancellation with HTTP 500 (its code); the LPA reports that instead of claiming success
    assert error.cancelled.startswith("cancelled on the card; SM-DP+ cancelSession failed")


def test_a_tls_certificate_not_chaining_to_the_ci_is_refused(smdpp: SmdpPlus, setup: Setup) -> None:
    foreign = Path(smdpp.tree.generated / "DPtls" / "CERT_S_SM_DP_TLS_NIST.pem")  # a leaf, not the CI
    es9 = Es9Config(ca_file=foreign, connect_to=(smdpp.host, smdpp.port), timeout_s=10)
    error = _run(setup.lpa(es9), smdpp)
    assert error.step == "initiateAuthentication" and "does not verify against" in str(error)
    setup.assert_unchanged()


# --- the link goes down before each ES9+ call ----------------------------------------------


@dataclass
class _Link:
    port: int
    allow: int
    """Connections still forwarded; after them the link is down (each further one is closed at once)."""
    cut: int = 0


@contextmanager
def _link(target: tuple[str, int], allow: int) -> Iterator[_Link]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    link = _Link(int(listener.getsockname()[1]), allow)
    stop = threading.Event()

    def pump(a: socket.socket, b: socket.socket) -> None:
        with suppress(OSError):
            while data := a.recv(65536):
                b.sendall(data)
        for s in (a, b):
            with suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if link.allow <= 0:
                link.cut += 1
                client.close()
                continue
            link.allow -= 1
            upstream = socket.create_connection(target)
            threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=pump, args=(upstream, client), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield link
    finally:
        stop.set()
        thread.join(5)
        listener.close()


@pytest.mark.parametrize(
    ("allow", "step", "cancelled"),
    [
        (0, "initiateAuthentication", "no session to cancel"),
        (1, "authenticateClient", "cancelled on the card; SM-DP+ cancelSession failed"),
        (2, "getBoundProfilePackage", "cancelled on the card; SM-DP+ cancelSession failed"),
    ],
)
def test_a_link_loss_before_each_call_leaves_the_card_as_it_was(
    smdpp: SmdpPlus, setup: Setup, allow: int, step: str, cancelled: str
) -> None:
    with _link((smdpp.host, smdpp.port), allow) as link:
        error = _run(setup.lpa(_es9(smdpp, link.port)), smdpp)
    assert link.cut >= 1
    assert error.step == step and "link to" in str(error)
    assert error.cancelled.startswith(cancelled)
    setup.assert_unchanged()
    if allow:
        assert setup.cancels()[-1]["card"] is True and setup.cancels()[-1]["smdp"] is False


def test_a_link_loss_before_the_notification_keeps_it_on_the_card_until_delivered(
    smdpp: SmdpPlus, setup: Setup
) -> None:
    import asyncio

    code = parse_activation_code(smdpp.activation_code(MATCHING_ID))
    with _link((smdpp.host, smdpp.port), 3) as link:
        result = asyncio.run(setup.lpa(_es9(smdpp, link.port)).download(code))
    assert result.iccid == TS48_ICCID and result.notifications.delivered == ()
    assert len(result.notifications.pending) == 1
    pending = [n for n in setup.card.notifications if n.iccid == TS48_ICCID]
    assert pending, "the install notification must stay on the card until delivered"
    report = asyncio.run(setup.lpa(_es9(smdpp)).deliver_notifications())
    assert report.delivered == result.notifications.pending and report.pending == ()
    assert not [n for n in setup.card.notifications if n.iccid == TS48_ICCID]
    assert verify(setup.audit) > 0


class _CardLinkDrops(EuiccTransport):
    """The modem's link to the card goes away ``after`` APDUs into the package (the card goes mute)."""

    def __init__(self, card: SimulatedEuicc, after: int) -> None:
        super().__init__(card)
        self.after = after
        self.counting = False

    async def transmit(self, handle: int, apdu: bytes) -> bytes:
        if apdu[1] == 0xE2 and apdu[3] == 0 and apdu[5:7] == b"\xbf\x36":
            self.counting = True  # the first block of the first package piece
        if self.counting:
            if self.after <= 0:
                self.card.mute = True
            self.after -= 1
        return await super().transmit(handle, apdu)


@pytest.mark.parametrize("after", [0, 3, 60])
def test_a_card_link_loss_while_loading_leaves_the_card_as_it_was(
    smdpp: SmdpPlus, setup: Setup, after: int
) -> None:
    import asyncio

    transport = _CardLinkDrops(setup.card, after)
    lpa = Lpa(transport, _es9(smdpp), audit=AuditLog(setup.audit))
    code = parse_activation_code(smdpp.activation_code(MATCHING_ID))
    with pytest.raises(DownloadError) as caught:
        asyncio.run(lpa.download(code))
    assert caught.value.step == "LoadBoundProfilePackage" and "transport failed" in str(caught.value)
    assert "card CancelSession failed" in caught.value.cancelled
    # the modem resets the card; the half-loaded profile must not be there, and a new try works
    setup.card.mute = False
    setup.card.power_cycle()
    setup.assert_unchanged()
    result = asyncio.run(setup.lpa(_es9(smdpp)).download(code))
    assert result.iccid == TS48_ICCID and [p.iccid for p in setup.card.profiles] == [HOME, TS48_ICCID]
