"""A development PKI: a local CA, ingest server, vehicle and backend certificates, a CRL
and the backend's command-signing key.

This is for development, tests, demos and small self-hosted fleets. Production
users bring their own CA (an HSM-backed issuing CA, short-lived certificates,
OCSP or CRL distribution): everything else in :mod:`tcu.pki` only needs PEM
files and the identity scheme of :mod:`tcu.pki.identity`.

Layout of a :class:`DevPki` directory (private keys 0600, certificates 0644,
directories created here 0700)::

    DIR/ca.pem  ca.key                 EC P-256 CA (CA:TRUE, pathlen 0, keyCertSign+cRLSign)
    DIR/crl.pem                        CRL signed by the CA (revoked vehicle certificates)
    DIR/server.pem  server.key         ingest/MQTT server (serverAuth; DNS and IP SANs)
    DIR/vehicles/<VIN>.pem  <VIN>.key  clientAuth; CN=<VIN>, URI SAN urn:tcu:vehicle:<VIN>
    DIR/backends/<name>.pem <name>.key clientAuth; CN=<name>, URI SAN urn:tcu:backend:<name>
    DIR/command-signing.key            Ed25519 private key of the backend (signs vehicle commands)
    DIR/command-verify.pem             its public key (installed on vehicles)

Existing private keys are never overwritten unless ``force=True``. Each file is
written to a temporary file in the same directory, fsynced and renamed into place.
All methods do blocking file I/O; call them from a thread when an event loop runs.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tcu.fsutil import write_atomic
from tcu.pki._errors import PkiError
from tcu.pki.identity import PeerKind, check_name, identity_from_certificate, identity_uri

__all__ = ["CertificateInfo", "DevPki", "load_certificate", "load_crl"]

log = logging.getLogger(__name__)

_KEY_MODE = 0o600
_CERT_MODE = 0o644
_DIR_MODE = 0o700
_BACKDATE = dt.timedelta(minutes=5)  # tolerate small clock skew between issuer and peers


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_atomic(path: Path, data: bytes, mode: int, *, force: bool) -> None:
    if path.exists() and not force:
        raise PkiError("exists; refusing to overwrite it (use --force / force=True)", path=str(path))
    write_atomic(path, data, mode=mode)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise PkiError("missing (run `tcu pki init` first?)", path=str(path)) from exc
    except OSError as exc:
        raise PkiError(f"cannot read: {exc.strerror}", path=str(path)) from exc


def load_certificate(path: str | os.PathLike[str]) -> x509.Certificate:
    """Load one PEM certificate; raises :class:`PkiError` naming the file."""
    p = Path(path)
    try:
        return x509.load_pem_x509_certificate(_read(p))
    except ValueError as exc:
        raise PkiError(f"not a PEM certificate: {exc}", path=str(p)) from exc


def load_crl(path: str | os.PathLike[str]) -> x509.CertificateRevocationList:
    """Load a PEM CRL; raises :class:`PkiError` naming the file."""
    p = Path(path)
    try:
        return x509.load_pem_x509_crl(_read(p))
    except ValueError as exc:
        raise PkiError(f"not a PEM CRL: {exc}", path=str(p)) from exc


def _pem_key(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """One certificate of a :class:`DevPki`, as ``tcu pki show`` lists it."""

    role: str  # "ca", "server", "vehicle" or "backend"
    name: str
    path: Path
    serial: int
    not_before: dt.datetime
    not_after: dt.datetime
    revoked: bool


class DevPki:
    """A development PKI rooted at ``directory`` (see the module docstring for the layout).

    Paths are available before anything exists; :meth:`init` creates the CA, CRL,
    server certificate and command-signing key, :meth:`issue_vehicle` and
    :meth:`issue_backend` add identities, :meth:`revoke_vehicle` adds to the CRL.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    # --- paths -------------------------------------------------------------------------------
    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def crl(self) -> Path:
        return self.directory / "crl.pem"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"

    @property
    def command_signing_key(self) -> Path:
        return self.directory / "command-signing.key"

    @property
    def command_verify_key(self) -> Path:
        return self.directory / "command-verify.pem"

    def vehicle(self, vin: str) -> tuple[Path, Path]:
        """``(certificate, key)`` paths of vehicle ``vin`` (they may not exist yet)."""
        check_name(vin, what="vehicle id")
        return self.directory / "vehicles" / f"{vin}.pem", self.directory / "vehicles" / f"{vin}.key"

    def backend(self, name: str) -> tuple[Path, Path]:
        """``(certificate, key)`` paths of backend ``name`` (they may not exist yet)."""
        check_name(name, what="backend name")
        return self.directory / "backends" / f"{name}.pem", self.directory / "backends" / f"{name}.key"

    def vehicles(self) -> list[str]:
        """VINs that have a certificate, sorted."""
        return self._names("vehicles")

    def backends(self) -> list[str]:
        """Backend names that have a certificate, sorted."""
        return self._names("backends")

    def _names(self, sub: str) -> list[str]:
        folder = self.directory / sub
        if not folder.is_dir():
            return []
        return sorted(p.stem for p in folder.glob("*.pem"))

    def _mkdir(self, path: Path) -> None:
        if not path.is_dir():
            path.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
            os.chmod(path, _DIR_MODE)

    # --- creation ----------------------------------------------------------------------------
    def init(
        self,
        *,
        server_dns: Sequence[str] = ("localhost",),
        server_ips: Sequence[str] = ("127.0.0.1",),
        ca_name: str = "tcu development CA",
        ca_valid_days: int = 3650,
        valid_days: int = 825,
        force: bool = False,
    ) -> None:
        """Create the CA, an empty CRL, the server certificate and the command-signing key pair.

        Raises :class:`PkiError` if any of these files exists and ``force`` is false.
        Replacing the CA (``force``) invalidates every certificate it issued before.
        """
        if not force:
            for path in (self.ca_key, self.ca_cert, self.server_key, self.command_signing_key):
                if path.exists():
                    raise PkiError("exists; the PKI is already initialised (use --force)", path=str(path))
        self._mkdir(self.directory)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
        now = _now()
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + dt.timedelta(days=ca_valid_days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        _write_atomic(self.ca_key, _pem_key(key), _KEY_MODE, force=force)
        _write_atomic(self.ca_cert, cert.public_bytes(serialization.Encoding.PEM), _CERT_MODE, force=True)
        self._write_crl(cert, key, revoked=(), number=1)
        self.issue_server(server_dns, server_ips, valid_days=valid_days, force=force)
        self.create_command_keys(force=force)
        log.info("initialised development PKI in %s", self.directory)

    def _load_ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        cert = load_certificate(self.ca_cert)
        try:
            key = serialization.load_pem_private_key(_read(self.ca_key), password=None)
        except (ValueError, TypeError) as exc:
            raise PkiError("not an unencrypted PEM private key", path=str(self.ca_key)) from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError("the CA key is not an EC key", path=str(self.ca_key))
        return cert, key

    def _issue(
        self,
        *,
        cert_path: Path,
        key_path: Path,
        common_name: str,
        san: list[x509.GeneralName],
        eku: x509.ObjectIdentifier,
        valid_days: float,
        not_before: dt.datetime | None,
        force: bool,
    ) -> tuple[Path, Path]:
        if key_path.exists() and not force:
            raise PkiError("exists; refusing to overwrite it (use --force / force=True)", path=str(key_path))
        ca_cert, ca_key = self._load_ca()
        self._mkdir(cert_path.parent)
        key = ec.generate_private_key(ec.SECP256R1())
        start = not_before if not_before is not None else _now() - _BACKDATE
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=valid_days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        _write_atomic(key_path, _pem_key(key), _KEY_MODE, force=force)
        _write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), _CERT_MODE, force=True)
        log.info(
            "issued %s (serial %x, valid until %s)", cert_path, cert.serial_number, cert.not_valid_after_utc
        )
        return cert_path, key_path

    def issue_server(
        self,
        dns_names: Sequence[str] = ("localhost",),
        ip_addresses: Sequence[str] = ("127.0.0.1",),
        *,
        valid_days: float = 825,
        force: bool = False,
    ) -> tuple[Path, Path]:
        """Issue the server certificate (serverAuth) with the given DNS and IP SANs."""
        if not dns_names and not ip_addresses:
            raise PkiError("a server certificate needs at least one DNS name or IP address")
        san: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
        for ip in ip_addresses:
            try:
                san.append(x509.IPAddress(ipaddress.ip_address(ip)))
            except ValueError as exc:
                raise PkiError(f"invalid server IP address {ip!r}") from exc
        return self._issue(
            cert_path=self.server_cert,
            key_path=self.server_key,
            common_name=dns_names[0] if dns_names else ip_addresses[0],
            san=san,
            eku=ExtendedKeyUsageOID.SERVER_AUTH,
            valid_days=valid_days,
            not_before=None,
            force=force,
        )

    def _issue_client(
        self,
        *,
        kind: PeerKind,
        name: str,
        paths: tuple[Path, Path],
        valid_days: float,
        not_before: dt.datetime | None,
        force: bool,
    ) -> tuple[Path, Path]:
        # Mosquitto takes the CN as the user name: a backend and a vehicle must never share one.
        other_kind, other_paths = (
            ("backend", self.backend(name)) if kind == "vehicle" else ("vehicle", self.vehicle(name))
        )
        if other_paths[0].exists():
            raise PkiError(f"{other_kind} {name!r} exists; vehicle ids and backend names must differ")
        return self._issue(
            cert_path=paths[0],
            key_path=paths[1],
            common_name=name,
            san=[x509.UniformResourceIdentifier(identity_uri(kind, name))],
            eku=ExtendedKeyUsageOID.CLIENT_AUTH,
            valid_days=valid_days,
            not_before=not_before,
            force=force,
        )

    def issue_vehicle(
        self,
        vin: str,
        *,
        valid_days: float = 365,
        not_before: dt.datetime | None = None,
        force: bool = False,
    ) -> tuple[Path, Path]:
        """Issue a vehicle client certificate (CN=VIN, URI SAN ``urn:tcu:vehicle:<VIN>``).

        ``not_before`` (aware UTC) backdates the validity, which tests use to make
        expired certificates; by default validity starts five minutes ago.
        """
        return self._issue_client(
            kind="vehicle",
            name=vin,
            paths=self.vehicle(vin),
            valid_days=valid_days,
            not_before=not_before,
            force=force,
        )

    def issue_backend(
        self,
        name: str,
        *,
        valid_days: float = 365,
        not_before: dt.datetime | None = None,
        force: bool = False,
    ) -> tuple[Path, Path]:
        """Issue an OEM backend client certificate (CN=name, URI SAN ``urn:tcu:backend:<name>``)."""
        return self._issue_client(
            kind="backend",
            name=name,
            paths=self.backend(name),
            valid_days=valid_days,
            not_before=not_before,
            force=force,
        )

    def create_command_keys(self, *, force: bool = False) -> tuple[Path, Path]:
        """Create the Ed25519 command-signing key (0600) and its public key (0644)."""
        self._mkdir(self.directory)
        key = ed25519.Ed25519PrivateKey.generate()
        _write_atomic(self.command_signing_key, _pem_key(key), _KEY_MODE, force=force)
        public = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        _write_atomic(self.command_verify_key, public, _CERT_MODE, force=True)
        return self.command_signing_key, self.command_verify_key

    # --- revocation --------------------------------------------------------------------------
    def revoked_serials(self) -> frozenset[int]:
        """Serial numbers in the current CRL."""
        return frozenset(r.serial_number for r in load_crl(self.crl))

    def _write_crl(
        self,
        ca_cert: x509.Certificate,
        ca_key: ec.EllipticCurvePrivateKey,
        *,
        revoked: Iterable[x509.RevokedCertificate],
        number: int,
        next_update_days: int = 365,
    ) -> None:
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca_cert.subject)
            .last_update(now - _BACKDATE)
            .next_update(now + dt.timedelta(days=next_update_days))
            .add_extension(x509.CRLNumber(number), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            )
        )
        for entry in revoked:
            builder = builder.add_revoked_certificate(entry)
        crl = builder.sign(ca_key, hashes.SHA256())
        _write_atomic(self.crl, crl.public_bytes(serialization.Encoding.PEM), _CERT_MODE, force=True)

    def revoke_serial(self, serial: int) -> None:
        """Add ``serial`` to the CRL (re-signed with a higher CRL number). Idempotent."""
        ca_cert, ca_key = self._load_ca()
        current = load_crl(self.crl)
        if current.get_revoked_certificate_by_serial_number(serial) is not None:
            return
        try:
            number = current.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number + 1
        except x509.ExtensionNotFound:
            number = 1
        entry = (
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(_now())
            .add_extension(x509.CRLReason(x509.ReasonFlags.unspecified), critical=False)
            .build()
        )
        self._write_crl(ca_cert, ca_key, revoked=[*current, entry], number=number)
        log.info("revoked serial %x in %s", serial, self.crl)

    def revoke_vehicle(self, vin: str) -> int:
        """Revoke the current certificate of vehicle ``vin``; returns its serial number."""
        cert = load_certificate(self.vehicle(vin)[0])
        self.revoke_serial(cert.serial_number)
        return cert.serial_number

    def revoke_backend(self, name: str) -> int:
        """Revoke the current certificate of backend ``name``; returns its serial number."""
        cert = load_certificate(self.backend(name)[0])
        self.revoke_serial(cert.serial_number)
        return cert.serial_number

    # --- listing -----------------------------------------------------------------------------
    def describe(self) -> list[CertificateInfo]:
        """Every certificate of this PKI with its validity and revocation state."""
        revoked = self.revoked_serials() if self.crl.exists() else frozenset()
        entries: list[tuple[str, str, Path]] = [("ca", "ca", self.ca_cert)]
        if self.server_cert.exists():
            entries.append(("server", "server", self.server_cert))
        entries += [("vehicle", v, self.vehicle(v)[0]) for v in self.vehicles()]
        entries += [("backend", b, self.backend(b)[0]) for b in self.backends()]
        infos = []
        for role, name, path in entries:
            cert = load_certificate(path)
            if role in ("vehicle", "backend"):
                ident = identity_from_certificate(cert)
                if ident is None or ident.name != name or ident.kind != role:
                    raise PkiError(f"certificate does not carry the identity {role} {name!r}", path=str(path))
            infos.append(
                CertificateInfo(
                    role=role,
                    name=name,
                    path=path,
                    serial=cert.serial_number,
                    not_before=cert.not_valid_before_utc,
                    not_after=cert.not_valid_after_utc,
                    revoked=cert.serial_number in revoked,
                )
            )
        return infos
