"""`tcu dbc`, `tcu mapping list` and `tcu send`, run through the CLI entry point."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import can
import pytest

from tcu.cli.main import main
from tcu.cli.send import CanFrame, parse_frame
from tcu.errors import InputError

REPO = Path(__file__).resolve().parents[2]
SIM_DBC = REPO / "sim" / "data" / "tcu_sim.dbc"
SIM_MAPPING = REPO / "sim" / "data" / "tcu_sim_vss.toml"


def test_dbc_dump_shows_layout_units_choices_and_cycle_time(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dbc", "dump", str(SIM_DBC), "VCU_Drive", "0xA0"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == [
        "0x0C0",
        "VCU_Drive",
        "8",
        "B",
        "cycle",
        "10",
        "ms",
        "5",
        "signals",
        "from",
        "VCU",
    ]
    assert "  GearPosition: bit 0 len 4 LE unsigned [0..7]" in out
    assert "    choices: 0=P, 1=R, 2=N, 3=D, 4=B, 7=SNA" in out
    assert "  AccelPedalPosition: bit 24 len 8 LE unsigned scale 0.4 [0..100] %" in out
    assert "  VehicleSpeed: bit 0 len 16 LE unsigned scale 0.01 [0..300] km/h" in out
    assert main(["dbc", "dump", str(SIM_DBC), "--json"]) == 0
    messages = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sum(len(m["signals"]) for m in messages) == 67
    drive = next(m for m in messages if m["name"] == "VCU_Drive")
    gear = drive["signals"][0]
    assert (drive["cycle_time_ms"], drive["id"], gear["choices"]["3"], gear["length"]) == (
        10,
        "0x0C0",
        "D",
        4,
    )
    speed = next(m for m in messages if m["name"] == "ESP_Speed")["signals"][0]
    assert (speed["scale"], speed["unit"], speed["maximum"]) == (0.01, "km/h", 300)


def test_dbc_list_and_unknown_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dbc", "list", str(SIM_DBC)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].endswith("messages, 67 signals")
    assert out[0].split()[:2] == ["0x0A0", "ESP_Speed"]
    assert main(["dbc", "dump", str(SIM_DBC), "ESP_Sped"]) == 1
    assert "no message 'ESP_Sped' (did you mean 'ESP_Speed'" in capsys.readouterr().err


def test_mapping_list_says_what_is_mapped_and_what_is_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["mapping", "list", str(SIM_MAPPING), "--dbc", f"can0={SIM_DBC}"]) == 0
    out = capsys.readouterr().out
    assert "mapped (67):" in out and "not mapped (0 of 67 DBC signals):" in out
    assert "  Vehicle.Speed" in out and "<- can0/ESP_Speed.VehicleSpeed [km/h]  every 100 ms" in out
    # A mapping of two signals: the other 65 are listed as not mapped.
    small = tmp_path / "small.toml"
    small.write_text(
        'version = 1\n[[signal]]\nname = "Vehicle.Speed"\nmessage = "ESP_Speed"\nsignal = "VehicleSpeed"\n'
        'period_ms = 100\n[[signal]]\nname = "Vehicle.Gear"\nmessage = "VCU_Drive"\nsignal = "GearPosition"\n'
        "period_ms = 100\n"
    )
    assert main(["mapping", "list", str(small), "--dbc", str(SIM_DBC), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["vss"] for r in rows if r["vss"]] == ["Vehicle.Speed", "Vehicle.Gear"]
    unmapped = [(r["message"], r["signal"]) for r in rows if r["vss"] is None]
    assert len(unmapped) == 65 and ("ESP_Speed", "LongitudinalAccel") in unmapped
    assert ("ESP_Speed", "VehicleSpeed") not in unmapped


def test_cansend_syntax() -> None:
    assert parse_frame("123#DEADBEEF") == CanFrame(0x123, False, bytes.fromhex("DEADBEEF"), dlc=4)
    assert parse_frame("1F334455#11.22.33") == CanFrame(0x1F334455, True, b"\x11\x22\x33", dlc=3)
    assert parse_frame("5A1#") == CanFrame(0x5A1, False, b"", dlc=0)
    assert parse_frame("123#R") == CanFrame(0x123, False, b"", remote=True, dlc=0)
    assert parse_frame("123#R3") == CanFrame(0x123, False, b"", remote=True, dlc=3)
    fd = parse_frame("213##1" + "11" * 9)
    assert (fd.fd, fd.bitrate_switch, fd.error_state_indicator, fd.data) == (
        True,
        True,
        False,
        b"\x11" * 9 + b"\0" * 3,
    )
    assert parse_frame("213##3").error_state_indicator
    for bad, why in [
        ("12#00", "3 hex digits"),
        ("800#00", "above 0x7FF"),
        ("3FFFFFFF#00", "above 0x1FFFFFFF"),
        ("123#ABC", "pairs of hex digits"),
        ("123#001122334455667788", "more than 8"),
        ("123#R9", "0-8"),
        ("123DEAD", "no '#'"),
        ("123##", "flags digit"),
        ("123##8", "unknown bits"),
    ]:
        with pytest.raises(InputError, match=why):
            parse_frame(bad)


def test_send_puts_the_frames_on_a_python_can_bus(capsys: pytest.CaptureFixture[str]) -> None:
    channel = f"tcu-send-{uuid.uuid4().hex[:8]}"
    with can.Bus(interface="virtual", channel=channel) as receiver:
        frames = ["123#DEADBEEF", "1F334455#11.22", "7FF#R2", "321##1" + "AB" * 12]
        assert main(["send", "--interface", "virtual", "--channel", channel, *frames]) == 0
        got = [receiver.recv(timeout=2) for _ in frames]
    assert all(m is not None for m in got)
    shown = [
        (
            m.arbitration_id,
            m.is_extended_id,
            bytes(m.data),
            m.is_remote_frame,
            m.is_fd,
            m.bitrate_switch,
            m.dlc,
        )
        for m in got
        if m is not None
    ]
    assert shown == [
        (0x123, False, bytes.fromhex("DEADBEEF"), False, False, False, 4),
        (0x1F334455, True, b"\x11\x22", False, False, False, 2),
        (0x7FF, False, b"", True, False, False, 2),
        (0x321, False, b"\xab" * 12, False, True, True, 12),
    ]


def test_send_refuses_bad_syntax_before_opening_a_bus(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["send", "--interface", "nosuchinterface", "12#00"])
    assert caught.value.code == 2
    assert "frame '12#00': the id '12' must be 3 hex digits" in capsys.readouterr().err
    assert main(["send", "--interface", "nosuchinterface", "123#00"]) == 1
    assert "cannot open the bus nosuchinterface can0" in capsys.readouterr().err
