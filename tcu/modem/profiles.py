"""Modem quirks as data: one frozen :class:`ModemProfile` per modem family.

What differs between modems is described here and interpreted by one code path
(:mod:`tcu.modem.apdu`, :mod:`tcu.modem.device`), never by branches on a vendor name:

* ``apdu_mode``: ``"cgla"`` (``AT+CCHO``/``AT+CGLA``/``AT+CCHC``) or ``"csim"``
  (``AT+CSIM`` with MANAGE CHANNEL APDUs, for modems without logical-channel commands);
* ``ccho_prefixed``: whether ``AT+CCHO`` answers ``+CCHO: <id>`` or a bare ``<id>`` (both
  are accepted when parsing; this only documents what to expect);
* ``session_id_base``: how the session id is written (10: ``1`` or a 64-bit handle, 16: hex);
* ``after_switch``: AT commands that make the modem re-read the SIM after a profile switch
  (empty when the eUICC's REFRESH is honoured, ``AT+CFUN=0``/``AT+CFUN=1`` or
  ``AT+CFUN=4``/``AT+CFUN=1`` on modems that need a radio cycle to re-read the SIM);
* ``refresh_flag``: the refreshFlag sent with Enable/Disable;
* timeouts for ordinary commands, APDUs and ``AT+CFUN``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tcu.errors import ConfigError

__all__ = ["PRESETS", "ModemProfile", "modem_profile"]


@dataclass(frozen=True, slots=True)
class ModemProfile:
    name: str
    apdu_mode: Literal["cgla", "csim"] = "cgla"
    ccho_prefixed: bool = True
    session_id_base: int = 10
    after_switch: tuple[str, ...] = ()
    refresh_flag: bool = True
    command_timeout_s: float = 5.0
    apdu_timeout_s: float = 10.0
    cfun_timeout_s: float = 30.0


PRESETS: dict[str, ModemProfile] = {
    p.name: p
    for p in (
        # REFRESH from the eUICC is enough; +CCHO answers with a prefix.
        ModemProfile("generic"),
        # Needs a radio cycle after enable (as openpilot does on one device).
        ModemProfile("cfun-cycle", after_switch=("AT+CFUN=0", "AT+CFUN=1"), refresh_flag=False),
        # Bare session id (no +CCHO: prefix); radio off (CFUN=4) and on again after a switch.
        ModemProfile("bare-ccho", ccho_prefixed=False, after_switch=("AT+CFUN=4", "AT+CFUN=1")),
        # No logical-channel commands: APDUs through AT+CSIM.
        ModemProfile("csim-only", apdu_mode="csim", after_switch=("AT+CFUN=0", "AT+CFUN=1")),
    )
}


def modem_profile(name: str) -> ModemProfile:
    """The preset called ``name``; :class:`ConfigError` lists the known names otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown modem profile {name!r}; known: {', '.join(sorted(PRESETS))}", key="modem_profile"
        ) from None
