"""The Prometheus endpoint of ``tcu agent`` and ``tcu ingest``, with ``/healthz`` beside it.

Nothing is instrumented on the hot paths: a custom collector reads the services' existing
stats objects when Prometheus scrapes. The values are read *on the service's event loop*
(the HTTP server's thread hands the call over and waits at most ``timeout_s``), so no stats
object is read while the loop changes it; a loop that does not answer makes the scrape and
``/healthz`` fail with 503 (and that is logged), never hang.

``GET /metrics``: the text exposition format. ``GET /healthz``: a JSON object with
``"healthy": true|false`` and the parts the service reports; 200 when healthy, else 503.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from tcu.errors import ConfigError
from tcu.histogram import Histogram

__all__ = ["Family", "MetricsServer", "parse_listen"]

log = logging.getLogger(__name__)


@dataclass
class Family:
    """One metric family of a snapshot: ``counter`` (name without ``_total``), ``gauge`` or
    ``histogram`` (its samples added with :meth:`add_histogram`)."""

    name: str
    kind: str
    help: str
    labels: Sequence[str] = ()
    samples: list[tuple[Sequence[str], float]] = field(default_factory=list)
    histograms: list[tuple[Sequence[str], Histogram]] = field(default_factory=list)

    def add(self, value: float, *labels: str) -> Family:
        self.samples.append((labels, float(value)))
        return self

    def add_histogram(self, histogram: Histogram, *labels: str) -> Family:
        self.histograms.append((labels, histogram))
        return self

    def metric(self) -> Metric:
        if self.kind == "histogram":
            hist = HistogramMetricFamily(self.name, self.help, labels=list(self.labels))
            for labels, h in self.histograms:
                buckets, total, _count = h.snapshot()
                hist.add_metric(list(labels), [(le, float(n)) for le, n in buckets], total)
            return hist
        cls = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        family = cls(self.name, self.help, labels=list(self.labels))
        for labels, value in self.samples:
            family.add_metric(list(labels), value)
        return family


def parse_listen(listen: str, key: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"expected host:port, got {listen!r}", key=key)
    return host, int(port)


class _LoopCollector(Collector):
    def __init__(self, server: MetricsServer) -> None:
        self._server = server

    def collect(self) -> Iterator[Metric]:
        for family in self._server.on_loop(self._server.snapshot):
            yield family.metric()


class MetricsServer:
    """HTTP on ``listen`` (loopback by default) in a thread: ``/metrics`` and ``/healthz``.

    ``snapshot()`` and ``health()`` run on ``loop`` (the service's event loop).
    """

    def __init__(
        self,
        listen: str,
        *,
        key: str,
        loop: asyncio.AbstractEventLoop,
        snapshot: Callable[[], Iterable[Family]],
        health: Callable[[], Mapping[str, Any]],
        timeout_s: float = 2.0,
    ) -> None:
        self.host, port = parse_listen(listen, key)
        self.loop = loop
        self.snapshot = snapshot
        self.health = health
        self.timeout_s = timeout_s
        self.scrape_failures = 0
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_LoopCollector(self))
        handler = _handler(self)
        try:
            self._httpd = ThreadingHTTPServer((self.host, port), handler)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {listen}: {exc.strerror}", key=key) from exc
        self._httpd.daemon_threads = True
        self.port: int = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="tcu.metrics", daemon=True)

    def start(self) -> MetricsServer:
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics (health: /healthz)", self.host, self.port)
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def on_loop(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` run on the service's event loop; raises TimeoutError when it does not answer."""

        async def call() -> Any:
            return list(fn()) if fn is self.snapshot else fn()

        future = asyncio.run_coroutine_threadsafe(call(), self.loop)
        try:
            return future.result(self.timeout_s)
        except TimeoutError:
            future.cancel()
            raise


def _handler(server: MetricsServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            try:
                if path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(server.registry))
                elif path == "/healthz":
                    health = dict(server.on_loop(server.health))
                    body = json.dumps(health, default=str).encode()
                    self._send(200 if health.get("healthy") else 503, "application/json", body)
                else:
                    self._send(404, "text/plain", b"not found: try /metrics or /healthz\n")
            except Exception as exc:  # a loop that does not answer, a failing stats object: 503, logged
                server.scrape_failures += 1
                log.error("metrics: %s failed: %s: %s", path, type(exc).__name__, exc)
                body = json.dumps({"healthy": False, "error": f"{type(exc).__name__}: {exc}"}).encode()
                self._send(503, "application/json", body)

        def _send(self, code: int, content_type: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("metrics: " + format, *args)

    return Handler
