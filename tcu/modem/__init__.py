"""Modem adapter: AT channel over a tty/pty, registration, signal, GNSS, eUICC APDUs via AT.

Public API::

    AtChannel(AtConfig(port="/dev/ttyUSB2"))      async with; .command("AT+CSQ") -> lines; .subscribe(...)
    Modem(channel, profile)                      .registration(), .signal(), .set_radio(on),
                                                 .after_profile_switch(), .wait_registered(t), .gnss_fixes()
    AtApduTransport(channel, profile)            an ApduTransport for tcu.esim (structural typing)
    ModemProfile, PRESETS, modem_profile(name)   modem quirks as data
"""

from tcu.modem.apdu import AtApduTransport, ModemApduError
from tcu.modem.at import AtChannel, AtCommandError, AtConfig, AtTimeoutError, CmeError, UrcSubscription
from tcu.modem.device import Modem, Registration
from tcu.modem.parse import (
    AccessTechnology,
    GnssFix,
    ModemParseError,
    NmeaChecksumError,
    RegistrationStatus,
    SignalQuality,
    parse_nmea,
)
from tcu.modem.profiles import PRESETS, ModemProfile, modem_profile

__all__ = [
    "PRESETS",
    "AccessTechnology",
    "AtApduTransport",
    "AtChannel",
    "AtCommandError",
    "AtConfig",
    "AtTimeoutError",
    "CmeError",
    "GnssFix",
    "Modem",
    "ModemApduError",
    "ModemParseError",
    "ModemProfile",
    "NmeaChecksumError",
    "Registration",
    "RegistrationStatus",
    "SignalQuality",
    "UrcSubscription",
    "modem_profile",
    "parse_nmea",
]
