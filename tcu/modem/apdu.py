"""APDUs to the eUICC through the modem's AT port (3GPP TS 27.007 +CCHO/+CGLA/+CCHC/+CSIM).

:class:`AtApduTransport` satisfies :class:`tcu.esim.session.ApduTransport` structurally
(the packages do not import each other). With ``apdu_mode="cgla"``::

    AT+CCHO="<AID>"                 -> +CCHO: <sessionid>   (or a bare <sessionid>)
    AT+CGLA=<sid>,<len*2>,"<hex>"   -> +CGLA: <len*2>,"<response hex + SW>"
    AT+CCHC=<sid>

The session id is a handle, not a channel number: APDUs go with CLA channel bits 0 and
the modem patches them. With ``apdu_mode="csim"`` the transport opens the logical channel
itself (MANAGE CHANNEL and SELECT through ``AT+CSIM``) and patches CLA.
"""

from __future__ import annotations

import logging

from tcu.errors import ModemError
from tcu.modem.at import AtChannel
from tcu.modem.profiles import ModemProfile

__all__ = ["AtApduTransport", "ModemApduError"]

log = logging.getLogger(__name__)


class ModemApduError(ModemError):
    """The modem's answer to an APDU command was malformed or refused."""


def _info(lines: list[str], prefix: str, command: str, *, bare_ok: bool = False) -> str:
    for line in lines:
        if line.upper().startswith(prefix + ":"):
            return line.split(":", 1)[1].strip()
    if bare_ok and lines:
        return lines[-1].strip()
    raise ModemApduError(f"{command}: no {prefix} line in answer {lines!r}")


class AtApduTransport:
    """An ApduTransport over an open :class:`AtChannel`, configured by a :class:`ModemProfile`."""

    def __init__(self, channel: AtChannel, profile: ModemProfile) -> None:
        self._at = channel
        self.profile = profile

    def _format_sid(self, handle: int) -> str:
        return f"{handle:X}" if self.profile.session_id_base == 16 else str(handle)

    async def open_channel(self, aid: bytes) -> int:
        if self.profile.apdu_mode == "csim":
            return await self._csim_open(aid)
        command = f'AT+CCHO="{aid.hex().upper()}"'
        lines = await self._at.command(command, timeout_s=self.profile.apdu_timeout_s)
        text = _info(lines, "+CCHO", command, bare_ok=True).strip('"')
        try:
            return int(text, self.profile.session_id_base)
        except ValueError:
            raise ModemApduError(f"{command}: session id {text!r} is not a number") from None

    async def transmit(self, handle: int, apdu: bytes) -> bytes:
        if self.profile.apdu_mode == "csim":
            patched = bytes([(apdu[0] & 0xFC) | (handle & 0x03)]) + apdu[1:]
            return await self._csim(patched)
        command = f'AT+CGLA={self._format_sid(handle)},{len(apdu) * 2},"{apdu.hex().upper()}"'
        lines = await self._at.command(command, timeout_s=self.profile.apdu_timeout_s)
        return self._parse_hex_answer(lines, "+CGLA", command)

    async def close_channel(self, handle: int) -> None:
        if self.profile.apdu_mode == "csim":
            await self._csim(bytes([0x00, 0x70, 0x80, handle]))
            return
        await self._at.command(f"AT+CCHC={self._format_sid(handle)}", timeout_s=self.profile.apdu_timeout_s)

    # --- helpers ------------------------------------------------------------------------

    def _parse_hex_answer(self, lines: list[str], prefix: str, command: str) -> bytes:
        text = _info(lines, prefix, command)
        length_text, _, hex_text = text.partition(",")
        hex_text = hex_text.strip().strip('"')
        try:
            length = int(length_text)
            data = bytes.fromhex(hex_text)
        except ValueError:
            raise ModemApduError(f"{command}: malformed answer {text!r}") from None
        if length != len(hex_text):
            raise ModemApduError(f"{command}: answer announces {length} hex digits, has {len(hex_text)}")
        return data

    async def _csim(self, apdu: bytes) -> bytes:
        command = f'AT+CSIM={len(apdu) * 2},"{apdu.hex().upper()}"'
        lines = await self._at.command(command, timeout_s=self.profile.apdu_timeout_s)
        return self._parse_hex_answer(lines, "+CSIM", command)

    async def _csim_open(self, aid: bytes) -> int:
        answer = await self._csim(bytes([0x00, 0x70, 0x00, 0x00, 0x01]))
        if len(answer) != 3 or answer[-2:] != b"\x90\x00":
            raise ModemApduError(f"MANAGE CHANNEL open via AT+CSIM: card answered {answer.hex().upper()}")
        channel = answer[0]
        answer = await self._csim(bytes([channel, 0xA4, 0x04, 0x00, len(aid)]) + aid)
        if answer[-2:-1] == b"\x61":
            answer = await self._csim(bytes([channel, 0xC0, 0x00, 0x00, answer[-1]]))
        if answer[-2:] != b"\x90\x00":
            await self._csim(bytes([0x00, 0x70, 0x80, channel]))
            raise ModemApduError(
                f"SELECT {aid.hex().upper()} via AT+CSIM: card answered {answer.hex().upper()}"
            )
        return channel
