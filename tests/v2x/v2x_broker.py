"""Helpers of the V2N tests: a real Mosquitto with the project's PKI on a free loopback port.

Started the way CI runs it: as root without a ``user`` option, so Mosquitto drops to its own
user (the generated folder is handed to it). ``restart()`` stops the broker gracefully (it saves
its persistence file) and starts it again on the same port.
"""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tcu.pki import DevPki
from tcu.v2x.client import V2xClientConfig

MOSQUITTO = "/usr/sbin/mosquitto"
TIMEOUT_S = 10.0

VEHICLES = {"WDD2050461A000101": 101, "WDD2050461A000102": 102, "WDD2050461A000103": 103}
BACKEND = "road-operator"
BACKEND_STATION = 900001


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class V2xBroker:
    pki: DevPki
    home: Path
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    vehicles: dict[str, int] = field(default_factory=lambda: dict(VEHICLES))

    @property
    def conf(self) -> Path:
        return self.home / "broker" / "mosquitto.conf"

    def start(self) -> None:
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.conf)], stdout=log_file, stderr=subprocess.STDOUT
            )
        self.starts += 1
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.process.returncode}: {self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not listen on {self.port}: {self.log()}")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client_config(
        self, vin: str | None, *, station_client_id: str | None = None, **kw: object
    ) -> V2xClientConfig:
        """Settings for a vehicle (``vin``) or the backend (``vin=None``)."""
        if vin is None:
            cert, key = self.pki.backend(BACKEND)
            client_id = station_client_id or BACKEND
        else:
            cert, key = self.pki.vehicle(vin)
            client_id = station_client_id or vin
        base: dict[str, object] = {
            "host": "127.0.0.1",
            "port": self.port,
            "client_id": client_id,
            "ca_file": self.pki.ca_cert,
            "cert_file": cert,
            "key_file": key,
            "reconnect_min_s": 0.1,
            "reconnect_max_s": 0.5,
            "connect_timeout_s": 5.0,
        }
        base.update(kw)
        return V2xClientConfig(**base)  # type: ignore[arg-type]
