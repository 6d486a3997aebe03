"""The agent's Prometheus endpoint and /healthz: scraped over HTTP while the agent runs."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.error
import urllib.request
import uuid
from dataclasses import replace
from pathlib import Path

import can
import pytest
from agent_helpers import agent_config, wait_until

from tcu.agent import Agent
from tcu.agent.metrics import agent_health, agent_snapshot
from tcu.cli.agent import _status
from tcu.ingest import IngestServer
from tcu.metrics import MetricsServer


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _value(text: str, sample: str) -> float:
    match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    assert match, f"{sample} not in\n{text}"
    return float(match.group(1))


async def test_scrape_and_health_while_running(
    ingest: IngestServer, small_dbc: Path, small_mapping: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    channel = f"metrics-{uuid.uuid4().hex}"
    config = agent_config(channel, ingest.bound_port, small_dbc, small_mapping)
    # A second bus with a DBC of its own, so that the per-bus counts can differ.
    other_dbc = small_dbc.with_name("other.dbc")
    other_dbc.write_text('VERSION ""\n\nNS_ :\n\nBS_:\n\nBU_: ECU\n\nBO_ 768 Other: 8 ECU\n')
    other = replace(config.buses[0], name="can1", channel=f"{channel}-1", dbc=(other_dbc,))
    config = replace(config, buses=(*config.buses, other), batch=replace(config.batch, max_age_ms=100))
    agent = Agent(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    metrics = MetricsServer(
        "127.0.0.1:0",
        key="metrics.listen",
        loop=loop,
        snapshot=lambda: agent_snapshot(agent),
        health=lambda: agent_health(agent),
    ).start()
    run = asyncio.create_task(agent.run(stop))
    base = f"http://127.0.0.1:{metrics.port}"
    try:
        await wait_until(lambda: all(r.opened for r in agent.readers))
        sender = can.Bus(interface="virtual", channel=channel)
        try:
            for _ in range(30):
                sender.send(can.Message(arbitration_id=256, is_extended_id=False, data=bytes(8)))
            sender.send(can.Message(arbitration_id=0x7FF, is_extended_id=False, data=bytes(8)))
        finally:
            sender.shutdown()
        sender = can.Bus(interface="virtual", channel=f"{channel}-1")
        try:  # on can1 the id 256 is unknown (its DBC has 0x300 only)
            for _ in range(5):
                sender.send(can.Message(arbitration_id=256, is_extended_id=False, data=bytes(8)))
        finally:
            sender.shutdown()
        await wait_until(lambda: agent.stats().frames >= 36 and agent.uplink.stats.batches_acked >= 1)
        code, text = await asyncio.to_thread(_get, f"{base}/metrics")
        assert code == 200
        assert _value(text, 'tcu_agent_frames_read_total{bus="can0"}') == 31
        assert _value(text, 'tcu_agent_bus_up{bus="can0"}') == 1
        assert _value(text, 'tcu_agent_frames_unknown_total{bus="can0"}') == 1
        assert _value(text, 'tcu_agent_frames_decoded_total{bus="can0"}') == 30
        assert _value(text, 'tcu_agent_frames_read_total{bus="can1"}') == 5
        assert _value(text, 'tcu_agent_frames_unknown_total{bus="can1"}') == 5
        assert _value(text, 'tcu_agent_frames_decoded_total{bus="can1"}') == 0
        assert _value(text, "tcu_agent_uplink_connected") == 1
        assert _value(text, "tcu_agent_uplink_batches_acked_total") >= 1
        assert _value(text, "tcu_agent_uplink_acked_seq") >= 1
        assert "# TYPE tcu_agent_batches_unacked gauge" in text
        assert "# TYPE tcu_agent_signals_decoded_total counter" in text

        code, body = await asyncio.to_thread(_get, f"{base}/healthz")
        health = json.loads(body)
        assert code == 200 and health["healthy"] is True
        assert (
            health["buses"]["can0"]["up"] is True
            and health["buses"]["can1"]["up"] is True
            and health["uplink"]["connected"] is True
        )

        # tcu agent --status asks the same endpoint.
        assert (
            await asyncio.to_thread(_status, replace(config, metrics_listen=f"127.0.0.1:{metrics.port}")) == 0
        )
        assert json.loads(capsys.readouterr().out)["vehicle_id"] == config.vehicle_id

        # A stalled pipeline makes /healthz answer 503 (the pipeline part says why).
        agent.heartbeat.beat()
        agent.heartbeat.last_s -= 60
        code, body = await asyncio.to_thread(_get, f"{base}/healthz")
        assert code == 503 and json.loads(body)["pipeline"]["stalled"] is True
        agent.heartbeat.waiting("frames")
        stop.set()
        await asyncio.wait_for(run, 20)
        # A stalled pipeline (busy, no progress; pinned here since it has ended) makes /healthz 503.
        agent.heartbeat.beat()
        agent.heartbeat.last_s -= 60
        code, body = await asyncio.to_thread(_get, f"{base}/healthz")
        assert code == 503 and json.loads(body)["pipeline"]["stalled"] is True
    finally:
        stop.set()
        if not run.done():
            await asyncio.wait_for(run, 20)
        metrics.stop()


def test_modem_and_esim_state_as_metrics() -> None:
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry, generate_latest

    from tcu.agent.metrics import connectivity_families

    source = SimpleNamespace(
        errors=2,
        state={
            "Iccid": "89330100001234567801",
            "Plmn": "208-01",
            "RegistrationStatus": "home",
            "AccessTechnology": "eutran",
            "SignalStrength": -95.0,
            "IsRoaming": 0.0,
        },
    )
    families = [f.metric() for f in connectivity_families(source)]

    class Fixed:
        def collect(self) -> list[object]:
            return families  # type: ignore[return-value]

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed())  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    assert _value(text, "tcu_agent_connectivity_errors_total") == 2
    assert (
        _value(
            text,
            'tcu_agent_esim_profile_info{access_technology="eutran",iccid="89330100001234567801",'
            'plmn="208-01",registration="home"}',
        )
        == 1
    )
    assert _value(text, "tcu_agent_modem_signal_dbm") == -95
    assert _value(text, "tcu_agent_modem_roaming") == 0
