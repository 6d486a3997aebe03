"""Protobuf wire-format helpers the uplink and the ingest share (a leaf: it imports nothing of tcu).

The uplink sends a spooled ``TelemetryBatch`` without parsing it: :func:`wrap_batch`
appends the batch's identity stamp (fields 2 ``boot_epoch`` and 3 ``seq``; protobuf
merges concatenated encodings and the last scalar wins) and wraps the bytes as field 2
(``batch``) of an ``UploadRequest``. The ingest reads the envelope's tags and lengths
with :func:`batch_fields` (it keeps the batch's bytes as received, for quarantine),
and finds the stamp of bytes that do not decode with :func:`stamped_identity`.
The generated code in ``tcu/api/v1`` stays generated-only.
"""

from __future__ import annotations

__all__ = ["batch_fields", "read_varint", "stamped_identity", "varint", "wrap_batch"]

_BATCH_FIELD = 2
"""``UploadRequest.batch``: field 2, length-delimited (tag byte 0x12)."""


def varint(n: int) -> bytes:
    """The base-128 varint encoding of ``n`` (>= 0)."""
    if n < 0:
        raise ValueError(f"a varint encodes n >= 0, not {n}")
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """``(value, next position)`` of the varint at ``data[pos]``; ValueError when truncated or too long."""
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def wrap_batch(payload: bytes, *, boot_epoch: int, seq: int) -> bytes:
    """``UploadRequest(batch=<payload with boot_epoch and seq set>)``, without parsing the payload.

    Protobuf merges a message's concatenated encodings (the last scalar wins),
    so appending fields 2 (boot_epoch) and 3 (seq) stamps the batch's identity.
    """
    inner = payload + b"\x10" + varint(boot_epoch) + b"\x18" + varint(seq)
    return b"\x12" + varint(len(inner)) + inner


def batch_fields(data: bytes) -> tuple[bytes, bool] | None:
    """Field 2 (``batch``) of an encoded ``UploadRequest``, and whether it is the only field.

    Reads only the envelope's tags and lengths (the batch's content is not parsed);
    the bytes of all occurrences are joined in order. None when the envelope itself is broken.
    """
    parts: list[bytes] = []
    only = True
    pos = 0
    try:
        while pos < len(data):
            key, pos = read_varint(data, pos)
            number, wire = key >> 3, key & 7
            if wire == 0:
                _, pos = read_varint(data, pos)
            elif wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            elif wire == 2:
                length, pos = read_varint(data, pos)
                if number == _BATCH_FIELD:
                    parts.append(data[pos : pos + length])
                pos += length
            else:
                return None
            if number != _BATCH_FIELD or wire != 2:
                only = False
            if pos > len(data):
                return None
    except ValueError:
        return None
    return b"".join(parts), only and bool(parts)


def stamped_identity(batch_bytes: bytes) -> tuple[int, int] | None:
    """``(boot_epoch, seq)`` from the stamp :func:`wrap_batch` appends to a batch's bytes, or None.

    Every wrapped batch ends with fields 2 and 3 (``0x10 <varint boot_epoch> 0x18
    <varint seq>``); this finds them at the end of bytes whose beginning does not decode.
    """
    end = len(batch_bytes)
    for start in range(max(0, end - 22), end - 3):
        if batch_bytes[start] != 0x10:
            continue
        try:
            epoch, pos = read_varint(batch_bytes, start + 1)
            if pos >= end or batch_bytes[pos] != 0x18:
                continue
            seq, pos = read_varint(batch_bytes, pos + 1)
        except ValueError:
            continue
        if pos == end and seq >= 1:
            return epoch, seq
    return None
