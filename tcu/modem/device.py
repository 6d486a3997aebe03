"""The modem as the agent sees it: registration, operator, signal, radio, GNSS.

Built on an :class:`~tcu.modem.at.AtChannel`; quirks come from the
:class:`~tcu.modem.profiles.ModemProfile`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from tcu.errors import ModemError
from tcu.modem.at import AtChannel, AtCommandError, CmeError
from tcu.modem.parse import (
    AccessTechnology,
    GnssFix,
    ModemParseError,
    RegistrationStatus,
    SignalQuality,
    parse_cesq,
    parse_cops,
    parse_creg,
    parse_csq,
    parse_nmea,
)
from tcu.modem.profiles import ModemProfile

__all__ = ["Modem", "Registration"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Registration:
    """Registration state with the serving PLMN (MCC/MNC only while registered)."""

    status: RegistrationStatus
    mcc: str | None = None
    mnc: str | None = None
    act: AccessTechnology | None = None
    tac: str | None = None
    cell_id: str | None = None

    @property
    def registered(self) -> bool:
        return self.status.registered

    @property
    def roaming(self) -> bool:
        return self.status.is_roaming


def _line(lines: list[str], command: str, prefix: str) -> str:
    """The answer line of ``command`` starting with ``prefix``; ModemParseError when missing."""
    line = next((item for item in lines if item.startswith(prefix)), None)
    if line is None:
        raise ModemParseError(f"{command}: no {prefix[:-1]} line in {lines!r}")
    return line


class Modem:
    """High-level modem operations over AT."""

    def __init__(self, channel: AtChannel, profile: ModemProfile) -> None:
        self.at = channel
        self.profile = profile

    async def _cmd(self, command: str, timeout_s: float | None = None) -> list[str]:
        return await self.at.command(command, timeout_s=timeout_s or self.profile.command_timeout_s)

    async def enable_registration_urcs(self) -> None:
        """``AT+CEREG=2``: URCs with TAC and cell id on every change."""
        await self._cmd("AT+CEREG=2")

    async def registration(self) -> Registration:
        """``AT+CEREG?`` and, when registered, ``AT+COPS?`` in numeric format."""
        state = parse_creg(_line(await self._cmd("AT+CEREG?"), "AT+CEREG?", "+CEREG:"), solicited=True)
        if not state.status.registered:
            return Registration(state.status, tac=state.tac, cell_id=state.cell_id, act=state.act)
        await self._cmd("AT+COPS=3,2")
        operator = parse_cops(_line(await self._cmd("AT+COPS?"), "AT+COPS?", "+COPS:"))
        return Registration(
            state.status, operator.mcc, operator.mnc, operator.act or state.act, state.tac, state.cell_id
        )

    async def signal(self) -> SignalQuality:
        """``AT+CESQ`` (LTE RSRP/RSRQ) merged with ``AT+CSQ`` (RSSI)."""
        csq = parse_csq(_line(await self._cmd("AT+CSQ"), "AT+CSQ", "+CSQ:"))
        try:
            lines = await self._cmd("AT+CESQ")
        except (AtCommandError, CmeError):
            return csq
        cesq = parse_cesq(_line(lines, "AT+CESQ", "+CESQ:"))
        return SignalQuality(csq.rssi_dbm, csq.ber, cesq.rsrq_db, cesq.rsrp_dbm)

    async def radio_on(self) -> bool:
        line = _line(await self._cmd("AT+CFUN?"), "AT+CFUN?", "+CFUN:")
        return line.split(":", 1)[1].strip().split(",")[0] == "1"

    async def set_radio(self, on: bool) -> None:
        """``AT+CFUN=1`` / ``AT+CFUN=0`` with the profile's CFUN timeout."""
        await self._cmd(f"AT+CFUN={1 if on else 0}", self.profile.cfun_timeout_s)

    async def after_profile_switch(self) -> None:
        """Run the profile's post-switch commands (radio or SIM power cycle), in order."""
        for command in self.profile.after_switch:
            timeout = self.profile.cfun_timeout_s if command.startswith("AT+CFUN") else None
            await self._cmd(command, timeout)

    async def wait_registered(self, timeout_s: float, poll_s: float = 2.0) -> Registration:
        """Wait for home or roaming registration: enables and listens to ``+CEREG`` URCs, and polls."""
        subscription = self.at.subscribe(("+CEREG",))
        deadline = time.monotonic() + timeout_s
        try:
            await self.enable_registration_urcs()
            while True:
                reg = await self.registration()
                if reg.registered:
                    return reg
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ModemError(f"not registered after {timeout_s:g} s (last state {reg.status.name})")
                with contextlib.suppress(TimeoutError):
                    await subscription.get(timeout_s=min(poll_s, remaining))
        finally:
            subscription.close()

    async def gnss_fixes(self) -> AsyncIterator[GnssFix]:
        """NMEA sentences the modem emits on the AT port, parsed; bad checksums are skipped."""
        subscription = self.at.subscribe(("$",))
        try:
            async for line in subscription:
                try:
                    fix = parse_nmea(line)
                except ModemParseError as exc:
                    log.debug("NMEA line skipped: %s", exc)
                    continue
                if fix is not None:
                    yield fix
        finally:
            subscription.close()
