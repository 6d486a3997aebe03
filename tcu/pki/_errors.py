"""Errors of :mod:`tcu.pki`, all under :class:`tcu.errors.SecurityError`::

SecurityError
├── PkiError              a PKI file is missing, unreadable, malformed or would be overwritten
├── CertificateRejected   a peer certificate was refused (``reason`` says why)
└── CommandRejected       a signed vehicle command was refused (``reason`` says why)
"""

from __future__ import annotations

from enum import StrEnum

from tcu.errors import SecurityError

__all__ = [
    "CertificateRejectReason",
    "CertificateRejected",
    "CommandRejectReason",
    "CommandRejected",
    "PkiError",
]


class PkiError(SecurityError):
    """A PKI file is missing, unreadable or malformed, or a key would be overwritten."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(f"{path}: {message}" if path is not None else message)
        self.path = path


class CertificateRejectReason(StrEnum):
    """Why a peer certificate was refused (stable strings, safe to log)."""

    MISSING = "missing"
    """No client certificate was presented."""
    UNKNOWN_IDENTITY = "unknown_identity"
    """The certificate carries no ``urn:tcu:vehicle:`` or ``urn:tcu:backend:`` URI SAN."""
    WRONG_KIND = "wrong_kind"
    """The identity kind is not allowed on this method (a vehicle calling the fleet API)."""
    IDENTITY_MISMATCH = "identity_mismatch"
    """The certificate names another vehicle than the one the peer claims to be."""
    REVOKED = "revoked"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"


class CertificateRejected(SecurityError):
    """A peer certificate was refused; ``reason`` is a :class:`CertificateRejectReason`."""

    def __init__(self, reason: CertificateRejectReason, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason


class CommandRejectReason(StrEnum):
    """Why a signed command was refused; the agent sends this string back in its rejection ack."""

    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad_signature"
    WRONG_TARGET = "wrong_target"
    NOT_YET_VALID = "not_yet_valid"
    EXPIRED = "expired"
    REPLAYED = "replayed"
    REPLAY_STORE_FULL = "replay_store_full"
    """Too many unexpired commands are remembered; refused rather than forgetting a nonce."""


class CommandRejected(SecurityError):
    """A signed command was refused; ``reason`` is a :class:`CommandRejectReason`.

    ``command_id`` is set when the envelope could be parsed far enough to read it
    (it is unauthenticated when ``reason`` is ``bad_signature`` or ``malformed``).
    """

    def __init__(self, reason: CommandRejectReason, message: str, *, command_id: str | None = None) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason
        self.command_id = command_id
