"""Trust for tcu: a development PKI, mTLS for gRPC, signed vehicle commands, Mosquitto TLS/ACL.

* :mod:`tcu.pki.identity`: the identity scheme, one URI SAN per certificate:
  ``urn:tcu:vehicle:<VIN>`` or ``urn:tcu:backend:<name>`` (CN repeats the name).
* :mod:`tcu.pki.ca`: :class:`DevPki`, a development CA issuing server, vehicle and
  backend certificates, a CRL and the Ed25519 command-signing key.
* :mod:`tcu.pki.grpc_tls`: gRPC credentials, :func:`peer_identity`,
  :func:`bound_vehicle_id`, :class:`RevocationChecker`, :class:`MtlsInterceptor`.
* :mod:`tcu.pki.commands`: :func:`sign_command` and :class:`CommandVerifier`.
* :mod:`tcu.pki.mosquitto`: Mosquitto mTLS configuration and per-identity ACL.

Errors (all :class:`tcu.errors.SecurityError`): :class:`PkiError`,
:class:`CertificateRejected` and :class:`CommandRejected` (with a ``reason`` code).
"""

from tcu.pki._errors import (
    CertificateRejected,
    CertificateRejectReason,
    CommandRejected,
    CommandRejectReason,
    PkiError,
)
from tcu.pki.ca import CertificateInfo, DevPki, load_certificate, load_crl
from tcu.pki.commands import (
    Command,
    CommandVerifier,
    NonceStore,
    load_signing_key,
    load_verify_key,
    sign_command,
)
from tcu.pki.grpc_tls import (
    INGEST_POLICY,
    MtlsInterceptor,
    RevocationChecker,
    bound_vehicle_id,
    channel_credentials,
    peer_identity,
    server_credentials,
)
from tcu.pki.identity import PeerIdentity, PeerKind, identity_from_certificate
from tcu.pki.mosquitto import (
    MosquittoConfig,
    StationMap,
    load_station_map,
    mqtt_tls_context,
    write_mosquitto_config,
)

__all__ = [
    "INGEST_POLICY",
    "CertificateInfo",
    "CertificateRejectReason",
    "CertificateRejected",
    "Command",
    "CommandRejectReason",
    "CommandRejected",
    "CommandVerifier",
    "DevPki",
    "MosquittoConfig",
    "MtlsInterceptor",
    "NonceStore",
    "PeerIdentity",
    "PeerKind",
    "PkiError",
    "RevocationChecker",
    "StationMap",
    "bound_vehicle_id",
    "channel_credentials",
    "identity_from_certificate",
    "load_certificate",
    "load_crl",
    "load_signing_key",
    "load_station_map",
    "load_verify_key",
    "mqtt_tls_context",
    "peer_identity",
    "server_credentials",
    "sign_command",
    "write_mosquitto_config",
]
