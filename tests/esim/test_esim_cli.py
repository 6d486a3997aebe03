"""`tcu esim` against the simulated modem on a pty (the same code path as a real modem)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sim.euicc import EuiccConfig, ProfileSpec, SimulatedEuicc
from sim.modem import SimModemConfig, SimulatedModem
from tcu.cli.main import main
from tcu.esim import ProfileClass

BOOT = "8988211000000000001"
HOME = "89490200001234567890"
LOCAL = "89430100001234567891"


@pytest.fixture
def modem() -> Iterator[SimulatedModem]:
    card = SimulatedEuicc(
        EuiccConfig(
            profiles=(
                ProfileSpec(BOOT, "Bootstrap", "Global", ProfileClass.provisioning),
                ProfileSpec(HOME, "Home DE", "OpDE", enabled=True),
                ProfileSpec(LOCAL, "Local AT", "OpAT"),
            )
        )
    )
    config = SimModemConfig(home_plmn={HOME: "26201", LOCAL: "23203", BOOT: "90128"}, attach_delay_s=0.05)
    with SimulatedModem(card, config) as sim:
        yield sim


def esim(sim: SimulatedModem, *args: str) -> int:
    return main(["esim", "--port", sim.port, "--timeout-s", "1", *args])


def test_info_and_list(modem: SimulatedModem, capsys: pytest.CaptureFixture[str]) -> None:
    assert esim(modem, "info") == 0
    out = capsys.readouterr().out
    assert f"EID:       {modem.card.config.eid}" in out and f"enabled:   {HOME}" in out
    assert "SGP.22:    2.2.2" in out
    assert esim(modem, "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("ICCID")
    assert lines[2].split()[:4] == [HOME, "enabled", "operational", "OpDE"]
    assert lines[1].split()[:3] == [BOOT, "disabled", "provisioning"]


def test_enable_disable_delete_nickname_notifications(
    modem: SimulatedModem, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    audit = tmp_path / "audit.jsonl"
    assert esim(modem, "--audit", str(audit), "enable", LOCAL) == 0
    assert modem.card.enabled_iccids == [LOCAL]
    assert esim(modem, "--audit", str(audit), "delete", HOME) == 0
    assert esim(modem, "nickname", LOCAL, "roam-AT") == 0
    assert modem.card.profiles[-1].nickname == "roam-AT"
    assert esim(modem, "notifications") == 0
    out = capsys.readouterr().out
    assert "    1  disable" in out and "    2  enable" in out and "    3  delete" in out
    assert esim(modem, "notifications", "--ack", "1") == 0
    assert [n.seq for n in modem.card.notifications] == [2, 3]
    assert esim(modem, "disable", LOCAL) == 0
    assert modem.card.enabled_iccids == []
    capsys.readouterr()
    assert main(["esim", "audit", "verify", str(audit)]) == 0
    assert "hash chain intact" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "setup", "message"),
    [
        (["enable", HOME], None, f"EnableProfile {HOME}: profileNotInDisabledState (2)"),
        (["enable", "89000000000000000000"], None, "iccidOrAidNotFound (1)"),
        (["disable", LOCAL], None, f"DisableProfile {LOCAL}: profileNotInEnabledState (2)"),
        (["delete", HOME], None, f"DeleteProfile {HOME}: profileNotInDisabledState (2)"),
        (["nickname", "89000000000000000000", "x"], None, "iccidNotFound (1)"),
        (["notifications", "--ack", "42"], None, "NotificationSent 42: nothingToDelete (1)"),
        (["enable", LOCAL], "catbusy", f"EnableProfile {LOCAL}: catBusy (5)"),
        (["info"], "6f00", "GetEID: card answered SW 6F00"),
        (["list"], "mute", "no answer within 1 s"),
        (["list"], "cme", "+CME ERROR 13 (SIM failure)"),
    ],
)
def test_errors_are_one_line(
    modem: SimulatedModem,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    setup: str | None,
    message: str,
) -> None:
    if setup == "catbusy":
        modem.card.cat_busy = True
    elif setup == "6f00":
        modem.card.inject_sw(0x6F00)
    elif setup == "mute":
        modem.card.mute = True
    elif setup == "cme":
        modem.inject_cme("AT+CGLA", 13)
    assert esim(modem, *args) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith("tcu esim: error: ") and message in err


def test_usage_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["esim", "list"]) == 1
    assert "--port: --port is required" in capsys.readouterr().err
    assert main(["esim", "--port", "/nonexistent/tty", "list"]) == 1
    assert "cannot open AT port" in capsys.readouterr().err
    assert main(["esim", "--port", "/dev/null", "--modem-profile", "nope", "list"]) == 1
    assert "unknown modem profile 'nope'" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"seq": 1, "prev": "x"}\n')
    assert main(["esim", "audit", "verify", str(bad)]) == 1
    assert "bad.jsonl:1: hash chain broken" in capsys.readouterr().err


def test_acknowledging_a_notification_is_audited(modem: SimulatedModem, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    assert esim(modem, "enable", LOCAL) == 0
    seq = modem.card.notifications[0].seq
    assert esim(modem, "--audit", str(audit), "notifications", "--ack", str(seq)) == 0
    assert seq not in [n.seq for n in modem.card.notifications]
    assert f'"notification_seq":{seq}' in audit.read_text()
    assert main(["esim", "audit", "verify", str(audit)]) == 0
