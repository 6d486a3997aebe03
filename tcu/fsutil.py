"""Small file-system helpers shared by the spool, the agent and the PKI.

Errors are plain :class:`OSError`; each caller translates them into its own
:class:`~tcu.errors.TcuError` with the path and what it was doing.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["fsync_directory", "write_atomic"]


def fsync_directory(directory: Path) -> None:
    """fsync a directory, so that a rename or a new file in it survives power loss."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` so that a reader sees the old or the new content, never a mix.

    The data goes to ``<path>.tmp`` beside it (created with ``mode``), which is renamed over
    ``path``. With ``durable`` (the default) the file is fsync-ed before the rename and the
    directory after it, so the new content also survives power loss. A leftover ``.tmp`` of an
    interrupted write is overwritten by the next one; on error it is removed.
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            os.fchmod(fd, mode)  # a leftover tmp file keeps its old mode through O_TRUNC
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_directory(path.parent)
