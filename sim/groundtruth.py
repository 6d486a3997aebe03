"""Ground truth of a simulated drive: every value the simulator encoded.

A drive records, per ``(message, signal)``, the frame time in epoch
microseconds and the physical value after quantisation, i.e. exactly what
``db.decode_message(..., decode_choices=False)`` gives back for the frame. It
also keeps every frame (time, arbitration id, DLC, data). The file is a NumPy
``.npz`` archive:

``start_us``, ``end_us``, ``frames``               0-d int64: drive start, last frame time, frame count
``frame_t_us``, ``frame_arbitration_id``            int64 / uint32 columns, one row per frame
``frame_dlc``, ``frame_data``                       uint8 column and (frames, 8) uint8 matrix
``t_us:<message>:<signal>``, ``value:<message>:<signal>``   int64 / float64 columns per signal

:func:`load` reads it back as :class:`GroundTruth`.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tcu.errors import InputError, TcuError

__all__ = ["GroundTruth", "GroundTruthError", "GroundTruthRecorder", "UnknownSeriesError", "load"]

Int64Array = npt.NDArray[np.int64]
Float64Array = npt.NDArray[np.float64]


class GroundTruthError(InputError):
    """A ground-truth file cannot be read or is not one."""


class UnknownSeriesError(TcuError, KeyError):
    """The ground truth has no series for the requested ``(message, signal)``."""


@dataclass(frozen=True, slots=True)
class GroundTruth:
    """Columns of one drive. Use :meth:`series` for one signal's samples."""

    frames: int
    start_us: int
    end_us: int
    frame_t_us: Int64Array
    frame_arbitration_id: npt.NDArray[np.uint32]
    frame_dlc: npt.NDArray[np.uint8]
    frame_data: npt.NDArray[np.uint8]
    _series: dict[tuple[str, str], tuple[Int64Array, Float64Array]] = field(repr=False)

    def keys(self) -> list[tuple[str, str]]:
        """All ``(message, signal)`` pairs with samples, sorted."""
        return sorted(self._series)

    def series(self, message: str, signal: str) -> tuple[Int64Array, Float64Array]:
        """``(t_us, values)`` of one signal, in time order."""
        try:
            return self._series[(message, signal)]
        except KeyError:
            raise UnknownSeriesError(f"no ground truth for {message}.{signal}") from None


class GroundTruthRecorder:
    """Appends encoded frames and their quantised signal values; :meth:`save` writes the file."""

    def __init__(self, start_us: int) -> None:
        self.start_us = start_us
        self._frame_t: list[int] = []
        self._frame_id: list[int] = []
        self._frame_data: list[bytes] = []
        self._t: dict[tuple[str, str], list[int]] = {}
        self._v: dict[tuple[str, str], list[float]] = {}
        self._frame_keys: list[list[tuple[str, str]]] = []

    @property
    def frames(self) -> int:
        return len(self._frame_t)

    def add_frame(
        self,
        t_us: int,
        arbitration_id: int,
        data: bytes,
        *,
        message: str,
        signals: Sequence[str],
        values: Sequence[float],
    ) -> None:
        self._frame_t.append(t_us)
        self._frame_id.append(arbitration_id)
        self._frame_data.append(data)
        keys = [(message, name) for name in signals]
        self._frame_keys.append(keys)
        for key, value in zip(keys, values, strict=True):
            t_list = self._t.get(key)
            if t_list is None:
                t_list = self._t[key] = []
                self._v[key] = []
            t_list.append(t_us)
            self._v[key].append(value)

    def drop_last(self, count: int) -> None:
        """Forget the last ``count`` frames and their samples (frames that were never sent)."""
        for _ in range(min(count, len(self._frame_t))):
            for key in self._frame_keys.pop():
                self._t[key].pop()
                self._v[key].pop()
                if not self._t[key]:
                    del self._t[key], self._v[key]
            self._frame_t.pop()
            self._frame_id.pop()
            self._frame_data.pop()

    def to_ground_truth(self) -> GroundTruth:
        n = len(self._frame_t)
        data = np.zeros((n, 8), dtype=np.uint8)
        dlc = np.zeros(n, dtype=np.uint8)
        for i, payload in enumerate(self._frame_data):
            data[i, : len(payload)] = np.frombuffer(payload, dtype=np.uint8)
            dlc[i] = len(payload)
        series = {
            key: (np.asarray(t, dtype=np.int64), np.asarray(self._v[key], dtype=np.float64))
            for key, t in self._t.items()
        }
        return GroundTruth(
            frames=n,
            start_us=self.start_us,
            end_us=self._frame_t[-1] if n else self.start_us,
            frame_t_us=np.asarray(self._frame_t, dtype=np.int64),
            frame_arbitration_id=np.asarray(self._frame_id, dtype=np.uint32),
            frame_dlc=dlc,
            frame_data=data,
            _series=series,
        )

    def save(self, path: str | Path) -> Path:
        """Write the ground truth to ``path`` (``.npz``) and return it."""
        return save(self.to_ground_truth(), path)


def save(gt: GroundTruth, path: str | Path) -> Path:
    path = Path(path)
    arrays: dict[str, npt.NDArray[np.generic]] = {
        "start_us": np.asarray(gt.start_us, dtype=np.int64),
        "end_us": np.asarray(gt.end_us, dtype=np.int64),
        "frames": np.asarray(gt.frames, dtype=np.int64),
        "frame_t_us": gt.frame_t_us,
        "frame_arbitration_id": gt.frame_arbitration_id,
        "frame_dlc": gt.frame_dlc,
        "frame_data": gt.frame_data,
    }
    for (message, signal), (t_us, values) in gt._series.items():
        arrays[f"t_us:{message}:{signal}"] = t_us
        arrays[f"value:{message}:{signal}"] = values
    try:
        with path.open("wb") as fh:
            np.savez_compressed(fh, allow_pickle=False, **arrays)
    except OSError as exc:
        raise GroundTruthError(f"cannot write ground truth: {exc.strerror}", path=str(path)) from exc
    return path


def load(path: str | Path) -> GroundTruth:
    """Read a ground-truth ``.npz`` written by a drive."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise GroundTruthError(f"cannot read ground truth: {exc}", path=str(path)) from exc
    missing = {"start_us", "end_us", "frames", "frame_t_us"} - set(arrays)
    if missing:
        raise GroundTruthError(f"not a ground-truth file, missing {sorted(missing)}", path=str(path))
    series: dict[tuple[str, str], tuple[Int64Array, Float64Array]] = {}
    for name, t_us in arrays.items():
        if not name.startswith("t_us:"):
            continue
        _, message, signal = name.split(":", 2)
        value_key = f"value:{message}:{signal}"
        if value_key not in arrays:
            raise GroundTruthError(f"{name} has no {value_key}", path=str(path))
        series[(message, signal)] = (t_us.astype(np.int64), arrays[value_key].astype(np.float64))
    return GroundTruth(
        frames=int(arrays["frames"]),
        start_us=int(arrays["start_us"]),
        end_us=int(arrays["end_us"]),
        frame_t_us=arrays["frame_t_us"].astype(np.int64),
        frame_arbitration_id=arrays["frame_arbitration_id"].astype(np.uint32),
        frame_dlc=arrays["frame_dlc"].astype(np.uint8),
        frame_data=arrays["frame_data"].astype(np.uint8),
        _series=series,
    )
