"""The TCU as an LPA: profile download (ES9+ to the SM-DP+, ES10b to the card) and notification delivery.

:meth:`Lpa.download` runs SGP.22's download (§3.1.3 common mutual authentication, §3.1.3.2/3 download
and installation) over one ISD-R channel::

    card GetEuiccChallenge, GetEuiccInfo1
    ES9+ initiateAuthentication          the LPA checks serverSigned1: our challenge, the code's address
    card AuthenticateServer              (the card verifies the server's certificate and signature)
    ES9+ authenticateClient              (the server verifies the card; names the profile)
    card PrepareDownload                 (the card verifies the binding signature, makes its one-time key)
    ES9+ getBoundProfilePackage
    card LoadBoundProfilePackage         piece by piece (es10b.split_bound_profile_package); the last
                                         piece, or a failing one, answers the ProfileInstallationResult
    deliver notifications                RetrieveNotificationsList, ES9+ handleNotification, then
                                         NotificationSent (removed from the card only after delivery)

Failure before the package is loaded ends the session on both sides where the protocol has a way:
ES10b CancelSession gives the card's signed cancellation, which ES9+ cancelSession carries to the
server. Where that is not possible (the card refused the server, so it holds no session; the link is
gone) the audit log and the error say so. Once the card has answered a ProfileInstallationResult
(success or error), that result is the end of the session and is delivered as a notification.

Every step goes to the audit log (kinds ``download``, ``es10``, ``es9``, ``cancel_session``,
``notification`` per notification and ``notifications`` per delivery round), as the profile
manager writes switches. Errors are :class:`DownloadError` with the
step that failed and whether the session was cancelled; the card's own refusal is in the message.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tcu.errors import EsimError
from tcu.esim import es10, es10b
from tcu.esim.audit import AuditLog
from tcu.esim.der import DerError, decode_one, decode_seq
from tcu.esim.es9 import ActivationCode, Es9Client, Es9Config, Es9Error, Es9LinkError
from tcu.esim.session import ApduTransport, IsdrSession

__all__ = ["DownloadError", "DownloadResult", "Lpa", "NotificationReport"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

ClientFactory = Callable[[str, Es9Config], Es9Client]


class DownloadError(EsimError):
    """A profile download failed at ``step``; ``cancelled`` tells whether both sides ended the session."""

    def __init__(self, step: str, message: str, *, cancelled: str, transaction_id: str | None) -> None:
        super().__init__(f"download failed at {step}: {message} [{cancelled}]")
        self.step = step
        self.cancelled = cancelled
        self.transaction_id = transaction_id
        self.problem = message


@dataclass(frozen=True, slots=True)
class NotificationReport:
    delivered: tuple[int, ...] = ()
    """Sequence numbers delivered to their SM-DP+ and removed from the card."""
    pending: tuple[int, ...] = ()
    """Sequence numbers still on the card (delivery or removal failed; each audited and logged)."""


@dataclass(frozen=True, slots=True)
class DownloadResult:
    iccid: str
    aid: bytes
    transaction_id: str
    smdp_address: str
    notifications: NotificationReport = field(default_factory=NotificationReport)


def _metadata_iccid(profile_metadata: bytes) -> str | None:
    """The ICCID in StoreMetadataRequest (``BF25 { 5A iccid, ... }``), for the audit log."""
    try:
        top = decode_one(profile_metadata)
        for item in decode_seq(top.value):
            if item.tag == 0x5A:
                return es10.iccid_from_bcd(item.value)
    except (DerError, es10.Es10Error):
        return None
    return None


def _hash_cc(code: str, transaction_id: bytes) -> bytes:
    """SGP.22 §2.6.3: SHA256(SHA256(confirmation code) | transactionId)."""
    return hashlib.sha256(hashlib.sha256(code.encode("utf-8")).digest() + transaction_id).digest()


@dataclass(slots=True)
class _Run:
    session: IsdrSession
    client: Es9Client
    transaction_id: bytes | None = None


class Lpa:
    """Downloads profiles and delivers notifications over an :class:`ApduTransport`, audited."""

    def __init__(
        self,
        transport: ApduTransport,
        es9: Es9Config,
        *,
        audit: AuditLog | None = None,
        segment_size: int = 120,
        client_factory: ClientFactory = Es9Client,
    ) -> None:
        self._transport = transport
        self._es9 = es9
        self._audit = audit
        self._segment_size = segment_size
        self._client_factory = client_factory
        self.clients: list[Es9Client] = []
        """Every ES9+ client this LPA made (one per SM-DP+ address per operation), for tests."""

    async def _log(self, kind: str, fields: dict[str, Any]) -> None:
        if self._audit is not None:
            await self._audit.aappend(kind, fields)

    def _client(self, address: str) -> Es9Client:
        client = self._client_factory(address, self._es9)
        self.clients.append(client)
        return client

    async def _card(self, function: str, call: Awaitable[_T], **fields: Any) -> _T:
        try:
            result = await call
        except EsimError as exc:
            await self._log("es10", {"function": function, "ok": False, "error": str(exc), **fields})
            raise
        await self._log("es10", {"function": function, "ok": True, **fields})
        return result

    async def _server(self, client: Es9Client, function: str, call: Awaitable[_T]) -> _T:
        try:
            result = await call
        except Es9Error as exc:
            await self._log(
                "es9",
                {
                    "function": function,
                    "ok": False,
                    "smdp": client.smdp_address,
                    "error": str(exc),
                    "error_kind": type(exc).__name__,
                },
            )
            raise
        await self._log("es9", {"function": function, "ok": True, "smdp": client.smdp_address})
        return result

    # --- download ------------------------------------------------------------------------

    async def download(self, code: ActivationCode, *, confirmation_code: str | None = None) -> DownloadResult:
        """Download and install the profile ``code`` names; then deliver the pending notifications.

        Raises :class:`DownloadError` (audited; the session cancelled where possible). The new
        profile is installed disabled; enabling it is the caller's decision.
        """
        await self._log(
            "download", {"step": "start", "smdp": code.smdp_address, "matching_id": code.matching_id}
        )
        client = self._client(code.smdp_address)
        async with IsdrSession(self._transport, segment_size=self._segment_size) as session:
            result = await self._download(session, client, code, confirmation_code)
        report = await self.deliver_notifications()
        await self._log(
            "download",
            {
                "step": "done",
                "ok": True,
                "iccid": result.iccid,
                "transaction_id": result.transaction_id,
                "notifications_delivered": list(report.delivered),
                "notifications_pending": list(report.pending),
            },
        )
        return DownloadResult(result.iccid, result.aid, result.transaction_id, result.smdp_address, report)

    async def _fail(
        self,
        run: _Run,
        step: str,
        exc: BaseException | str,
        reason: es10b.CancelSessionReason | None,
        *,
        cancelled: str = "no session to cancel",
    ) -> DownloadError:
        """Cancel the session (card, then server) if ``reason`` is given; audit; the error to raise."""
        session, client, transaction_id = run.session, run.client, run.transaction_id
        tid = transaction_id.hex().upper() if transaction_id is not None else None
        if reason is not None and transaction_id is not None:
            cancelled = await self._cancel(session, client, transaction_id, reason)
        message = str(exc)
        await self._log(
            "download",
            {
                "step": "failed",
                "ok": False,
                "failed_step": step,
                "error": message,
                "transaction_id": tid,
                "cancelled": cancelled,
            },
        )
        log.warning(
            "profile download from %s failed at %s: %s (%s)", client.smdp_address, step, message, cancelled
        )
        return DownloadError(step, message, cancelled=cancelled, transaction_id=tid)

    async def _cancel(
        self,
        session: IsdrSession,
        client: Es9Client,
        transaction_id: bytes,
        reason: es10b.CancelSessionReason,
    ) -> str:
        tid = transaction_id.hex().upper()
        fields: dict[str, Any] = {"transaction_id": tid, "reason": reason.name}
        try:
            response = await self._card(
                "CancelSession", session.cancel_session(transaction_id, reason), transaction_id=tid
            )
        except EsimError as exc:
            what = f"card CancelSession failed: {exc}; SM-DP+ not told"
            await self._log("cancel_session", {**fields, "card": False, "smdp": False, "error": str(exc)})
            return what
        if not response.ok:
            code = str(getattr(response.error, "name", response.error))
            await self._log("cancel_session", {**fields, "card": False, "smdp": False, "error": code})
            return f"card holds no session to cancel ({code}); SM-DP+ not told"
        try:
            await self._server(client, "cancelSession", client.cancel_session(tid, response.der))
        except Es9Error as exc:
            await self._log("cancel_session", {**fields, "card": True, "smdp": False, "error": str(exc)})
            return f"cancelled on the card; SM-DP+ cancelSession failed: {exc}"
        await self._log("cancel_session", {**fields, "card": True, "smdp": True})
        return "cancelled on the card and at the SM-DP+"

    async def _download(
        self, session: IsdrSession, client: Es9Client, code: ActivationCode, confirmation_code: str | None
    ) -> DownloadResult:
        run = _Run(session, client)
        step = "GetEuiccChallenge"
        try:
            challenge = await self._card(step, session.get_euicc_challenge())
            step = "GetEuiccInfo1"
            info1 = await self._card(step, session.get_euicc_info1_der())
        except EsimError as exc:
            raise await self._fail(run, step, exc, None) from exc

        step = "initiateAuthentication"
        try:
            init = await self._server(client, step, client.initiate_authentication(challenge, info1))
        except Es9Error as exc:
            raise await self._fail(run, step, exc, None) from exc
        try:
            signed1 = es10b.ServerSigned1.decode(init.server_signed1)
        except es10.Es10Error as exc:
            raise await self._fail(run, step, exc, None) from exc
        problem = None
        if signed1.euicc_challenge != challenge:
            problem = "serverSigned1 does not carry the card's challenge"
        elif signed1.server_address.lower() != code.smdp_address.lower():
            problem = (
                f"serverSigned1 names {signed1.server_address!r}, the activation code {code.smdp_address!r}"
            )
        elif signed1.transaction_id.hex().upper() != init.transaction_id.upper():
            problem = "serverSigned1's transactionId is not the answer's transactionId"
        if problem is not None:
            await self._log("download", {"step": "check", "ok": False, "error": problem})
            raise await self._fail(run, step, problem, None)
        tid = run.transaction_id = signed1.transaction_id
        tid_text = init.transaction_id

        step = "AuthenticateServer"
        request = es10b.AuthenticateServerRequest(
            init.server_signed1,
            init.server_signature1,
            init.euicc_ci_pkid_to_be_used,
            init.server_certificate,
            code.matching_id,
            tac=self._es9.tac,
        )
        try:
            auth = await self._card(step, session.authenticate_server(request), transaction_id=tid_text)
        except EsimError as exc:
            raise await self._fail(run, step, exc, es10b.CancelSessionReason.undefinedReason) from exc
        if not auth.ok:
            # The card refused the server (certificate, signature, challenge): it opened no session,
            # so there is no signed cancellation to send; the SM-DP+'s session expires on its own.
            raise await self._fail(
                run,
                step,
                f"the card refused the SM-DP+: {auth.error_name}",
                es10b.CancelSessionReason.undefinedReason,
            )

        step = "authenticateClient"
        try:
            authed = await self._server(client, step, client.authenticate_client(tid_text, auth.der))
        except Es9Error as exc:
            reason = (
                es10b.CancelSessionReason.timeout
                if isinstance(exc, Es9LinkError)
                else es10b.CancelSessionReason.undefinedReason
            )
            raise await self._fail(run, step, exc, reason) from exc
        iccid = _metadata_iccid(authed.profile_metadata)
        await self._log("download", {"step": "profile", "iccid": iccid, "transaction_id": tid_text})

        step = "PrepareDownload"
        hash_cc = None
        try:
            if es10b.PrepareDownloadRequest.cc_required(authed.smdp_signed2):
                if not confirmation_code:
                    raise await self._fail(
                        run,
                        step,
                        "the SM-DP+ requires a confirmation code and none was given",
                        es10b.CancelSessionReason.endUserRejection,
                    )
                hash_cc = _hash_cc(confirmation_code, tid)
            prepare = es10b.PrepareDownloadRequest(
                authed.smdp_signed2, authed.smdp_signature2, authed.smdp_certificate, hash_cc
            )
            prepared = await self._card(step, session.prepare_download(prepare), transaction_id=tid_text)
        except DownloadError:
            raise
        except EsimError as exc:
            raise await self._fail(run, step, exc, es10b.CancelSessionReason.undefinedReason) from exc
        if not prepared.ok:
            raise await self._fail(
                run,
                step,
                f"the card refused the binding: {prepared.error_name}",
                es10b.CancelSessionReason.undefinedReason,
            )

        step = "getBoundProfilePackage"
        try:
            bpp = await self._server(client, step, client.get_bound_profile_package(tid_text, prepared.der))
        except Es9Error as exc:
            reason = (
                es10b.CancelSessionReason.timeout
                if isinstance(exc, Es9LinkError)
                else es10b.CancelSessionReason.undefinedReason
            )
            raise await self._fail(run, step, exc, reason) from exc
        try:
            pieces = es10b.split_bound_profile_package(bpp)
        except es10.Es10Error as exc:
            raise await self._fail(run, step, exc, es10b.CancelSessionReason.loadBppExecutionError) from exc

        step = "LoadBoundProfilePackage"
        pir: es10b.ProfileInstallationResult | None = None
        sent = 0
        try:
            for index, piece in enumerate(pieces):
                pir = await session.load_bpp_piece(piece, index)
                sent = index + 1
                if pir is not None:
                    break
        except EsimError as exc:
            await self._log(
                "es10",
                {
                    "function": step,
                    "ok": False,
                    "error": str(exc),
                    "pieces_sent": sent,
                    "pieces": len(pieces),
                    "transaction_id": tid_text,
                },
            )
            # The card may have ended the session itself (installFailedDueToInterruption); ask it.
            raise await self._fail(run, step, exc, es10b.CancelSessionReason.loadBppExecutionError) from exc
        fields: dict[str, Any] = {"pieces_sent": sent, "pieces": len(pieces), "transaction_id": tid_text}
        if pir is None:
            await self._log(
                "es10", {"function": step, "ok": False, "error": "no ProfileInstallationResult", **fields}
            )
            raise await self._fail(
                run,
                step,
                "the card answered no ProfileInstallationResult",
                es10b.CancelSessionReason.loadBppExecutionError,
            )
        if not pir.ok:
            await self._log("es10", {"function": step, "ok": False, "error": pir.error_name, **fields})
            # The result ends the session on the card; the SM-DP+ learns it from the notification.
            report = await self.deliver_notifications()
            told = "delivered" if report.delivered and not report.pending else "NOT delivered"
            raise await self._fail(
                run,
                step,
                f"the card refused the profile: {pir.error_name}",
                None,
                cancelled=f"result notification {told} to the SM-DP+",
            )
        await self._log("es10", {"function": step, "ok": True, "iccid": pir.iccid, **fields})
        if pir.iccid is None or pir.aid is None:
            raise await self._fail(run, step, "the result names no profile", None)
        return DownloadResult(pir.iccid, pir.aid, tid_text, code.smdp_address)

    # --- notifications ------------------------------------------------------------------

    async def deliver_notifications(self) -> NotificationReport:
        """Send every pending notification to its SM-DP+; remove each from the card once delivered."""
        delivered: list[int] = []
        pending: list[int] = []
        clients: dict[str, Es9Client] = {}
        async with IsdrSession(self._transport, segment_size=self._segment_size) as session:
            listing = await self._card("RetrieveNotificationsList", session.retrieve_notifications())
            for der in listing.notifications:
                seq, address, iccid = es10b.pending_notification_address(der)
                fields: dict[str, Any] = {"notification_seq": seq, "smdp": address, "iccid": iccid}
                client = clients.get(address.lower())
                if client is None:
                    client = clients[address.lower()] = self._client(address)
                try:
                    await self._server(client, "handleNotification", client.handle_notification(der))
                except Es9Error as exc:
                    pending.append(seq)
                    await self._log("notification", {**fields, "delivered": False, "error": str(exc)})
                    log.warning(
                        "notification %s for %s not delivered (kept on the card): %s", seq, address, exc
                    )
                    continue
                try:
                    await self._card("NotificationSent", session.notification_sent(seq), notification_seq=seq)
                except EsimError as exc:
                    pending.append(seq)
                    await self._log(
                        "notification", {**fields, "delivered": True, "removed": False, "error": str(exc)}
                    )
                    log.warning("notification %s delivered but not removed from the card: %s", seq, exc)
                    continue
                delivered.append(seq)
                await self._log("notification", {**fields, "delivered": True, "removed": True})
        await self._log("notifications", {"delivered": delivered, "pending": pending})
        return NotificationReport(tuple(delivered), tuple(pending))
