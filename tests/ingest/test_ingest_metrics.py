"""The ingest's Prometheus endpoint (scraped over HTTP) and its gRPC health following the store."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import urllib.error
import urllib.request
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2 as health_pb
from grpc_health.v1 import health_pb2_grpc as health_grpc

from tcu.api.v1 import fleet_pb2 as fleet_pb
from tcu.ingest import IngestConfig
from tcu.ingest.metrics import RpcCounter, ingest_health, ingest_snapshot
from tcu.ingest.store import SqliteSink
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


async def test_scrape_the_ingest(config: IngestConfig, kit: Any) -> None:
    rpcs = RpcCounter()
    running = await kit.start(config, interceptors=[rpcs])
    metrics = MetricsServer(
        "127.0.0.1:0",
        key="--metrics-listen",
        loop=asyncio.get_running_loop(),
        snapshot=lambda: ingest_snapshot(running.server, rpcs),
        health=lambda: ingest_health(running.server),
    ).start()
    try:
        # A live subscriber that reads nothing: the updates wait in its queue (its lag).
        lagging = running.server.hub.subscribe()
        call = await running.open_upload("WTCUMETRICS000001")
        for seq in (1, 2, 1):  # the second 1 is a duplicate
            await call.write(kit.batch("WTCUMETRICS000001", seq))
            await kit.ack_of(call)
        for _ in range(3):
            await running.fleet.ListVehicles(fleet_pb.ListVehiclesRequest())
        with pytest.raises(grpc.aio.AioRpcError):  # answered NOT_FOUND or INVALID_ARGUMENT
            async for _ in running.fleet.Query(fleet_pb.QueryRequest(vehicle_id="")):
                pass
        await asyncio.sleep(0.05)
        code, text = await asyncio.to_thread(_get, f"http://127.0.0.1:{metrics.port}/metrics")
        assert code == 200
        assert _value(text, 'tcu_ingest_rpcs_started_total{method="/tcu.api.v1.Ingest/Upload"}') == 1
        listed = 'method="/tcu.api.v1.Fleet/ListVehicles"'
        assert _value(text, f'tcu_ingest_rpcs_handled_total{{code="OK",{listed}}}') == 3
        assert _value(text, f"tcu_ingest_rpc_duration_seconds_count{{{listed}}}") == 3
        assert _value(text, f'tcu_ingest_rpc_duration_seconds_bucket{{le="+Inf",{listed}}}') == 3
        assert 0 < _value(text, f"tcu_ingest_rpc_duration_seconds_sum{{{listed}}}") < 10
        query = re.findall(
            r'^tcu_ingest_rpcs_handled_total\{code="(\w+)",method="/tcu.api.v1.Fleet/Query"\} 1', text, re.M
        )
        assert query and query[0] != "OK", text
        groups = _value(text, "tcu_ingest_commit_groups_total")
        assert _value(text, "tcu_ingest_commit_duration_seconds_count") == groups
        assert _value(text, "tcu_ingest_commit_group_size_batches_count") == groups
        assert _value(text, "tcu_ingest_commit_group_size_batches_sum") >= 3  # the batches (and check-ins)
        # The two stored batches wait for the subscriber that does not read (the duplicate is not sent).
        assert _value(text, "tcu_ingest_subscribers") == 1
        assert _value(text, "tcu_ingest_subscriber_queued_updates") == 2
        assert _value(text, "tcu_ingest_subscriber_lag_updates_max") == 2
        assert _value(text, "tcu_ingest_subscriber_lag_seconds_max") > 0
        assert _value(text, "tcu_ingest_subscriber_overflows_total") == 0
        assert await lagging.get() is not None  # it reads one: its lag shrinks
        _code, text = await asyncio.to_thread(_get, f"http://127.0.0.1:{metrics.port}/metrics")
        assert _value(text, "tcu_ingest_subscriber_lag_updates_max") == 1
        lagging.close()
        assert _value(text, "tcu_ingest_batches_total") == 3
        assert _value(text, "tcu_ingest_batches_duplicate_total") == 1
        assert _value(text, "tcu_ingest_commit_groups_total") >= 1
        assert _value(text, "tcu_ingest_commit_seconds_total") > 0
        assert _value(text, "tcu_ingest_writer_up") == 1
        assert _value(text, "tcu_ingest_vehicles_connected") == 1
        _code, text = await asyncio.to_thread(_get, f"http://127.0.0.1:{metrics.port}/metrics")
        assert _value(text, "tcu_ingest_subscribers") == 0
        assert _value(text, "tcu_ingest_subscriber_lag_seconds_max") == 0
        code, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{metrics.port}/healthz")
        assert code == 200 and json.loads(body)["healthy"] is True
        call.cancel()
    finally:
        metrics.stop()
        await kit.finish(running)


async def test_health_is_not_serving_while_the_store_cannot_commit(
    config: IngestConfig, kit: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    running = await kit.start(config, store_check_s=0.05)
    stub = health_grpc.HealthStub(running.channel)

    async def status(service: str = "") -> int:
        return int((await stub.Check(health_pb.HealthCheckRequest(service=service))).status)

    sink = running.server.sink
    assert isinstance(sink, SqliteSink)
    real = sink._write_group

    def failing(conn: Any, items: Any) -> Any:
        raise sqlite3.OperationalError("disk I/O error")

    try:
        assert await status() == health_pb.HealthCheckResponse.SERVING
        monkeypatch.setattr(sink, "_write_group", failing)
        with pytest.raises(Exception, match="disk I/O error"):
            await sink.store_checkin("WTCUMETRICS000002", ())
        for _ in range(100):
            if await status() == health_pb.HealthCheckResponse.NOT_SERVING:
                break
            await asyncio.sleep(0.02)
        assert await status() == health_pb.HealthCheckResponse.NOT_SERVING
        assert await status("tcu.api.v1.Ingest") == health_pb.HealthCheckResponse.NOT_SERVING
        monkeypatch.setattr(sink, "_write_group", real)
        await sink.store_checkin("WTCUMETRICS000002", ())  # the store commits again
        for _ in range(100):
            if await status() == health_pb.HealthCheckResponse.SERVING:
                break
            await asyncio.sleep(0.02)
        assert await status() == health_pb.HealthCheckResponse.SERVING
    finally:
        await kit.finish(running)
