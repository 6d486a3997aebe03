"""An SM-DP+ for the border demo: osmo-smdpp (osmocom pySim), prepared by ``tools/build_smdpp.sh``.

The border scenario needs a real SM-DP+ to download the German profile from. This module runs the
checkout's ``tools/build_smdpp.sh`` (the script the test fixture uses: it unpacks the pySim
snapshot of ``../shared/third_party`` into a cache folder, makes its venv and a test certificate
set), then starts ``osmo-smdpp.py`` in a folder of the demo's work directory on a free 127.0.0.1
port with TLS, exactly as the fixture does (``-p PORT:interface=127.0.0.1``: osmo-smdpp's TLS
endpoint would otherwise listen on every interface). osmo-smdpp is AGPL/GPL software and runs only
as a separate process. When the script is missing (an installed ``tcu`` without its checkout) or
fails, :func:`start_smdpp` raises :class:`~tcu.demo.procs.DemoError` with the script's reason, so
the demo says so and fails instead of quietly driving without the download.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tcu.demo.procs import DemoError, Proc, spawn

__all__ = ["SERVER_NAME", "Smdpp", "start_smdpp"]

SERVER_NAME = "testsmdpplus1.example.com"
"""osmo-smdpp's own name (its DPtls certificate's); activation codes name it."""

_SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "build_smdpp.sh"
_PREPARE_TIMEOUT_S = 900.0  # the first run builds a venv (pyscard from source)
_START_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class Smdpp:
    """A running osmo-smdpp and the certificate set it trusts."""

    proc: Proc
    port: int
    tree: Path

    @property
    def generated(self) -> Path:
        """The certificate set (CI, DPauth, DPpb, DPtls, EUM, eUICC) of this SM-DP+."""
        return self.tree / "smdpp-data" / "generated"

    @property
    def ci_certificate(self) -> Path:
        return self.generated / "CertificateIssuer" / "CERT_CI_ECDSA_NIST.pem"

    def activation_code(self, matching_id: str) -> str:
        return f"LPA:1${SERVER_NAME}${matching_id}"


async def _prepare(say: Callable[[str], None]) -> Path:
    if not _SCRIPT.is_file():
        raise DemoError(f"the SM-DP+ cannot be set up: {_SCRIPT} not found (run the demo from a checkout)")
    say("preparing osmo-smdpp (tools/build_smdpp.sh; the first run takes a few minutes)")
    proc = await asyncio.create_subprocess_exec(
        "bash", str(_SCRIPT), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), _PREPARE_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise DemoError(
            f"the SM-DP+ cannot be set up: {_SCRIPT} took more than {_PREPARE_TIMEOUT_S:.0f} s"
        ) from None
    if proc.returncode != 0:
        lines = [
            line for line in err.decode(errors="replace").splitlines() if line.startswith("build_smdpp:")
        ]
        reason = lines[-1] if lines else err.decode(errors="replace")[-400:]
        raise DemoError(f"the SM-DP+ cannot be set up ({_SCRIPT.name} exit {proc.returncode}): {reason}")
    return Path(out.decode().strip().splitlines()[-1])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def start_smdpp(workdir: Path, say: Callable[[str], None]) -> Smdpp:
    """Prepare (once per machine) and start osmo-smdpp in ``workdir/smdpp``; see the module docstring."""
    tree = await _prepare(say)
    home = workdir / "smdpp"
    data = home / "smdpp-data"
    data.mkdir(parents=True, exist_ok=True)
    for name in ("upp", "generated"):
        link = data / name
        if not link.exists():
            link.symlink_to(tree / "smdpp-data" / name)
    port = _free_port()
    python = tree / "venv" / "bin" / "python"
    args = [str(python), str(tree / "osmo-smdpp.py"), "-H", "127.0.0.1", "-p", f"{port}:interface=127.0.0.1"]
    args += ["-c", "generated", "-v"]  # -v: its log shows each notification it verified
    proc = await spawn("smdpp", args, workdir, cwd=home)
    deadline = time.monotonic() + _START_TIMEOUT_S
    while True:
        if proc.proc.returncode is not None:
            raise proc.failed(f"exited with status {proc.proc.returncode} while starting")
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            break
        if time.monotonic() > deadline:
            await proc.stop()
            raise proc.failed(f"did not listen on 127.0.0.1:{port} within {_START_TIMEOUT_S:.0f} s")
        await asyncio.sleep(0.1)
    say(f"SM-DP+ osmo-smdpp listening on 127.0.0.1:{port} (TLS, {SERVER_NAME}; pid {proc.proc.pid})")
    return Smdpp(proc, port, tree)
