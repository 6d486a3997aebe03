"""CAN adapter: open python-can buses from config and deliver frames in batches."""

from tcu.can.bus import BusReader, open_bus
from tcu.can.frames import FrameBatch

__all__ = ["BusReader", "FrameBatch", "open_bus"]
