"""Columnar batches of raw CAN frames, the unit that travels from bus to decoder."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["FrameBatch"]


@dataclass(frozen=True, slots=True)
class FrameBatch:
    """Frames from one bus in arrival order.

    ``t_ns`` is the CAN source timestamp (UTC epoch nanoseconds, µs resolution
    when it came from python-can's float seconds).
    """

    bus: str
    t_ns: npt.NDArray[np.int64]
    arbitration_id: npt.NDArray[np.uint32]
    is_extended: npt.NDArray[np.bool_]
    data: Sequence[bytes]

    def __len__(self) -> int:
        return len(self.data)
