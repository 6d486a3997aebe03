"""Pure parsers: registration, operator, signal, NMEA with checksum."""

from __future__ import annotations

import pytest

from tcu.modem.parse import (
    AccessTechnology,
    ModemParseError,
    NmeaChecksumError,
    RegistrationStatus,
    nmea_sentence,
    parse_cesq,
    parse_cops,
    parse_creg,
    parse_csq,
    parse_nmea,
)


def test_creg_solicited_and_urc() -> None:
    state = parse_creg('+CEREG: 2,5,"1A2B","01A2D101",7', solicited=True)
    assert state.status is RegistrationStatus.roaming and state.status.is_roaming
    assert (state.tac, state.cell_id, state.act) == ("1A2B", "01A2D101", AccessTechnology.eutran)
    urc = parse_creg("+CEREG: 1", solicited=False)
    assert urc.status is RegistrationStatus.home and urc.status.registered and not urc.status.is_roaming
    assert parse_creg("+CREG: 0,2", solicited=True).status is RegistrationStatus.searching
    with pytest.raises(ModemParseError, match="unknown <stat> 42"):
        parse_creg("+CEREG: 0,42", solicited=True)
    with pytest.raises(ModemParseError, match="not a registration line"):
        parse_creg("+CSQ: 1,2", solicited=True)


def test_cops() -> None:
    op = parse_cops('+COPS: 0,2,"26201",7')
    assert (op.mcc, op.mnc, op.plmn, op.act) == ("262", "01", "26201", AccessTechnology.eutran)
    assert parse_cops('+COPS: 0,2,"310410",7').mnc == "410"
    assert parse_cops("+COPS: 0").mcc is None
    assert parse_cops('+COPS: 0,0,"Telekom.de",7').name == "Telekom.de"
    with pytest.raises(ModemParseError, match="not MCC"):
        parse_cops('+COPS: 0,2,"2620",7')


def test_signal() -> None:
    assert parse_csq("+CSQ: 21,99").rssi_dbm == -71
    assert parse_csq("+CSQ: 99,99").rssi_dbm is None
    cesq = parse_cesq("+CESQ: 99,99,255,255,20,55")
    assert (cesq.rsrq_db, cesq.rsrp_dbm) == (-10.0, -86)
    with pytest.raises(ModemParseError, match="expected 6 fields"):
        parse_cesq("+CESQ: 1,2")


def test_nmea_real_sentences() -> None:
    rmc = parse_nmea("$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A")
    assert rmc is not None and rmc.valid
    assert rmc.lat_deg == pytest.approx(48.1173) and rmc.lon_deg == pytest.approx(11.516667, abs=1e-6)
    assert rmc.speed_mps == pytest.approx(22.4 * 0.514444, rel=1e-4)
    gga = parse_nmea("$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47")
    assert gga is not None and gga.valid and gga.satellites == 8 and gga.altitude_m == 545.4
    assert parse_nmea(nmea_sentence("GPGSV,1,1,00")) is None
    south = parse_nmea(nmea_sentence("GNRMC,000000,V,3352.000,S,15112.000,W,,,010125,,,N"))
    assert south is not None and not south.valid and south.lat_deg == pytest.approx(-33.866667)
    assert south.lon_deg == pytest.approx(-151.2)


def test_nmea_checksum_and_garbage() -> None:
    with pytest.raises(NmeaChecksumError, match="checksum 6B, computed 6A"):
        parse_nmea("$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6B")
    with pytest.raises(ModemParseError, match="not an NMEA sentence"):
        parse_nmea("GPRMC,1,2")
    with pytest.raises(ModemParseError, match="bad hemisphere"):
        parse_nmea(nmea_sentence("GPRMC,1,A,4807.038,Q,01131.000,E,1,1,230394"))
