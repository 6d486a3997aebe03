"""CAN adapter: open buses from config, read them into per-bus buffers of frame batches."""

from tcu.can.bus import BusReader, open_bus
from tcu.can.collector import FrameCollector

__all__ = ["BusReader", "FrameCollector", "open_bus"]
