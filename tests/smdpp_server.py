"""A real SM-DP+ for the tests: osmo-smdpp (osmocom pySim) on a free loopback port, TLS on.

``tools/build_smdpp.sh`` unpacks the pySim snapshot into a cache folder, makes its venv and its
certificate set (pySim's ``contrib/generate_smdpp_certs.py``: a test CI, DPauth, DPpb, DPtls for
``testsmdpplus1.example.com``, an EUM and an eUICC). Where it cannot be prepared, the tests that
use these fixtures skip with the script's reason; ``TCU_REQUIRE_SMDPP=1`` (set in ``.ci/run``)
turns that skip into a failure.

Fixtures (imported by ``tests/conftest.py``, so every test folder has them):

* ``smdpp_tree`` (session): :class:`SmdppTree`, the prepared tree and its certificate files;
  ``smdpp_tree.card_credentials()`` and ``smdpp_tree.eid`` make a simulated card osmo-smdpp trusts.
* ``smdpp`` (session): :class:`SmdpPlus`, a running ``osmo-smdpp.py -H 127.0.0.1 -p PORT -c generated``
  in its own working folder (its session store and log there), stopped at the end of the run
  (one for all tests: its start costs 2 to 10 s; read its log after :meth:`SmdpPlus.log_mark`).
  ``run_smdpp(tree, folder)`` starts a private one.
* ``smdpp_proxy`` (session): :class:`ConnectProxy`, an HTTP CONNECT proxy on 127.0.0.1 that maps
  ``testsmdpplus1.example.com:443`` to the running ``smdpp`` and refuses every other target
  (counted). For clients that can only be pointed at a name (lpac: ``https_proxy``).

osmo-smdpp checks the ``smdpAddress`` of InitiateAuthentication against its own name exactly
(``testsmdpplus1.example.com``, no port), so the activation code names that, and a client reaches
127.0.0.1:PORT either by connecting there itself with the TLS server name set
(:meth:`SmdpPlus.ssl_context`, ``server_hostname=SmdpPlus.server_name``) or through the proxy.
Nothing resolves or contacts the example.com name; /etc/hosts is not touched.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from loopback import free_port

from sim.euicc import CardCredentials

ROOT = Path(__file__).resolve().parents[1]
SERVER_NAME = "testsmdpplus1.example.com"  # osmo-smdpp's HOSTNAME, the DPtls certificate's name
REQUIRE_ENV = "TCU_REQUIRE_SMDPP"
_EXIT_REASONS = {2: "no pySim source snapshot", 3: "system packages missing", 4: "preparation failed"}
_START_TIMEOUT_S = 60.0  # a hang guard for the start (imports and ASN.1 compile), not a performance bound


@dataclass(frozen=True)
class SmdppTree:
    """The prepared pySim tree and the generated certificate set (NIST P-256 files)."""

    root: Path

    @property
    def python(self) -> Path:
        return self.root / "venv" / "bin" / "python"

    @property
    def script(self) -> Path:
        return self.root / "osmo-smdpp.py"

    @property
    def generated(self) -> Path:
        return self.root / "smdpp-data" / "generated"

    @property
    def upp_dir(self) -> Path:
        return self.root / "smdpp-data" / "upp"

    @property
    def ci_certificate(self) -> Path:
        """CERT.CI.ECDSA (PEM): what a client verifies the DPtls chain against."""
        return self.generated / "CertificateIssuer" / "CERT_CI_ECDSA_NIST.pem"

    @property
    def ci_certificate_der(self) -> Path:
        return self.generated / "CertificateIssuer" / "CERT_CI_ECDSA_NIST.der"

    @property
    def euicc_certificate(self) -> Path:
        """CERT.EUICC.ECDSA (DER), subject serialNumber = the EID."""
        return self.generated / "eUICC" / "CERT_EUICC_ECDSA_NIST.der"

    @property
    def euicc_key(self) -> Path:
        """SK.EUICC.ECDSA (PEM)."""
        return self.generated / "eUICC" / "SK_EUICC_ECDSA_NIST.pem"

    @property
    def eum_certificate(self) -> Path:
        """CERT.EUM.ECDSA (DER)."""
        return self.generated / "EUM" / "CERT_EUM_ECDSA_NIST.der"

    @property
    def eid(self) -> str:
        """The EID in the eUICC certificate (osmo-smdpp takes the EID from it)."""
        cert = x509.load_der_x509_certificate(self.euicc_certificate.read_bytes())
        value = cert.subject.get_attributes_for_oid(x509.NameOID.SERIAL_NUMBER)[0].value
        return str(value)

    @property
    def matching_ids(self) -> tuple[str, ...]:
        """The TS.48 test profiles osmo-smdpp serves: a matching id is a file name in upp/."""
        return tuple(sorted(p.stem for p in self.upp_dir.glob("*.der")))

    def euicc_private_key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.euicc_key.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key

    def card_credentials(self) -> CardCredentials:
        """The simulated card's identity from this set (``EuiccConfig(eid=self.eid, credentials=...)``)."""
        return CardCredentials.from_files(
            self.euicc_certificate, self.euicc_key, self.eum_certificate, self.ci_certificate_der
        )

    def ci_pkid(self) -> bytes:
        """The CI's SubjectKeyIdentifier (20 bytes), the eUICC's euiccCiPKId."""
        cert = x509.load_der_x509_certificate(self.ci_certificate_der.read_bytes())
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest


