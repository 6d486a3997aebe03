"""A tmpfs for the agent's spool that the chaos run can shrink until it is full.

``mount -t tmpfs`` needs root (or CAP_SYS_ADMIN); :meth:`Tmpfs.mount` raises
:class:`TmpfsUnavailable` with the reason when it is not possible, and the chaos
run then skips its disk-full phases, saying why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tcu.errors import TcuError

__all__ = ["Tmpfs", "TmpfsUnavailable"]

_PAGE = 4096


class TmpfsUnavailable(TcuError):
    """A tmpfs could not be mounted or resized here."""


def _run(args: list[str]) -> None:
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TmpfsUnavailable(f"{' '.join(args)}: {exc}") from exc
    if proc.returncode != 0:
        raise TmpfsUnavailable(f"{' '.join(args)}: {proc.stderr.strip() or f'status {proc.returncode}'}")


class Tmpfs:
    def __init__(self, path: Path, size_bytes: int) -> None:
        self.path, self.size_bytes = path, size_bytes
        self.mounted = False

    def mount(self) -> None:
        if os.geteuid() != 0:
            raise TmpfsUnavailable("mounting a tmpfs needs root")
        if shutil.which("mount") is None:
            raise TmpfsUnavailable("no mount command")
        self.path.mkdir(parents=True, exist_ok=True)
        _run(["mount", "-t", "tmpfs", "-o", f"size={self.size_bytes},mode=0755", "tmpfs", str(self.path)])
        self.mounted = True

    def used(self) -> int:
        st = os.statvfs(self.path)
        return (st.f_blocks - st.f_bfree) * st.f_frsize

    def free(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def resize(self, size_bytes: int) -> int:
        """Set the size (rounded up to pages); returns it."""
        size = -(-size_bytes // _PAGE) * _PAGE
        _run(["mount", "-o", f"remount,size={size}", str(self.path)])
        return size

    def shrink_to_used(self, margin_bytes: int) -> int:
        """Shrink to what is in use plus ``margin_bytes``; returns the new size."""
        for _ in range(5):
            try:
                return self.resize(self.used() + margin_bytes)
            except TmpfsUnavailable:
                continue  # the spool grew between statvfs and remount: try again
        return self.resize(self.used() + margin_bytes)

    def restore(self) -> None:
        self.resize(self.size_bytes)

    def unmount(self) -> None:
        if self.mounted:
            try:
                _run(["umount", str(self.path)])
            except TmpfsUnavailable:
                _run(["umount", "-l", str(self.path)])
            self.mounted = False
