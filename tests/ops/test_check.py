"""``tcu agent --check`` and ``tcu ingest --check``: a good configuration passes, a broken one
lists every problem (not just the first) and exits 1."""

from __future__ import annotations

import datetime
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tcu.agent.check import check_agent
from tcu.checks import CheckReport, check_certificate
from tcu.pki import DevPki

DBC = (
    'VERSION ""\n\nNS_ :\n\nBS_:\n\nBU_: ECU\n\n'
    'BO_ 256 Dyn: 8 ECU\n SG_ Speed : 0|16@1+ (0.01,0) [0|655.35] "km/h" TCU\n\n'
    'BA_DEF_ BO_ "GenMsgCycleTime" INT 0 10000;\nBA_ "GenMsgCycleTime" BO_ 256 10;\n'
)
MAPPING = (
    'version = 1\n[[signal]]\nname = "Vehicle.Speed"\nmessage = "Dyn"\nsignal = "Speed"\nperiod_ms = 100\n'
)
CAMPAIGNS = textwrap.dedent(
    """
    [[campaign]]
    name = "fast"
    version = 1
    signals = ["Vehicle.Speed"]
    [campaign.condition]
    expression = "Vehicle.Speed > 120"
    pre_trigger_ms = 1000
    post_trigger_ms = 1000
    """
)
VIN = "WTCUCHECK00000001"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    pki = DevPki(tmp_path_factory.mktemp("pki") / "pki")
    pki.init()
    pki.issue_vehicle(VIN)
    return pki


