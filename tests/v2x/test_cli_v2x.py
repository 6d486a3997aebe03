"""``tcu v2x decode | publish | watch`` against files and a real Mosquitto."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from v2x_broker import BACKEND, BACKEND_STATION, V2xBroker

from tcu.cli.main import main
from tcu.v2x.messages import ActionId, Cam, Denm, StationPosition, encode_cam, encode_denm, its_time_ms
from tcu.v2x.tiles import quadkey, topic_for

NOW = its_time_ms(time.time_ns())
DENM = Denm(
    station_id=101,
    action_id=ActionId(101, 5),
    detection_time_ms=NOW,
    reference_time_ms=NOW,
    event_position=StationPosition(49.15, 6.17),
    relevance_distance_m=500.0,
    validity_s=20,
    cause_code=99,
    sub_cause_code=1,
)
CAM = Cam(station_id=101, station_type=5, generation_delta_time_ms=7, position=StationPosition(49.15, 6.17))


def test_decode_binary_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "denm.uper"
    path.write_bytes(encode_denm(DENM))
    assert main(["v2x", "decode", str(path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["type"] == "DENM" and out["action_id"] == {"station_id": 101, "sequence_number": 5}
    assert out["cause_code"] == 99 and out["event_position"]["latitude_deg"] == 49.15


def test_decode_mosquitto_sub_lines_from_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    key = quadkey(49.15, 6.17, 18)
    lines = [
        f"{topic_for('v2x', 'denm', 101, key)} {encode_denm(DENM).hex()}",
        f"{topic_for('v2x', 'cam', 101, key)} {encode_cam(CAM).hex()}",
        f"{topic_for('v2x', 'cam', 101, key)} 0102ff",  # too short
        "v2x/denm/101/9 " + encode_denm(DENM).hex(),  # a tile digit 9: wrong topic shape
    ]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("\n".join(lines).encode())))
    assert main(["v2x", "decode", "-"]) == 1  # two bad lines
    captured = capsys.readouterr()
    out = [json.loads(line) for line in captured.out.splitlines()]
    assert [o["type"] for o in out] == ["DENM", "CAM"] and out[0]["quadkey"] == key
    assert "-:3: empty:" in captured.err and "-:4: topic:" in captured.err


def test_decode_raw_tree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cam.hex"
    path.write_text(encode_cam(CAM).hex() + "\n")
    assert main(["v2x", "decode", str(path), "--raw"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["asn1"]["header"] == {"protocolVersion": 1, "messageID": 2, "stationID": 101}


def test_decode_missing_file_names_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["v2x", "decode", "/nonexistent/x.uper"]) == 1
    assert "/nonexistent/x.uper: cannot read" in capsys.readouterr().err


def test_publish_and_watch_through_the_broker(
    v2x_broker: V2xBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = str(v2x_broker.pki.directory)
    broker = f"127.0.0.1:{v2x_broker.port}"
    watcher = "WDD2050461A000103"
    watch_args = [
        "v2x",
        "watch",
        "--broker",
        broker,
        "--pki",
        pki,
        "--vehicle",
        watcher,
        "--lat",
        "49.15",
        "--lon",
        "6.17",
        "--types",
        "denm",
        "--json",
        "--count",
        "2",
    ]
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(main(watch_args)), name="tcu v2x watch")
    thread.start()
    try:
        deadline = time.monotonic() + 30
        # its own tile and the 8 around it
        while v2x_broker.log().count(f"Received SUBSCRIBE from {watcher}-cli") < 9:
            assert thread.is_alive(), "watch ended early"
            assert time.monotonic() < deadline, "watch did not subscribe"
            time.sleep(0.05)
        common = [
            "v2x",
            "publish",
            "--broker",
            broker,
            "--pki",
            pki,
            "--backend",
            BACKEND,
            "--station",
            str(BACKEND_STATION),
            "--lat",
            "49.1502",
            "--lon",
            "6.1701",
        ]
        assert main([*common, "--cause", "roadworks", "--seq", "17", "--validity-s", "3600"]) == 0
        assert main([*common, "--seq", "17", "--cancel"]) == 0
    finally:
        thread.join(timeout=30)
    assert result == [0]
    out = capsys.readouterr().out
    assert f"published DENM {BACKEND_STATION}#17 (cause 3/0) on v2x/denm/{BACKEND_STATION}/" in out
    got = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [(g["type"], g["cause_code"], g["termination"]) for g in got] == [
        ("DENM", 3, None),
        ("DENM", None, "isCancellation"),
    ]
    assert got[0]["station_id"] == BACKEND_STATION and got[0]["validity_s"] == 3600


def test_publish_refuses_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "v2x",
        "publish",
        "--broker",
        "127.0.0.1:1",
        "--ca",
        "x",
        "--cert",
        "y",
        "--key",
        "z",
        "--station",
        "1",
        "--lat",
        "1",
        "--lon",
        "1",
    ]
    assert main([*args, "--cause", "meteor"]) == 1
    assert "unknown cause 'meteor'" in capsys.readouterr().err
    assert main([*args, "--cancel"]) == 1
    assert "--cancel needs the --seq" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("mosquitto_sub") is None, reason="mosquitto_sub is not installed")
def test_mosquitto_sub_shows_the_documented_topics_and_decode_turns_them_into_json(
    v2x_broker: V2xBroker, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pki = v2x_broker.pki
    cert, key = pki.backend(BACKEND)
    sub = subprocess.Popen(
        [
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            str(v2x_broker.port),
            "--cafile",
            str(pki.ca_cert),
            "--cert",
            str(cert),
            "--key",
            str(key),
            "-t",
            "v2x/#",
            "-F",
            "%t %x",
            "-C",
            "1",
            "-W",
            "30",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while v2x_broker.log().count("Received SUBSCRIBE") < 1 or "v2x/#" not in v2x_broker.log():
            assert sub.poll() is None, sub.stderr.read() if sub.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert (
            main(
                [
                    "v2x",
                    "publish",
                    "--broker",
                    f"127.0.0.1:{v2x_broker.port}",
                    "--pki",
                    str(pki.directory),
                    "--backend",
                    BACKEND,
                    "--station",
                    str(BACKEND_STATION),
                    "--cause",
                    "accident",
                    "--lat",
                    "49.15",
                    "--lon",
                    "6.17",
                    "--seq",
                    "3",
                ]
            )
            == 0
        )
        out, _ = sub.communicate(timeout=30)
    finally:
        if sub.poll() is None:
            sub.kill()
    line = out.decode().strip()
    key18 = quadkey(49.15, 6.17, 18)
    assert line.startswith(f"v2x/denm/{BACKEND_STATION}/" + "/".join(key18) + " ")
    capsys.readouterr()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(out)))
    assert main(["v2x", "decode", "-"]) == 0
    decoded = json.loads(capsys.readouterr().out)
    assert decoded["type"] == "DENM" and decoded["cause_code"] == 2 and decoded["quadkey"] == key18
    assert decoded["action_id"] == {"station_id": BACKEND_STATION, "sequence_number": 3}
