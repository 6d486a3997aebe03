"""Fuzz target ``logs``: :func:`tcu.can.logs.open_log` for candump, BLF, ASC and TRC.

The first input byte picks the format (modulo 4), the rest is the file. Contract: opening
and iterating ends with frames (problems recorded in ``stats`` are fine) or with
:class:`tcu.errors.InputError` (``LogFormatError`` is one); every chunk is consistent
(all columns of one length, channel indices inside the channel table). ``dlc`` is not
checked against the payload width: as in python-can, a BLF error frame may say 102.
"""

from __future__ import annotations

import warnings
from functools import cache

from tcu.can.logs import open_log
from tcu.errors import InputError
from tools.fuzz._common import scratch_dir
from tools.shared_data import shared_path

__all__ = ["FORMATS", "NAME", "one_input", "seeds"]

NAME = "logs"
#: (format, suffix) chosen by the first byte.
FORMATS = (("candump", ".log"), ("blf", ".blf"), ("asc", ".asc"), ("trc", ".trc"))
_SEED_BYTES = 8192


@cache
def seeds() -> list[bytes]:
    """Every shared log in these formats (text logs cut to about 8 KiB at a line end)."""
    out: list[bytes] = []
    for index, (_fmt, suffix) in enumerate(FORMATS):
        for file in sorted(shared_path("can/logs").glob(f"*{suffix}")):
            data = file.read_bytes()
            if suffix != ".blf" and len(data) > _SEED_BYTES:
                data = data[: data.rfind(b"\n", 0, _SEED_BYTES) + 1]
            out.append(bytes([index]) + data)
    return out


def one_input(data: bytes) -> None:
    if not data:
        return
    fmt, suffix = FORMATS[data[0] % len(FORMATS)]
    path = scratch_dir() / f"input{suffix}"
    path.write_bytes(data[1:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            reader = open_log(path, fmt=fmt, chunk_frames=64)
            for chunk in reader:
                n = len(chunk)
                columns = (
                    chunk.arbitration_id,
                    chunk.is_extended,
                    chunk.channel,
                    chunk.dlc,
                    chunk.data,
                    chunk.is_fd,
                    chunk.is_error,
                    chunk.is_remote,
                    chunk.is_rx,
                )
                if any(column.shape[0] != n for column in columns):
                    raise AssertionError(f"{fmt}: chunk columns of different lengths")
                if n and int(chunk.channel.max()) >= max(1, len(chunk.channels)):
                    raise AssertionError(f"{fmt}: channel index outside the channel table")
        except InputError:
            return
