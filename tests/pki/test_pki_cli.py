"""``tcu pki`` end to end through the real CLI entry point, on files in tmp_path."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509

from tcu.cli.main import main
from tcu.pki import DevPki, identity_from_certificate, load_certificate

VIN = "WDD2050461A000001"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_vehicle_backend_revoke_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "pki"
    assert main(["pki", "init", str(d), "--server-dns", "localhost", "--server-dns", "ingest.test"]) == 0
    pki = DevPki(d)
    for key in (pki.ca_key, pki.server_key, pki.command_signing_key):
        assert _mode(key) == 0o600, key
    for cert in (pki.ca_cert, pki.server_cert, pki.crl, pki.command_verify_key):
        assert _mode(cert) == 0o644, cert
    assert _mode(d) == 0o700
    server = load_certificate(pki.server_cert)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "ingest.test"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    ca = load_certificate(pki.ca_cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True

    assert main(["pki", "vehicle", str(d), VIN]) == 0
    cert_path, key_path = pki.vehicle(VIN)
    assert _mode(key_path) == 0o600 and _mode(cert_path) == 0o644 and _mode(key_path.parent) == 0o700
    cert = load_certificate(cert_path)
    ident = identity_from_certificate(cert)
    assert ident is not None and (ident.kind, ident.name) == ("vehicle", VIN)
    assert cert.subject.rfc4514_string() == f"CN={VIN}"
    cert.verify_directly_issued_by(ca)

    assert main(["pki", "backend", str(d), "acme"]) == 0
    assert main(["pki", "revoke", str(d), VIN]) == 0
    assert pki.revoked_serials() == {cert.serial_number}
    capsys.readouterr()
    assert main(["pki", "show", str(d)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[1]: line.split()[-1] for line in out.splitlines()[1:]}
    assert rows == {"ca": "valid", "server": "valid", VIN: "revoked", "acme": "valid"}


def test_keys_are_never_overwritten_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "pki"
    assert main(["pki", "init", str(d)]) == 0
    ca_key = (d / "ca.key").read_bytes()
    assert main(["pki", "init", str(d)]) == 1
    assert "ca.key: exists" in capsys.readouterr().err
    assert (d / "ca.key").read_bytes() == ca_key

    assert main(["pki", "vehicle", str(d), VIN]) == 0
    key = DevPki(d).vehicle(VIN)[1].read_bytes()
    assert main(["pki", "vehicle", str(d), VIN]) == 1
    assert f"{VIN}.key: exists" in capsys.readouterr().err
    assert DevPki(d).vehicle(VIN)[1].read_bytes() == key
    assert main(["pki", "vehicle", str(d), VIN, "--force"]) == 0
    assert DevPki(d).vehicle(VIN)[1].read_bytes() != key

    assert main(["pki", "init", str(d), "--force"]) == 0
    assert (d / "ca.key").read_bytes() != ca_key


def test_bad_names_and_collisions_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "pki"
    assert main(["pki", "init", str(d)]) == 0
    assert main(["pki", "vehicle", str(d), "../escape"]) == 1
    assert "invalid vehicle id '../escape'" in capsys.readouterr().err
    assert main(["pki", "vehicle", str(d), "v2x/#"]) == 1
    assert main(["pki", "vehicle", str(d), VIN]) == 0
    assert main(["pki", "backend", str(d), VIN]) == 1  # would share the MQTT user name
    assert "must differ" in capsys.readouterr().err
    assert main(["pki", "revoke", str(d), "WDD0000000000000"]) == 1
    assert f"{VIN[:3]}0000000000000.pem: missing" in capsys.readouterr().err
    assert not list((d / "vehicles").glob(".*"))  # no temporary files left behind


def test_mosquitto_files(tmp_path: Path) -> None:
    d = tmp_path / "pki"
    assert main(["pki", "init", str(d)]) == 0
    assert main(["pki", "vehicle", str(d), VIN]) == 0
    stations = tmp_path / "stations.toml"
    stations.write_text(f"[vehicles]\n{VIN} = 1001\n")
    # --user root: the broker would keep root's rights, so pytest's 0700 folder is fine here.
    args = [
        "pki",
        "mosquitto",
        str(d),
        str(tmp_path / "broker"),
        "--port",
        "18884",
        "--stations",
        str(stations),
    ]
    assert main([*args, "--user", "root"]) == 0
    conf = (tmp_path / "broker" / "mosquitto.conf").read_text()
    assert "listener 18884 127.0.0.1" in conf and "require_certificate true" in conf
    assert f"crlfile {(tmp_path / 'broker' / 'tls' / 'crl.pem').resolve()}" in conf
    assert "topic write v2x/denm/1001/#" in (tmp_path / "broker" / "acl").read_text()


def test_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["pki", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for action in ("init", "vehicle", "backend", "revoke", "show", "mosquitto"):
        assert f"tcu pki {action} ./pki" in out
    assert main(["pki"]) == 2
