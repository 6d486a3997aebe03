"""ProfileManager: executes profile operations and policy decisions on the eUICC.

This is the composition point between the policy and the card. It takes an abstract
:class:`~tcu.esim.session.ApduTransport` (``tcu.modem.apdu.AtApduTransport`` on a vehicle,
``sim.euicc.EuiccTransport`` in tests), so ``tcu.esim`` never imports ``tcu.modem``.
Each operation opens its own ISD-R channel (a fresh channel after a mute card or a modem
reset) and closes it afterwards.

Rules kept here:

* the card state is re-read after any change and after any error; a switch
  (:meth:`ProfileManager.execute`) reads the profile list once, after the enable, to verify it: it
  does not read first to decide, because the card itself answers ``profileNotInDisabledState``
  when the target is already the enabled one (then nothing changed and the read confirms it);
  :meth:`~ProfileManager.enable` from the CLI still reads before and after;
* after a change the card must report exactly one enabled profile, otherwise
  :class:`CardStateError` (and the audit log shows the listing);
* every decision and every ES10 call (with outcome) goes to the audit log, if one is given;
* ``after_switch`` (e.g. ``Modem.after_profile_switch`` from the modem profile) runs after
  a successful enable so the modem re-reads the SIM.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from tcu.errors import EsimError
from tcu.esim import es10
from tcu.esim.audit import AuditLog
from tcu.esim.policy import Decision, DecisionKind
from tcu.esim.session import ApduTransport, Es10ResultError, IsdrSession

__all__ = ["CardStateError", "ProfileManager", "SwitchOutcome"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class CardStateError(EsimError):
    """The card reports an impossible state (e.g. two enabled profiles)."""


@dataclass(frozen=True, slots=True)
class SwitchOutcome:
    ok: bool
    enabled_iccid: str | None
    error: str | None = None


def _profile_fields(profiles: tuple[es10.ProfileInfo, ...]) -> list[dict[str, Any]]:
    return [
        {"iccid": p.iccid, "state": p.state.name if p.state is not None else None, "name": p.profile_name}
        for p in profiles
    ]


class ProfileManager:
    """Profile operations over an :class:`ApduTransport`, audited."""

    def __init__(
        self,
        transport: ApduTransport,
        *,
        audit: AuditLog | None = None,
        refresh: bool = True,
        after_switch: Callable[[], Awaitable[None]] | None = None,
        segment_size: int = 120,
    ) -> None:
        self._transport = transport
        self._audit = audit
        self._refresh = refresh
        self._after_switch = after_switch
        self._segment_size = segment_size

    @property
    def transport(self) -> ApduTransport:
        return self._transport

    @property
    def audit(self) -> AuditLog | None:
        return self._audit

    async def _log(self, kind: str, fields: dict[str, Any]) -> None:
        if self._audit is not None:
            await self._audit.aappend(kind, fields)

    async def _es10(self, function: str, call: Callable[[IsdrSession], Awaitable[_T]], **fields: Any) -> _T:
        try:
            async with IsdrSession(self._transport, segment_size=self._segment_size) as session:
                result = await call(session)
        except EsimError as exc:
            await self._log("es10", {"function": function, "ok": False, "error": str(exc), **fields})
            raise
        await self._log("es10", {"function": function, "ok": True, **fields})
        return result

    # --- reads --------------------------------------------------------------------------

    async def eid(self) -> str:
        return await self._es10("GetEID", lambda s: s.get_eid())

    async def euicc_info(self) -> es10.EuiccInfo2:
        return await self._es10("GetEuiccInfo2", lambda s: s.get_euicc_info2())

    async def profiles(self) -> tuple[es10.ProfileInfo, ...]:
        profiles = await self._es10("GetProfilesInfo", lambda s: s.list_profiles())
        if self._audit is not None:
            await self._log("card_state", {"profiles": _profile_fields(profiles)})
        return profiles

    async def enabled(self) -> es10.ProfileInfo | None:
        """The enabled profile (None if none); :class:`CardStateError` if more than one."""
        return (await self.state())[1]

    async def state(self) -> tuple[tuple[es10.ProfileInfo, ...], es10.ProfileInfo | None]:
        """All profiles and the enabled one, from one read; :class:`CardStateError` if two are enabled."""
        profiles = await self.profiles()
        enabled = [p for p in profiles if p.state is es10.ProfileState.enabled]
        if len(enabled) > 1:
            raise CardStateError(
                f"card reports {len(enabled)} enabled profiles: {[p.iccid for p in enabled]}"
            )
        return profiles, enabled[0] if enabled else None

    async def notifications(self) -> tuple[es10.NotificationMetadata, ...]:
        return await self._es10("ListNotification", lambda s: s.list_notifications())

    # --- changes ------------------------------------------------------------------------

    async def enable(self, iccid: str) -> None:
        """Enable ``iccid`` (the card disables the current one); re-reads state around it."""
        await self.enabled()
        await self._enable_read(iccid)

    async def _enable_read(self, iccid: str) -> None:
        """Enable ``iccid``, the card state having just been read; re-reads it after."""
        ref = es10.ProfileRef(iccid=iccid)
        try:
            await self._es10(
                "EnableProfile", lambda s: s.enable_profile(ref, refresh=self._refresh), iccid=iccid
            )
        except EsimError:
            await self._reread_after_error()
            raise
        current = await self.enabled()
        if current is None or current.iccid != iccid:
            now = current.iccid if current else "none"
            raise CardStateError(f"EnableProfile {iccid} answered ok but the card reports {now} enabled")
        if self._after_switch is not None:
            await self._after_switch()

    async def _switch(self, iccid: str) -> None:
        """Enable ``iccid`` without reading first; one read after, to verify (see the module rules)."""
        ref = es10.ProfileRef(iccid=iccid)
        changed = True
        fields: dict[str, Any] = {"function": "EnableProfile", "iccid": iccid}
        try:
            async with IsdrSession(self._transport, segment_size=self._segment_size) as session:
                await session.enable_profile(ref, refresh=self._refresh)
        except Es10ResultError as exc:
            already = exc.result is es10.EnableResult.profileNotInDisabledState
            note = {"note": "already enabled, checked by the read that follows"} if already else {}
            await self._log("es10", {**fields, "ok": False, "error": str(exc), **note})
            if not already:
                await self._reread_after_error()
                raise
            changed = False
        except EsimError as exc:
            await self._log("es10", {**fields, "ok": False, "error": str(exc)})
            await self._reread_after_error()
            raise
        else:
            await self._log("es10", {**fields, "ok": True})
        current = await self.enabled()
        if current is None or current.iccid != iccid:
            now = current.iccid if current else "none"
            raise CardStateError(f"EnableProfile {iccid} answered ok but the card reports {now} enabled")
        if changed and self._after_switch is not None:
            await self._after_switch()

    async def disable(self, iccid: str) -> None:
        ref = es10.ProfileRef(iccid=iccid)
        await self.enabled()
        try:
            await self._es10(
                "DisableProfile", lambda s: s.disable_profile(ref, refresh=self._refresh), iccid=iccid
            )
        except EsimError:
            await self._reread_after_error()
            raise
        await self.enabled()

    async def delete(self, iccid: str) -> None:
        ref = es10.ProfileRef(iccid=iccid)
        await self.enabled()
        try:
            await self._es10("DeleteProfile", lambda s: s.delete_profile(ref), iccid=iccid)
        except EsimError:
            await self._reread_after_error()
            raise
        await self.enabled()

    async def set_nickname(self, iccid: str, nickname: str) -> None:
        await self._es10(
            "SetNickname", lambda s: s.set_nickname(iccid, nickname), iccid=iccid, nickname=nickname
        )

    async def acknowledge(self, seq: int) -> None:
        await self._es10("NotificationSent", lambda s: s.notification_sent(seq), notification_seq=seq)

    async def _reread_after_error(self) -> None:
        try:
            await self.enabled()
        except EsimError as exc:
            log.warning("re-reading the card after an error failed too: %s", exc)

    # --- policy decisions -------------------------------------------------------------

    async def execute(
        self, decision: Decision, *, prepare: Callable[[], Awaitable[None]] | None = None
    ) -> SwitchOutcome:
        """Audit ``decision`` and carry it out; never raises for card errors (see ``error``).

        ``prepare`` runs after the decision is audited and before the enable (a ``download``
        decision fetches the profile there); its :class:`EsimError` fails the decision like a
        card refusal.
        """
        await self._log("decision", decision.to_fields())
        if decision.kind is DecisionKind.hold or decision.target_iccid is None:
            return SwitchOutcome(ok=True, enabled_iccid=None)
        target = decision.target_iccid
        try:
            if prepare is not None:
                await prepare()
            await self._switch(target)
        except EsimError as exc:
            log.warning("decision %s to %s failed: %s", decision.kind.name, decision.target_iccid, exc)
            enabled_iccid = None
            try:
                now = await self.enabled()
                enabled_iccid = now.iccid if now else None
            except EsimError:
                pass
            await self._log("outcome", {"ok": False, "error": str(exc), "enabled": enabled_iccid})
            return SwitchOutcome(ok=False, enabled_iccid=enabled_iccid, error=str(exc))
        await self._log("outcome", {"ok": True, "enabled": decision.target_iccid})
        return SwitchOutcome(ok=True, enabled_iccid=decision.target_iccid)
