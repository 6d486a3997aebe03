"""tcu: a connected-vehicle telematics gateway.

CAN buses are read with python-can, decoded from DBC files to VSS-style signal
names, sampled by collection campaigns, batched as columnar protobuf and
streamed over gRPC to the cloud ingest. See ``docs/architecture.md``.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
