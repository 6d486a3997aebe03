"""The one error tree of tcu.

Every error the project raises derives from :class:`TcuError`. Errors from
third-party libraries are translated where they enter (``raise ... from exc``),
so callers catch ours and find the original in ``__cause__``::

    TcuError
    ├── ConfigError            a configuration file, key or value is wrong (names the key)
    ├── InputError             user-supplied data is wrong (names the file, line and problem)
    │   ├── DbcError           a DBC file cannot be loaded or used
    │   ├── MappingError       a DBC→VSS mapping file is wrong
    │   └── LogFormatError     a recorded CAN log has a corrupt line or record
    ├── BusError               a CAN bus could not be opened or broke while in use
    ├── SpoolError             the on-disk spool cannot store or read batches
    ├── UplinkError            the telemetry uplink failed (the cause is in ``__cause__``)
    ├── IngestError            the ingest rejected or could not store a batch
    │   ├── BatchRejected      a batch's own content is malformed (kept in quarantine)
    │   └── StreamRejected     a batch does not belong on its Upload stream (the stream ends)
    ├── ModemError             the modem's AT channel failed or answered with an error
    ├── EsimError              an eUICC operation failed (result code named)
    ├── SecurityError          a certificate, signature or identity check failed
    └── ClosedResourceError    the object was closed by its owner and used afterwards
"""

from __future__ import annotations

__all__ = [
    "BatchRejected",
    "BusError",
    "ClosedResourceError",
    "ConfigError",
    "DbcError",
    "EsimError",
    "IngestError",
    "InputError",
    "LogFormatError",
    "MappingError",
    "ModemError",
    "SecurityError",
    "SpoolError",
    "StreamRejected",
    "TcuError",
    "UplinkError",
]


class TcuError(Exception):
    """Base of every error raised by tcu."""


class ConfigError(TcuError):
    """A configuration file, key or value is wrong. The message names the key."""

    def __init__(self, message: str, *, key: str | None = None, path: str | None = None) -> None:
        where = ""
        if path is not None:
            where += f"{path}: "
        if key is not None:
            where += f"{key}: "
        super().__init__(f"{where}{message}")
        self.key = key
        self.path = path


class InputError(TcuError):
    """User-supplied data is wrong; the message names the file, line and problem."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(f"{where}{message}")
        self.path = path
        self.line = line
        self.problem = message


class DbcError(InputError):
    """A DBC file cannot be loaded or used."""


class MappingError(InputError):
    """A DBC→VSS mapping file is wrong."""


class LogFormatError(InputError):
    """A recorded CAN log has a corrupt line or record."""


class BusError(TcuError):
    """A CAN bus could not be opened or broke while in use."""


class SpoolError(TcuError):
    """The on-disk spool cannot store or read batches."""


class UplinkError(TcuError):
    """The telemetry uplink failed; the cause is in ``__cause__``."""


class IngestError(TcuError):
    """The ingest rejected or could not store a batch."""


class BatchRejected(IngestError):
    """A telemetry batch is malformed; the message says what is wrong."""


class StreamRejected(IngestError):
    """A batch does not belong on its Upload stream (vehicle, sequence numbering).

    Unlike :class:`BatchRejected` (a problem of one batch's own content, which the
    ingest keeps in quarantine), this ends the stream. The two are siblings, so an
    ``except BatchRejected`` never swallows a stream problem.
    """


class ModemError(TcuError):
    """The modem's AT channel failed or answered with an error."""


class EsimError(TcuError):
    """An eUICC operation failed; the message names the step and result code."""


class SecurityError(TcuError):
    """A certificate, signature or identity check failed."""


class ClosedResourceError(TcuError):
    """The object was closed by its owner and then used."""