def _good(tmp_path: Path, pki: DevPki) -> Path:
    (tmp_path / "car.dbc").write_text(DBC)
    (tmp_path / "car_vss.toml").write_text(MAPPING)
    (tmp_path / "campaigns.toml").write_text(CAMPAIGNS)
    path = tmp_path / "agent.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [vehicle]
            id = "{VIN}"
            [[bus]]
            name = "can0"
            interface = "virtual"
            channel = "check"
            dbc = ["car.dbc"]
            [signals]
            mapping = "car_vss.toml"
            [uplink]
            target = "127.0.0.1:50051"
            [uplink.tls]
            ca_cert = "{pki.ca_cert}"
            cert = "{pki.directory}/vehicles/{VIN}.pem"
            key = "{pki.directory}/vehicles/{VIN}.key"
            [spool]
            directory = "spool"
            [campaigns]
            file = "campaigns.toml"
            """
        )
    )
    return path


def _tcu(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tcu.cli.main", *args], capture_output=True, text=True, timeout=60, check=False
    )


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """The subcommand run in this process (its parser and function, without the logging set-up)."""
    from tcu.cli.main import build_parser

    args = build_parser().parse_args(argv)
    code = args.func(args)
    return code, capsys.readouterr().out


def test_a_good_agent_config_passes(tmp_path: Path, pki: DevPki) -> None:
    report, config = check_agent(_good(tmp_path, pki), {})
    assert report.problems == [], report.lines()
    assert config is not None
    text = "\n".join(report.lines())
    assert "can0 (virtual check)" in text and "1 signals" in text
    assert "campaign fast v1: condition cost" in text
    assert f"uplink.tls.cert: {pki.directory}/vehicles/{VIN}.pem: " in text and "valid " in text
    assert "uplink.target: 127.0.0.1:50051 resolves" in text
    assert "spool.directory" in text and not (tmp_path / "spool").exists()  # nothing written


def test_a_broken_agent_config_lists_every_problem(tmp_path: Path, pki: DevPki) -> None:
    path = _good(tmp_path, pki)
    text = path.read_text()
    text = text.replace("[signals]", "[signals]\nmapingg = 1").replace(
        'target = "127.0.0.1:50051"', 'target = "no-such-host.invalid:50051"\nkeepalive_s = 5'
    )
    text = text.replace(f'key = "{pki.directory}/vehicles/{VIN}.key"', 'key = "missing.key"')
    path.write_text(text + "\n[batch]\nmax_age_msx = 3\n")
    (tmp_path / "campaigns.toml").write_text(CAMPAIGNS.replace("Vehicle.Speed > 120", "Vehicle.Spede > 120"))
    result = _tcu("agent", "--config", str(path), "--check")
    assert result.returncode == 1, result.stdout + result.stderr
    problems = [line for line in result.stdout.splitlines() if line.startswith("problem: ")]
    joined = "\n".join(problems)
    for needle in (
        "signals.mapingg: unknown key",
        "uplink.keepalive_s: must be between 30 and 600",
        "batch.max_age_msx: unknown key (did you mean 'max_age_ms'?)",
        "uplink.tls.key: ",
        "missing.key",
        "no-such-host.invalid:50051: the name does not resolve",
        "Vehicle.Spede",
    ):
        assert needle in joined, (needle, result.stdout)
    assert len(problems) == 6, problems
    assert result.stdout.splitlines()[-1].endswith("6 problem(s), 0 warning(s)")
    assert "Traceback" not in result.stderr


def test_certificate_dates_are_checked(pki: DevPki) -> None:
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=3650)
    report = CheckReport()
    check_certificate(pki.ca_cert, "ca", report, now=later)
    assert report.problems and "expired (valid " in report.problems[0]


def test_ingest_check_good_and_broken(
    tmp_path: Path, pki: DevPki, capsys: pytest.CaptureFixture[str]
) -> None:
    code, good = _cli(
        capsys,
        "ingest",
        "--check",
        "--listen",
        "127.0.0.1:0",
        "--db",
        str(tmp_path / "db" / "i.db"),
        "--pki",
        str(pki.directory),
    )
    assert code == 0, good
    assert "--tls-cert: " in good and "--listen: 127.0.0.1:0 is free" in good
    assert good.splitlines()[-1].startswith("tcu ingest --check: OK")

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    (tmp_path / "bad.db").write_text("not sqlite at all, but long enough to be read as a header......")
    try:
        bad_code, bad = _cli(
            capsys,
            "ingest",
            "--check",
            "--listen",
            f"127.0.0.1:{busy.getsockname()[1]}",
            "--db",
            str(tmp_path / "bad.db"),
            "--tls-cert",
            str(tmp_path / "nope.pem"),
            "--tls-key",
            str(pki.ca_cert),
            "--client-ca",
            str(pki.ca_cert),
        )
    finally:
        busy.close()
    assert bad_code == 1
    problems = [line for line in bad.splitlines() if line.startswith("problem: ")]
    assert any("--tls-cert" in p and "nope.pem" in p for p in problems), bad
    assert any("--tls-key" in p and "private key" in p for p in problems), bad
    assert any("--db" in p and "bad.db" in p for p in problems), bad
    assert any("--listen: cannot bind" in p for p in problems), bad
    assert len(problems) == 4, problems


@pytest.mark.parametrize("scenario", ["drive", "border"])
def test_the_demos_generated_agent_config_passes(tmp_path: Path, scenario: str) -> None:
    """The config ``tcu demo`` writes (tcu/demo/run.py, plus the border scenario's sections)."""
    from tcu.demo import run as demo_run
    from tcu.demo.border import BorderScenario
    from tcu.demo.scenario import Scenario

    repo = Path(__file__).resolve().parents[2]
    chosen = BorderScenario() if scenario == "border" else Scenario()
    chosen.prepare(tmp_path)
    options = demo_run.DemoOptions(workdir=tmp_path, scenario=chosen)
    security = demo_run._make_security(options, tmp_path)
    ready = {
        "channel": "can0",
        "dbc": str(repo / "sim" / "data" / "tcu_sim.dbc"),
        "mapping": str(repo / "sim" / "data" / "tcu_sim_vss.toml"),
        "host": "127.0.0.1",
        "port": 29536,
        "modem": "/dev/pts/0",
    }
    text = demo_run._agent_config(
        ready,
        "127.0.0.1:50051",
        options.vehicle_id,
        security,
        chosen.uplink_toml(),
        state_dir=tmp_path / "state",
    ) + chosen.agent_toml(tmp_path, ready)
    path = tmp_path / "agent.toml"
    path.write_text(text)
    report, _ = check_agent(path, {})
    text = "\n".join(report.lines())
    assert report.problems == [], text
    assert "67 signals" in text
    if scenario == "border":
        assert "connectivity: settings and roaming policy load" in text
