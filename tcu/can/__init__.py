"""CAN adapter: open python-can buses from config and deliver :class:`~tcu.frames.FrameBatch` es."""

from tcu.can.bus import BusReader, open_bus

__all__ = ["BusReader", "open_bus"]
