"""Pure parsers for modem answers: registration, operator, signal quality and NMEA.

No I/O here; every function takes one line and returns a typed value or raises
:class:`ModemParseError` naming the line and what was wrong.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import reduce

from tcu.errors import ModemError

__all__ = [
    "AccessTechnology",
    "GnssFix",
    "ModemParseError",
    "NmeaChecksumError",
    "Operator",
    "RegistrationState",
    "RegistrationStatus",
    "SignalQuality",
    "nmea_sentence",
    "parse_cesq",
    "parse_cops",
    "parse_creg",
    "parse_csq",
    "parse_nmea",
]


class ModemParseError(ModemError):
    """A modem line could not be parsed; names the line and the problem."""


class NmeaChecksumError(ModemParseError):
    """An NMEA sentence failed its checksum."""


class RegistrationStatus(enum.IntEnum):
    """``<stat>`` of +CREG/+CGREG/+CEREG (3GPP TS 27.007 §7.2)."""

    not_registered = 0
    home = 1
    searching = 2
    denied = 3
    unknown = 4
    roaming = 5
    home_sms_only = 6
    roaming_sms_only = 7
    emergency_only = 8

    @property
    def registered(self) -> bool:
        return self.value in (1, 5, 6, 7)

    @property
    def is_roaming(self) -> bool:
        return self.value in (5, 7)


class AccessTechnology(enum.IntEnum):
    """``<AcT>`` of +COPS/+CEREG."""

    gsm = 0
    gsm_compact = 1
    utran = 2
    gsm_egprs = 3
    utran_hsdpa = 4
    utran_hsupa = 5
    utran_hspa = 6
    eutran = 7
    ec_gsm_iot = 8
    eutran_nb_s1 = 9
    eutra_5gcn = 10
    nr_5gcn = 11
    ng_ran = 12
    eutra_nr = 13


@dataclass(frozen=True, slots=True)
class RegistrationState:
    status: RegistrationStatus
    tac: str | None = None
    cell_id: str | None = None
    act: AccessTechnology | None = None


@dataclass(frozen=True, slots=True)
class Operator:
    mode: int
    mcc: str | None = None
    mnc: str | None = None
    name: str | None = None
    act: AccessTechnology | None = None

    @property
    def plmn(self) -> str | None:
        return None if self.mcc is None or self.mnc is None else self.mcc + self.mnc


@dataclass(frozen=True, slots=True)
class SignalQuality:
    rssi_dbm: int | None = None
    ber: int | None = None
    rsrq_db: float | None = None
    rsrp_dbm: int | None = None


@dataclass(frozen=True, slots=True)
class GnssFix:
    """One NMEA fix. ``valid`` is False for RMC status V or GGA quality 0."""

    sentence: str
    valid: bool
    utc_time: str
    lat_deg: float | None = None
    lon_deg: float | None = None
    speed_mps: float | None = None
    course_deg: float | None = None
    altitude_m: float | None = None
    satellites: int | None = None
    date: str | None = None


def _fields(line: str, prefix: str) -> list[str]:
    if not line.upper().startswith(prefix + ":"):
        raise ModemParseError(f"{line!r}: expected {prefix}:")
    return [f.strip().strip('"') for f in line.split(":", 1)[1].split(",")]


def _int(value: str, line: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ModemParseError(f"{line!r}: {what} {value!r} is not a number") from None


def parse_creg(line: str, *, solicited: bool) -> RegistrationState:
    """Parse a +CREG/+CGREG/+CEREG/+C5GREG line.

    ``solicited`` is True for the answer to ``AT+CEREG?`` (first field ``<n>``), False
    for a URC (first field ``<stat>``).
    """
    prefix = line.split(":", 1)[0].strip().upper()
    if prefix not in ("+CREG", "+CGREG", "+CEREG", "+C5GREG"):
        raise ModemParseError(f"{line!r}: not a registration line")
    fields = _fields(line, prefix)
    if solicited:
        fields = fields[1:]
    if not fields or not fields[0]:
        raise ModemParseError(f"{line!r}: <stat> missing")
    stat = _int(fields[0], line, "<stat>")
    try:
        status = RegistrationStatus(stat)
    except ValueError:
        raise ModemParseError(f"{line!r}: unknown <stat> {stat}") from None
    tac = fields[1] or None if len(fields) > 1 else None
    cell = fields[2] or None if len(fields) > 2 else None
    act = None
    if len(fields) > 3 and fields[3]:
        try:
            act = AccessTechnology(_int(fields[3], line, "<AcT>"))
        except ValueError:
            act = None
    return RegistrationState(status, tac, cell, act)


def parse_cops(line: str) -> Operator:
    """Parse ``+COPS: <mode>[,<format>,<oper>[,<AcT>]]``; numeric format gives MCC/MNC."""
    fields = _fields(line, "+COPS")
    mode = _int(fields[0], line, "<mode>")
    if len(fields) < 3:
        return Operator(mode)
    fmt = _int(fields[1], line, "<format>")
    oper = fields[2]
    act = None
    if len(fields) > 3 and fields[3]:
        try:
            act = AccessTechnology(_int(fields[3], line, "<AcT>"))
        except ValueError:
            act = None
    if fmt == 2:
        if not oper.isdigit() or len(oper) not in (5, 6):
            raise ModemParseError(f"{line!r}: numeric operator {oper!r} is not MCC+MNC")
        return Operator(mode, oper[:3], oper[3:], None, act)
    return Operator(mode, None, None, oper, act)


def parse_csq(line: str) -> SignalQuality:
    """``+CSQ: <rssi>,<ber>``; rssi 0..31 → -113..-51 dBm, 99 unknown."""
    fields = _fields(line, "+CSQ")
    if len(fields) != 2:
        raise ModemParseError(f"{line!r}: expected 2 fields")
    rssi = _int(fields[0], line, "<rssi>")
    ber = _int(fields[1], line, "<ber>")
    return SignalQuality(
        rssi_dbm=None if rssi == 99 or rssi > 31 else -113 + 2 * rssi,
        ber=None if ber == 99 else ber,
    )


def parse_cesq(line: str) -> SignalQuality:
    """``+CESQ: rxlev,ber,rscp,ecno,rsrq,rsrp``; LTE rsrq 0..34 → -20..-3 dB, rsrp 0..97 → -141..-44 dBm."""
    fields = _fields(line, "+CESQ")
    if len(fields) != 6:
        raise ModemParseError(f"{line!r}: expected 6 fields")
    rsrq = _int(fields[4], line, "<rsrq>")
    rsrp = _int(fields[5], line, "<rsrp>")
    return SignalQuality(
        rsrq_db=None if rsrq == 255 else -20.0 + 0.5 * rsrq,
        rsrp_dbm=None if rsrp == 255 else -141 + rsrp,
    )


def _nmea_checksum(body: str) -> int:
    return reduce(lambda acc, ch: acc ^ ord(ch), body, 0)


def _coord(value: str, hemi: str, degree_digits: int, line: str) -> float | None:
    if not value:
        return None
    try:
        degrees = int(value[:degree_digits])
        minutes = float(value[degree_digits:])
    except ValueError:
        raise ModemParseError(f"{line!r}: bad coordinate {value!r}") from None
    result = degrees + minutes / 60.0
    if hemi in ("S", "W"):
        return -result
    if hemi not in ("N", "E"):
        raise ModemParseError(f"{line!r}: bad hemisphere {hemi!r}")
    return result


def _float(value: str, line: str) -> float | None:
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        raise ModemParseError(f"{line!r}: {value!r} is not a number") from None


def parse_nmea(line: str) -> GnssFix | None:
    """Parse ``$xxRMC``/``$xxGGA`` with checksum check; other sentences give None."""
    line = line.strip()
    if not line.startswith("$") or "*" not in line:
        raise ModemParseError(f"{line!r}: not an NMEA sentence with checksum")
    body, _, checksum = line[1:].rpartition("*")
    try:
        expected = int(checksum[:2], 16)
    except ValueError:
        raise ModemParseError(f"{line!r}: checksum {checksum!r} is not hex") from None
    if _nmea_checksum(body) != expected:
        raise NmeaChecksumError(f"{line!r}: checksum {expected:02X}, computed {_nmea_checksum(body):02X}")
    fields = body.split(",")
    kind = fields[0][2:]
    if kind == "RMC":
        if len(fields) < 10:
            raise ModemParseError(f"{line!r}: RMC needs 10 fields, got {len(fields)}")
        speed_kn = _float(fields[7], line)
        return GnssFix(
            sentence="RMC",
            valid=fields[2] == "A",
            utc_time=fields[1],
            lat_deg=_coord(fields[3], fields[4], 2, line),
            lon_deg=_coord(fields[5], fields[6], 3, line),
            speed_mps=None if speed_kn is None else speed_kn * 1852.0 / 3600.0,
            course_deg=_float(fields[8], line),
            date=fields[9] or None,
        )
    if kind == "GGA":
        if len(fields) < 10:
            raise ModemParseError(f"{line!r}: GGA needs 10 fields, got {len(fields)}")
        quality = _int(fields[6] or "0", line, "fix quality")
        return GnssFix(
            sentence="GGA",
            valid=quality > 0,
            utc_time=fields[1],
            lat_deg=_coord(fields[2], fields[3], 2, line),
            lon_deg=_coord(fields[4], fields[5], 3, line),
            satellites=_int(fields[7], line, "satellites") if fields[7] else None,
            altitude_m=_float(fields[9], line),
        )
    return None


def nmea_sentence(body: str) -> str:
    """``$body*CS`` with the checksum computed (for simulators and tests)."""
    return f"${body}*{_nmea_checksum(body):02X}"
