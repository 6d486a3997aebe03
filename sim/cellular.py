"""The cellular world of the border drive: the card's profiles, each country's networks, and the
simulated eUICC and modem built from them.

With card credentials (a folder written by pySim's ``contrib/generate_smdpp_certs.py``, see
``tools/build_smdpp.sh``) the card carries that eUICC certificate and key, so the osmo-smdpp
started with the same set trusts it, and it starts **without** a German profile: Germany is the
country where the TCU must download one (:data:`DOWNLOADED`, the TS.48 test profile osmo-smdpp
serves under :data:`DOWNLOAD_MATCHING_ID`). Its notifications then go to that SM-DP+.

Both the border drive (:mod:`sim.border`) and the modem's child process
(:mod:`sim.modem_process`) build the card and the modem from here, so neither has to
import the other.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sim.euicc import CardCredentials, EuiccConfig, ProfileSpec, SimulatedEuicc
from sim.modem import SimModemConfig, SimulatedModem
from tcu.esim import ProfileClass

__all__ = [
    "COUNTRY_PLMNS",
    "DOWNLOADED",
    "DOWNLOAD_MATCHING_ID",
    "DOWNLOAD_REPLACES",
    "FAILING_ATTACH",
    "INITIAL_PROFILE",
    "PROFILES",
    "BorderProfile",
    "build_card",
    "build_modem",
    "load_credentials",
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

#: The profile a card with credentials lacks at the start and downloads in Germany (the TS.48
#: profile osmo-smdpp serves as ``TS48V2-SAIP2-1-BERTLV-UNIQUE``; its header's ICCID).
DOWNLOADED = BorderProfile("de-ts48", "8949449999999990049", "26201", "TS.48 test profile", "osmo-smdpp")
DOWNLOAD_MATCHING_ID = "TS48V2-SAIP2-1-BERTLV-UNIQUE"
#: The installed profile that :data:`DOWNLOADED` stands in for (not on a card with credentials).
DOWNLOAD_REPLACES = "de-telekom"

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


def load_credentials(folder: str | Path) -> tuple[str, CardCredentials]:
    """``(EID, credentials)`` from a generate_smdpp_certs.py folder (the NIST P-256 files)."""
    root = Path(folder)
    euicc = (root / "eUICC" / "CERT_EUICC_ECDSA_NIST.der").read_bytes()
    ci = (root / "CertificateIssuer" / "CERT_CI_ECDSA_NIST.der").read_bytes()
    key = serialization.load_pem_private_key((root / "eUICC" / "SK_EUICC_ECDSA_NIST.pem").read_bytes(), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{root}/eUICC/SK_EUICC_ECDSA_NIST.pem is not an EC private key")
    ski = x509.load_der_x509_certificate(ci).extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    eid = x509.load_der_x509_certificate(euicc).subject.get_attributes_for_oid(x509.NameOID.SERIAL_NUMBER)
    credentials = CardCredentials(
        ci_pkid=ski.value.digest,
        ci_certificate=ci,
        eum_certificate=(root / "EUM" / "CERT_EUM_ECDSA_NIST.der").read_bytes(),
        euicc_certificate=euicc,
        euicc_key=key,
    )
    return str(eid[0].value), credentials


def build_card(
    credentials: str | Path | None = None, notification_address: str | None = None
) -> SimulatedEuicc:
    """The eUICC with :data:`PROFILES` installed and :data:`INITIAL_PROFILE` enabled.

    With ``credentials`` (a generate_smdpp_certs.py folder) the card has that identity and lacks
    :data:`DOWNLOAD_REPLACES` (module docstring); ``notification_address`` is where its
    notifications go.
    """
    profiles = tuple(
        ProfileSpec(p.iccid, p.name, p.provider, p.profile_class, enabled=p.label == INITIAL_PROFILE)
        for p in PROFILES
        if credentials is None or p.label != DOWNLOAD_REPLACES
    )
    if credentials is None:
        return SimulatedEuicc(EuiccConfig(profiles=profiles))
    eid, card_credentials = load_credentials(credentials)
    config = EuiccConfig(eid=eid, profiles=profiles, credentials=card_credentials)
    if notification_address:
        config = dataclasses.replace(config, notification_address=notification_address)
    return SimulatedEuicc(config)


def build_modem(card: SimulatedEuicc, *, country: str = "FR", attach_delay_s: float = 0.2) -> SimulatedModem:
    """A modem on a pty serving :data:`COUNTRY_PLMNS`, with :data:`FAILING_ATTACH` set (not started)."""
    modem = SimulatedModem(
        card,
        SimModemConfig(
            home_plmn={p.iccid: p.home_plmn for p in (*PROFILES, DOWNLOADED)},
            countries=dict(COUNTRY_PLMNS),
            country=country,
            attach_delay_s=attach_delay_s,
            nmea_period_s=None,
        ),
    )
    label, failing_country = FAILING_ATTACH
    modem.never_attach.add((_iccid(label), failing_country))
    return modem
