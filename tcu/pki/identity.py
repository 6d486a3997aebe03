"""Who a certificate speaks for: the identity scheme shared by gRPC and MQTT.

A tcu certificate names exactly one identity in a URI subject alternative name:

* ``urn:tcu:vehicle:<VIN>`` for a vehicle (the agent's client certificate);
* ``urn:tcu:backend:<name>`` for an OEM backend calling the fleet API.

The subject common name repeats the bare name (CN=<VIN>, CN=<name>) because
Mosquitto's ``use_identity_as_username`` takes the CN as the MQTT user name.
The URI SAN is the authoritative field for gRPC: SANs are the place RFC 6125
and RFC 5280 put identities, a URN cannot be confused with a host name, and the
kind prefix keeps a backend named like a VIN from passing as that vehicle.

Names are 1-64 characters of ``[A-Za-z0-9._-]`` starting with a letter or digit
(every ISO 3779 VIN fits). They are used as file names and MQTT topic levels,
so ``/``, ``+``, ``#`` and whitespace are never allowed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from tcu.pki._errors import PkiError

__all__ = [
    "BACKEND_URI_PREFIX",
    "VEHICLE_URI_PREFIX",
    "PeerIdentity",
    "PeerKind",
    "check_name",
    "identity_from_certificate",
    "identity_uri",
]

PeerKind = Literal["vehicle", "backend"]

VEHICLE_URI_PREFIX = "urn:tcu:vehicle:"
BACKEND_URI_PREFIX = "urn:tcu:backend:"
_PREFIXES: dict[str, PeerKind] = {VEHICLE_URI_PREFIX: "vehicle", BACKEND_URI_PREFIX: "backend"}
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_name(name: str, *, what: str = "name") -> str:
    """Return ``name`` if it is a valid vehicle id or backend name, else raise :class:`PkiError`."""
    if not _NAME_RE.fullmatch(name):
        raise PkiError(
            f"invalid {what} {name!r}: use 1-64 characters of A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit"
        )
    return name


def identity_uri(kind: PeerKind, name: str) -> str:
    """The URI SAN for an identity, e.g. ``urn:tcu:vehicle:WDD1234567890ABCD``."""
    prefix = VEHICLE_URI_PREFIX if kind == "vehicle" else BACKEND_URI_PREFIX
    return prefix + check_name(name, what=f"{kind} name")


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """The identity a verified peer certificate speaks for.

    ``serial`` and ``fingerprint_sha256`` identify the certificate itself (both are
    public and safe to log); ``not_before``/``not_after`` are timezone-aware UTC.
    """

    kind: PeerKind
    name: str
    serial: int
    not_before: datetime
    not_after: datetime
    fingerprint_sha256: str

    @property
    def vehicle_id(self) -> str | None:
        """The VIN when this is a vehicle, else ``None``."""
        return self.name if self.kind == "vehicle" else None


def identity_from_certificate(cert: x509.Certificate) -> PeerIdentity | None:
    """Parse the tcu identity out of ``cert``.

    Returns ``None`` when the certificate has no SAN extension, no tcu URI, more
    than one tcu URI (ambiguous), or a URI whose name is not valid.
    """
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    except ValueError:  # a malformed extension
        return None
    found: list[tuple[PeerKind, str]] = []
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        for prefix, kind in _PREFIXES.items():
            if uri.startswith(prefix):
                found.append((kind, uri[len(prefix) :]))
    if len(found) != 1:
        return None
    kind, name = found[0]
    if not _NAME_RE.fullmatch(name):
        return None
    return PeerIdentity(
        kind=kind,
        name=name,
        serial=cert.serial_number,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(),
    )
