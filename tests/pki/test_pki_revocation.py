"""RevocationChecker: reload on change, rate limit, last good CRL kept, signature checked."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tcu.pki import DevPki, PkiError, RevocationChecker, load_certificate

VIN = "WDD2050461A000001"


class Monotonic:
    def __init__(self) -> None:
        self.t_s = 100.0

    def __call__(self) -> float:
        return self.t_s


@pytest.fixture
def pki(tmp_path: Path) -> DevPki:
    pki = DevPki(tmp_path / "pki")
    pki.init()
    pki.issue_vehicle(VIN)
    return pki


async def test_reload_is_rate_limited_and_follows_the_file(pki: DevPki) -> None:
    clock = Monotonic()
    checker = RevocationChecker(pki.crl, ca_path=pki.ca_cert, check_interval_s=5.0, monotonic=clock)
    serial = load_certificate(pki.vehicle(VIN)[0]).serial_number
    await checker.refresh()  # first look at the file
    assert not checker.is_revoked(serial)
    pki.revoke_vehicle(VIN)
    clock.t_s += 1.0
    await checker.refresh()
    assert not checker.is_revoked(serial), "reloaded before check_interval_s passed"
    clock.t_s += 5.0
    await checker.refresh()
    assert checker.is_revoked(serial)
    assert checker.revoked_serials == {serial}


def test_broken_crl_keeps_the_last_good_list(pki: DevPki, caplog: pytest.LogCaptureFixture) -> None:
    serial = pki.revoke_vehicle(VIN)
    checker = RevocationChecker(pki.crl, ca_path=pki.ca_cert)
    assert checker.is_revoked(serial)
    pki.crl.write_text("-----BEGIN X509 CRL-----\ngarbage\n-----END X509 CRL-----\n")
    assert checker.reload_if_changed() is False
    assert checker.is_revoked(serial)
    assert "keeping the previous CRL" in caplog.text
    pki.crl.unlink()
    assert checker.reload_if_changed() is False
    assert checker.is_revoked(serial)


def test_crl_of_another_ca_is_refused(pki: DevPki, tmp_path: Path) -> None:
    other = DevPki(tmp_path / "other")
    other.init()
    with pytest.raises(PkiError, match="signature does not verify"):
        RevocationChecker(other.crl, ca_path=pki.ca_cert)
    # swapping in a foreign CRL later is ignored as well
    checker = RevocationChecker(pki.crl, ca_path=pki.ca_cert)
    shutil.copy(other.crl, pki.crl)
    assert checker.reload_if_changed() is False


def test_missing_crl_fails_at_start(tmp_path: Path) -> None:
    with pytest.raises(PkiError, match="cannot stat CRL: No such file"):
        RevocationChecker(tmp_path / "nope.pem")


def test_interceptor_check_on_anonymous_methods_and_unknown_identities(pki: DevPki) -> None:
    from tcu.pki import (
        CertificateRejected,
        CertificateRejectReason,
        MtlsInterceptor,
        identity_from_certificate,
    )
    from tcu.pki.grpc_tls import HEALTH_SERVICE_PREFIX

    ident = identity_from_certificate(load_certificate(pki.vehicle(VIN)[0]))
    assert ident is not None
    pki.revoke_vehicle(VIN)
    interceptor = MtlsInterceptor(RevocationChecker(pki.crl), anonymous=(HEALTH_SERVICE_PREFIX,))
    health_check = "/grpc.health.v1.Health/Check"
    interceptor.check(None, health_check, has_certificate=False)  # anonymous without certificate: fine
    with pytest.raises(CertificateRejected) as info:
        interceptor.check(ident, health_check, has_certificate=True)  # a presented one is still checked
    assert info.value.reason is CertificateRejectReason.REVOKED
    with pytest.raises(CertificateRejected) as info:
        interceptor.check(None, "/tcu.api.v1.Ingest/Upload", has_certificate=True)
    assert info.value.reason is CertificateRejectReason.UNKNOWN_IDENTITY
    # the server certificate carries no tcu identity
    assert identity_from_certificate(load_certificate(pki.server_cert)) is None


def test_a_crl_that_stays_broken_is_not_logged_at_every_look(
    pki: DevPki, caplog: pytest.LogCaptureFixture
) -> None:
    """The ingest's watcher looks at the CRL every couple of seconds: a file that stays broken must
    not log a line each time (issue 10: log lines stay rate-limited)."""
    pki.revoke_vehicle(VIN)
    checker = RevocationChecker(pki.crl, ca_path=pki.ca_cert)
    pki.crl.write_text("-----BEGIN X509 CRL-----\ngarbage\n-----END X509 CRL-----\n")
    for _ in range(20):
        assert checker.reload_if_changed() is False
    assert caplog.text.count("keeping the previous CRL") == 1