@dataclass
class SmdpPlus:
    """A running osmo-smdpp."""

    tree: SmdppTree
    host: str
    port: int
    workdir: Path
    process: subprocess.Popen[bytes]
    server_name: str = SERVER_NAME

    @property
    def address(self) -> str:
        """The SM-DP+ address for activation codes and ``smdpAddress`` (osmo-smdpp's own name)."""
        return self.server_name

    @property
    def url(self) -> str:
        """Where it really listens: ``https://127.0.0.1:PORT`` (TLS name: :attr:`server_name`)."""
        return f"https://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "osmo-smdpp.log"

    def log_text(self, since: int = 0) -> str:
        """Its log (stdout and stderr, ``-v``: debug lines), from character ``since`` on."""
        return self.log_path.read_text(errors="replace")[since:]

    def log_mark(self) -> int:
        """Where the log ends now: ``log_text(since=mark)`` is what came after."""
        return len(self.log_text())

    def activation_code(self, matching_id: str) -> str:
        """SGP.22 §4.1 activation code ``LPA:1$<SM-DP+ address>$<matching id>``."""
        return f"LPA:1${self.address}${matching_id}"

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts only the generated CI (use ``server_hostname=server_name``)."""
        context = ssl.create_default_context(cafile=str(self.tree.ci_certificate))
        context.check_hostname = True
        return context


def _prepare() -> SmdppTree:
    script = ROOT / "tools" / "build_smdpp.sh"
    try:
        done = subprocess.run(
            ["bash", str(script)], capture_output=True, text=True, timeout=900, check=False, cwd=ROOT
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        reason = f"osmo-smdpp could not be prepared: {exc}"
    else:
        if done.returncode == 0:
            return SmdppTree(Path(done.stdout.strip().splitlines()[-1]))
        lines = [line for line in done.stderr.splitlines() if line.startswith("build_smdpp:")]
        what = _EXIT_REASONS.get(done.returncode, f"exit {done.returncode}")
        reason = f"osmo-smdpp could not be prepared ({what}): {lines[-1] if lines else done.stderr[-300:]}"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@contextlib.contextmanager
def run_smdpp(tree: SmdppTree, workdir: Path) -> Iterator[SmdpPlus]:
    """Start osmo-smdpp in ``workdir`` (its session store and log go there) and stop it after.

    osmo-smdpp reads ``./smdpp-data`` from its working folder: ``workdir/smdpp-data`` links
    ``upp`` and ``generated`` of the prepared tree. With TLS on it listens on the Twisted endpoint
    ``ssl:<port>:...`` (all interfaces; its ``-H`` is used only without TLS), so the port argument
    carries ``:interface=127.0.0.1`` into that endpoint string to keep it on loopback.
    """
    data = workdir / "smdpp-data"
    data.mkdir(parents=True, exist_ok=True)
    for name in ("upp", "generated"):
        link = data / name
        if not link.exists():
            link.symlink_to(tree.root / "smdpp-data" / name)
    port = free_port()
    log = (workdir / "osmo-smdpp.log").open("wb")
    command = [
        str(tree.python), str(tree.script), "-H", "127.0.0.1", "-p", f"{port}:interface=127.0.0.1",
        "-c", "generated", "-v",
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    server = SmdpPlus(tree, "127.0.0.1", port, workdir, process)
    try:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                tail = server.log_text()[-2000:]
                raise RuntimeError(f"osmo-smdpp exited with {process.returncode}:\n{tail}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"osmo-smdpp did not listen within {_START_TIMEOUT_S} s")
            time.sleep(0.1)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


@dataclass
class ConnectProxy:
    """HTTP CONNECT proxy on 127.0.0.1: ``<server_name>:443`` → the SM-DP+'s loopback port.

    Any other target is answered ``403`` and counted in :attr:`refused` (with the target), so a
    client that tries to reach somewhere else is seen, never silently served.
    """

    port: int
    target: tuple[str, int]
    server_name: str = SERVER_NAME
    tunnels: int = 0
    refused: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _pump(a: socket.socket, b: socket.socket) -> None:
    sockets = [a, b]
    try:
        while True:
            readable, _, _ = select.select(sockets, [], [], 30.0)
            if not readable:
                return
            for sock in readable:
                data = sock.recv(65536)
                if not data:
                    return
                (b if sock is a else a).sendall(data)
    except OSError:
        return
    finally:
        a.close()
        b.close()


@contextlib.contextmanager
def run_connect_proxy(target: tuple[str, int], server_name: str = SERVER_NAME) -> Iterator[ConnectProxy]:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    proxy = ConnectProxy(int(listener.getsockname()[1]), target, server_name)
    stop = threading.Event()

    def handle(client: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(4096)
            if not chunk:
                client.close()
                return
            head += chunk
        request = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request.split()
        wanted = f"{server_name}:443"
        if len(parts) != 3 or parts[0] != "CONNECT" or parts[1].lower() != wanted:
            proxy.refused.append(request)
            client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            client.close()
            return
        upstream = socket.create_connection(target, timeout=10)
        proxy.tunnels += 1
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        _pump(client, upstream)

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            threading.Thread(target=handle, args=(client,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


@pytest.fixture(scope="session")
def smdpp_tree() -> SmdppTree:
    return _prepare()


@pytest.fixture(scope="session")
def smdpp(smdpp_tree: SmdppTree, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmdpPlus]:
    with run_smdpp(smdpp_tree, tmp_path_factory.mktemp("smdpp")) as server:
        yield server


@pytest.fixture(scope="session")
def smdpp_proxy(smdpp: SmdpPlus) -> Iterator[ConnectProxy]:
    with run_connect_proxy((smdpp.host, smdpp.port), smdpp.server_name) as proxy:
        yield proxy


__all__ = [
    "REQUIRE_ENV",
    "SERVER_NAME",
    "ConnectProxy",
    "SmdpPlus",
    "SmdppTree",
    "run_connect_proxy",
    "run_smdpp",
    "smdpp",
    "smdpp_proxy",
    "smdpp_tree",
]
