"""Child processes of the demo and the chaos run: spawn with a log file, wait, read JSON lines, stop.

Children die with their parent (``PR_SET_PDEATHSIG``), so a run killed from outside
leaves no ingest, simulator or agent behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from tcu.errors import TcuError

__all__ = ["DemoError", "Proc", "read_json_line", "read_stats", "read_text", "spawn", "wait_file"]

log = logging.getLogger(__name__)


class DemoError(TcuError):
    """A process of the demo failed; the message names it and the tail of its log."""


class Proc:
    def __init__(self, name: str, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        self.name, self.proc, self.log_path = name, proc, log_path

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def failed(self, what: str) -> DemoError:
        return DemoError(f"{self.name} {what} (log {self.log_path}):\n{self.tail()}")

    async def stop(self, timeout_s: float = 20.0) -> int | None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout_s)
            except TimeoutError:
                log.warning("%s did not stop within %.0f s; killing it", self.name, timeout_s)
                self.proc.kill()
                await self.proc.wait()
        return self.proc.returncode


def die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the demo process dies, even by SIGKILL.

    Without it, a demo killed from outside (a test's timeout, Ctrl-\\) would leave its
    ingest, simulator and agent running.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


async def spawn(
    name: str, args: list[str], workdir: Path, *, stdout: int | None = None, cwd: Path | None = None
) -> Proc:
    """Start ``args`` with stderr (and stdout unless piped) in ``workdir/<name>.log``; in ``cwd`` if given."""
    log_path = workdir / f"{name}.log"
    log_file = log_path.open("wb")
    try:
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=stdout or log_file,
            stderr=log_file,
            preexec_fn=die_with_parent,
            cwd=cwd,
        )
    finally:
        log_file.close()
    return Proc(name, proc, log_path)


async def wait_file(path: Path, proc: Proc, timeout_s: float) -> str:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        text = read_text(path)
        if text:
            return text
        if proc.proc.returncode is not None:
            raise proc.failed(f"exited with status {proc.proc.returncode} while starting")
        await asyncio.sleep(0.05)
    raise proc.failed(f"did not start within {timeout_s:.0f} s")


async def read_json_line(proc: Proc, timeout_s: float | None) -> dict[str, Any]:
    assert proc.proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.proc.stdout.readline(), timeout_s)
    except TimeoutError:
        raise proc.failed(f"said nothing within {timeout_s:.0f} s") from None
    if not line:
        await proc.proc.wait()
        raise proc.failed(f"exited with status {proc.proc.returncode}")
    try:
        value: dict[str, Any] = json.loads(line)
    except json.JSONDecodeError as exc:
        raise proc.failed(f"printed a line that is not JSON: {line[:200]!r}") from exc
    return value


def read_text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def read_stats(path: Path) -> dict[str, Any]:
    try:
        value: dict[str, Any] = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return value
