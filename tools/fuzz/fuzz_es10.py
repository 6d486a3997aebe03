"""Fuzz target ``es10``: the DER codec (:mod:`tcu.esim.der`) and every ES10 decoder
(:mod:`tcu.esim.es10`).

Each input is fed to ``decode_one``/``decode_seq``, to :func:`~tcu.esim.es10.decode_request`
and to the ``decode`` class method of every ES10 message class, and the ICCID decoder
gets the first 10 bytes. Contract: only :class:`tcu.errors.EsimError` escapes; a
single TLV re-encodes to the same bytes (DER has one encoding per value); a decoded ES10
message re-encodes to bytes that decode to the same value; the properties of a decoded
``EuiccInfo2`` work or raise ``EsimError``.
"""

from __future__ import annotations

import contextlib
import json
from functools import cache
from typing import Any

from tcu.errors import EsimError
from tcu.esim import es10
from tcu.esim.der import decode_one, decode_seq
from tools.shared_data import shared_path

__all__ = ["DECODERS", "NAME", "one_input", "seeds"]

NAME = "es10"

#: Every ES10 class with a ``decode(der)`` class method.
DECODERS: tuple[Any, ...] = tuple(
    cls
    for name in es10.__all__
    if isinstance(cls := getattr(es10, name), type) and callable(getattr(cls, "decode", None))
)


@cache
def seeds() -> list[bytes]:
    """The DER of every vector in ``es10-vectors.json`` and of lpac's sample answers (SW cut)."""
    doc = json.loads(shared_path("esim/vectors/es10-vectors.json").read_text(encoding="utf-8"))
    out = [bytes.fromhex(vector["der"]) for vector in doc["vectors"]]
    for answer in doc["lpac_stdio_samples"].values():
        raw = bytes.fromhex(answer)
        out.append(raw[:-2] if raw.endswith(b"\x90\x00") else raw)
    return out


def _check_roundtrip(value: Any, data: bytes) -> None:
    """Re-encoding a decoded value gives bytes that decode to the same value.

    (Not necessarily ``data`` itself: decoders ignore unknown named bits, e.g. of
    eUICCMemoryReset's resetOptions, which ASN.1 lets a later version add.)
    """
    encoded = value.encode()
    again = type(value).decode(encoded)
    if again != value:
        raise AssertionError(
            f"{type(value).__name__}: {data.hex()} decodes to {value!r}, re-encoded to {again!r}"
        )


def one_input(data: bytes) -> None:
    try:
        tlv = decode_one(data)
        if tlv.encode() != data:
            raise AssertionError(f"DER TLV {data.hex()} encodes back to {tlv.encode().hex()}")
    except EsimError:
        pass
    with contextlib.suppress(EsimError):
        decode_seq(data)
    with contextlib.suppress(EsimError):
        _check_roundtrip(es10.decode_request(data), data)
    for cls in DECODERS:
        try:
            value = cls.decode(data)
        except EsimError:
            continue
        _check_roundtrip(value, data)
        if isinstance(value, es10.EuiccInfo2):
            for prop in ("profile_version", "svn", "firmware_version", "pp_version", "ext_card_resource"):
                getattr(value, prop)
            with contextlib.suppress(EsimError):
                _ = value.sas_accreditation_number
    with contextlib.suppress(EsimError):
        es10.iccid_from_bcd(data[:10])
