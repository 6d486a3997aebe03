"""Guards the public surface of tcu.pki and its error tree."""

from __future__ import annotations

import tcu.pki
from tcu.errors import SecurityError, TcuError


def test_public_all_is_curated_and_importable() -> None:
    assert sorted(tcu.pki.__all__, key=str.lower) == sorted(set(tcu.pki.__all__), key=str.lower)
    for name in tcu.pki.__all__:
        assert getattr(tcu.pki, name) is not None, name
    assert set(tcu.pki.__all__) >= {
        "DevPki",
        "server_credentials",
        "channel_credentials",
        "peer_identity",
        "bound_vehicle_id",
        "RevocationChecker",
        "MtlsInterceptor",
        "sign_command",
        "CommandVerifier",
        "write_mosquitto_config",
    }


def test_errors_are_security_errors() -> None:
    for error in (tcu.pki.PkiError, tcu.pki.CertificateRejected, tcu.pki.CommandRejected):
        assert issubclass(error, SecurityError) and issubclass(error, TcuError)
    assert {r.value for r in tcu.pki.CommandRejectReason} == {
        "malformed",
        "bad_signature",
        "wrong_target",
        "not_yet_valid",
        "expired",
        "replayed",
        "replay_store_full",
    }
