"""Errors of the V2X adapter, under :class:`tcu.errors.TcuError`.

``reason`` is a short, stable word that receivers use as a counter key (``malformed``,
``oversize``, ``position``, ``time``, ``unknown_type``, ``version``, ``topic``, ...).
"""

from __future__ import annotations

from tcu.errors import TcuError

__all__ = ["V2xDecodeError", "V2xEncodeError", "V2xError", "V2xTopicError"]


class V2xError(TcuError):
    """Something in the V2X (V2N) adapter failed; ``reason`` names the kind."""

    def __init__(self, message: str, *, reason: str = "error") -> None:
        super().__init__(message)
        self.reason = reason


class V2xDecodeError(V2xError):
    """A received payload is not a usable CAM or DENM (malformed UPER, oversize, impossible values)."""


class V2xEncodeError(V2xError):
    """A message could not be encoded (a value outside what the ASN.1 type can carry)."""


class V2xTopicError(V2xError):
    """An MQTT topic does not have the V2N tile layout."""

    def __init__(self, message: str, *, reason: str = "topic") -> None:
        super().__init__(message, reason=reason)
