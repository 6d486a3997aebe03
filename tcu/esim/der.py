"""A minimal, strict DER TLV codec (the subset ES10 needs).

Tags are kept as their raw encoded integer (``0x5A``, ``0xBF3E``, ``0x9F70``), which is
how SGP.22 tables name them. Lengths are definite; the long form is accepted only when
it is minimal. Decoding rejects indefinite lengths, truncated values, non-minimal
lengths and trailing garbage with :class:`DerError`, which names the offset and problem.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from tcu.errors import EsimError

__all__ = [
    "DerError",
    "Tlv",
    "decode_one",
    "decode_seq",
    "encode_int",
    "encode_length",
    "encode_tlv",
    "int_value",
    "is_constructed",
    "tag_bytes",
]

_MAX_LENGTH_OCTETS = 4


class DerError(EsimError):
    """A DER byte string is malformed (the message names the offset and the problem)."""


@dataclass(frozen=True, slots=True)
class Tlv:
    """One decoded TLV: ``tag`` as its encoded integer, ``value`` the raw content octets."""

    tag: int
    value: bytes

    def encode(self) -> bytes:
        return encode_tlv(self.tag, self.value)

    def children(self) -> list[Tlv]:
        """Decode the content of a constructed TLV as a sequence of TLVs."""
        if not is_constructed(self.tag):
            raise DerError(f"tag {self.tag:X} is primitive, it has no children")
        return decode_seq(self.value, context=f"tag {self.tag:X}")


def tag_bytes(tag: int) -> bytes:
    """The encoded octets of a tag given as its integer (``0xBF3E`` → ``b'\\xbf>'``)."""
    if tag < 0:
        raise DerError(f"negative tag {tag}")
    length = max(1, (tag.bit_length() + 7) // 8)
    return tag.to_bytes(length, "big")


def is_constructed(tag: int) -> bool:
    return bool(tag_bytes(tag)[0] & 0x20)


def encode_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    body = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def encode_tlv(tag: int, value: bytes) -> bytes:
    return tag_bytes(tag) + encode_length(len(value)) + value


def encode_int(value: int) -> bytes:
    """Content octets of a DER INTEGER (two's complement, minimal)."""
    length = max(1, (value + (value < 0)).bit_length() // 8 + 1)
    return value.to_bytes(length, "big", signed=True)


def int_value(content: bytes, *, context: str = "INTEGER") -> int:
    """Decode INTEGER content octets strictly (non-empty, minimal)."""
    if not content:
        raise DerError(f"{context}: empty INTEGER")
    if len(content) > 1 and (
        (content[0] == 0x00 and not content[1] & 0x80) or (content[0] == 0xFF and content[1] & 0x80)
    ):
        raise DerError(f"{context}: non-minimal INTEGER {content.hex().upper()}")
    return int.from_bytes(content, "big", signed=True)


def _read_tag(data: bytes, pos: int, context: str) -> tuple[int, int]:
    if pos >= len(data):
        raise DerError(f"{context}: truncated at offset {pos}: tag expected")
    first = data[pos]
    pos += 1
    tag = first
    if first & 0x1F == 0x1F:
        count = 0
        while True:
            if pos >= len(data):
                raise DerError(f"{context}: truncated multi-byte tag at offset {pos}")
            octet = data[pos]
            if count == 0 and octet == 0x80:
                raise DerError(f"{context}: non-minimal tag number at offset {pos}")
            tag = (tag << 8) | octet
            pos += 1
            count += 1
            if not octet & 0x80:
                break
            if count >= 3:
                raise DerError(f"{context}: tag longer than 4 octets at offset {pos}")
    return tag, pos


def _read_length(data: bytes, pos: int, context: str) -> tuple[int, int]:
    if pos >= len(data):
        raise DerError(f"{context}: truncated at offset {pos}: length expected")
    first = data[pos]
    pos += 1
    if first < 0x80:
        return first, pos
    count = first & 0x7F
    if count == 0:
        raise DerError(f"{context}: indefinite length at offset {pos - 1} is not DER")
    if count > _MAX_LENGTH_OCTETS:
        raise DerError(f"{context}: length of {count} octets at offset {pos - 1} is too long")
    if pos + count > len(data):
        raise DerError(f"{context}: truncated length at offset {pos}")
    length = int.from_bytes(data[pos : pos + count], "big")
    if length < 0x80 or data[pos] == 0:
        raise DerError(f"{context}: non-minimal length encoding at offset {pos - 1}")
    return length, pos + count


def _iter(data: bytes, context: str) -> Iterator[Tlv]:
    pos = 0
    while pos < len(data):
        tag, pos = _read_tag(data, pos, context)
        length, pos = _read_length(data, pos, context)
        end = pos + length
        if end > len(data):
            raise DerError(
                f"{context}: tag {tag:X} announces {length} bytes but only {len(data) - pos} remain"
            )
        yield Tlv(tag, bytes(data[pos:end]))
        pos = end


def decode_seq(data: bytes, *, context: str = "DER") -> list[Tlv]:
    """Decode a concatenation of TLVs (the content of a constructed TLV)."""
    return list(_iter(data, context))


def decode_one(data: bytes, *, context: str = "DER") -> Tlv:
    """Decode exactly one TLV; trailing bytes are an error."""
    if not data:
        raise DerError(f"{context}: empty input")
    first = next(_iter(data, context))
    extra = len(data) - len(first.encode())
    if extra:
        raise DerError(f"{context}: {extra} bytes of trailing garbage after tag {first.tag:X}")
    return first
