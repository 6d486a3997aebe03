"""The cellular world of the border drive: the card's profiles, each country's networks, and the
simulated eUICC and modem built from them.

Both the border drive (:mod:`sim.border`) and the modem's child process
(:mod:`sim.modem_process`) build the card and the modem from here, so neither has to
import the other.
"""

from __future__ import annotations

from dataclasses import dataclass

from sim.euicc import EuiccConfig, ProfileSpec, SimulatedEuicc
from sim.modem import SimModemConfig, SimulatedModem
from tcu.esim import ProfileClass

__all__ = [
    "COUNTRY_PLMNS",
    "FAILING_ATTACH",
    "INITIAL_PROFILE",
    "PROFILES",
    "BorderProfile",
    "build_card",
    "build_modem",
]


@dataclass(frozen=True, slots=True)
class BorderProfile:
    label: str
    iccid: str
    home_plmn: str
    name: str
    provider: str
    profile_class: ProfileClass = ProfileClass.operational


#: Installed profiles. The bootstrap profile's home PLMN (901 28, an international range)
#: exists in no country, so it roams everywhere.
PROFILES: tuple[BorderProfile, ...] = (
    BorderProfile(
        "bootstrap", "8988211000000000001", "90128", "Bootstrap", "Global IoT", ProfileClass.provisioning
    ),
    BorderProfile("fr-orange", "89330100001234567801", "20801", "Orange FR", "Orange"),
    BorderProfile("lu-post", "89352010001234567802", "27001", "POST Luxembourg", "POST"),
    BorderProfile("de-telekom", "89490200001234567803", "26201", "Telekom DE", "Telekom"),
)  # fmt: skip

#: The profile enabled when the car starts in Metz.
INITIAL_PROFILE = "fr-orange"

#: PLMNs (MCC+MNC) per country; a roamer attaches to the first one.
COUNTRY_PLMNS: dict[str, tuple[str, ...]] = {
    "FR": ("20810", "20801", "20820"),  # SFR, Orange, Bouygues
    "LU": ("27077", "27001", "27099"),  # Tango, POST, Orange LU
    "DE": ("26202", "26201", "26203"),  # Vodafone, Telekom, O2
}

#: (profile label, country) whose attach never completes: forces the rollback.
FAILING_ATTACH: tuple[str, str] = ("lu-post", "LU")


def _iccid(label: str) -> str:
    return next(p.iccid for p in PROFILES if p.label == label)


def build_card() -> SimulatedEuicc:
    """The eUICC with :data:`PROFILES` installed and :data:`INITIAL_PROFILE` enabled."""
    return SimulatedEuicc(
        EuiccConfig(
            profiles=tuple(
                ProfileSpec(p.iccid, p.name, p.provider, p.profile_class, enabled=p.label == INITIAL_PROFILE)
                for p in PROFILES
            )
        )
    )


def build_modem(card: SimulatedEuicc, *, country: str = "FR", attach_delay_s: float = 0.2) -> SimulatedModem:
    """A modem on a pty serving :data:`COUNTRY_PLMNS`, with :data:`FAILING_ATTACH` set (not started)."""
    modem = SimulatedModem(
        card,
        SimModemConfig(
            home_plmn={p.iccid: p.home_plmn for p in PROFILES},
            countries=dict(COUNTRY_PLMNS),
            country=country,
            attach_delay_s=attach_delay_s,
            nmea_period_s=None,
        ),
    )
    label, failing_country = FAILING_ATTACH
    modem.never_attach.add((_iccid(label), failing_country))
    return modem
