"""AT channel, modem operations and the AT APDU transport against the simulated modem on a pty."""

from __future__ import annotations

import asyncio
import os
import re
import select
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from sim.euicc import EuiccConfig, ProfileSpec, SimulatedEuicc
from sim.modem import SimModemConfig, SimulatedModem
from tcu.errors import ModemError
from tcu.esim import es10
from tcu.esim.session import ApduStatusError, ApduTransportError, IsdrSession
from tcu.modem import (
    AccessTechnology,
    AtApduTransport,
    AtChannel,
    AtCommandError,
    AtConfig,
    AtTimeoutError,
    CmeError,
    Modem,
    ModemProfile,
    RegistrationStatus,
    modem_profile,
)

HOME_DE = "89490200001234567890"
LOCAL_AT = "89430100001234567891"
HOME_PLMN = {HOME_DE: "26201", LOCAL_AT: "23203"}


def make_card() -> SimulatedEuicc:
    return SimulatedEuicc(
        EuiccConfig(
            profiles=(
                ProfileSpec(HOME_DE, "Telekom DE", "Telekom", enabled=True),
                ProfileSpec(LOCAL_AT, "Magenta AT", "Magenta"),
            )
        )
    )


@pytest.fixture
def sim_modem(request: pytest.FixtureRequest) -> Iterator[SimulatedModem]:
    overrides = getattr(request, "param", {})
    config = SimModemConfig(home_plmn=HOME_PLMN, attach_delay_s=0.05, **overrides)
    with SimulatedModem(make_card(), config) as modem:
        yield modem


@pytest.fixture
async def at(sim_modem: SimulatedModem) -> AsyncIterator[AtChannel]:
    async with AtChannel(AtConfig(port=sim_modem.port, command_timeout_s=2.0)) as channel:
        yield channel


async def test_commands_and_final_results(at: AtChannel, sim_modem: SimulatedModem) -> None:
    assert await at.command("AT") == []
    assert await at.command("AT+CGSN") == ["356938035643809"]  # echo was dropped
    with pytest.raises(AtCommandError, match="AT\\+NOPE: modem answered ERROR"):
        await at.command("AT+NOPE")
    sim_modem.inject_cme("AT+CSQ", 14)
    with pytest.raises(CmeError, match=r"AT\+CSQ: \+CME ERROR 14 \(SIM busy\)") as info:
        await at.command("AT+CSQ")
    assert info.value.code == 14
    sim_modem.inject_no_answer("AT+CSQ")
    with pytest.raises(AtTimeoutError, match=r"no answer within 0\.3 s"):
        await at.command("AT+CSQ", timeout_s=0.3)
    assert await at.command("AT+CSQ") == ["+CSQ: 21,99"]  # channel recovers after a timeout


async def test_late_answer_is_not_taken_for_the_next_command_with_echo(
    at: AtChannel, sim_modem: SimulatedModem
) -> None:
    """The modem echoes: lines before a command's own echo belong to an earlier one."""
    assert await at.command("AT") == []  # the channel notices the echo
    sim_modem.inject_delay("AT+CSQ", 0.5)
    with pytest.raises(AtTimeoutError):
        await at.command("AT+CSQ", timeout_s=0.2)
    # Sent at once: the late "+CSQ: 21,99"/"OK" arrive while AT+CEREG? waits, before its echo.
    assert await at.command("AT+CEREG?") == ["+CEREG: 0,1"]
    assert await at.command("AT+CGSN") == ["356938035643809"]
    assert at.late_lines == 2
    assert at.resyncs == 0


async def test_late_echo_of_a_timed_out_command_is_skipped_with_its_answer(
    at: AtChannel, sim_modem: SimulatedModem
) -> None:
    """A command stuck behind a slow one times out before even its echo came."""
    assert await at.command("AT") == []
    sim_modem.inject_delay("AT+CSQ", 0.6)
    with pytest.raises(AtTimeoutError):
        await at.command("AT+CSQ", timeout_s=0.2)
    with pytest.raises(AtTimeoutError):  # queued behind AT+CSQ: no echo, no answer in time
        await at.command("AT+CEREG?", timeout_s=0.2)
    # Then come: +CSQ/OK, the echo AT+CEREG?, +CEREG: 0,1/OK, and only then AT+CGSN's own echo.
    assert await at.command("AT+CGSN") == ["356938035643809"]
    assert at.late_lines == 5
    assert await at.command("AT+CEREG?") == ["+CEREG: 0,1"]


@pytest.mark.parametrize("sim_modem", [{"echo": False}], indirect=True)
async def test_late_answer_is_not_taken_for_the_next_command_without_echo(
    at: AtChannel, sim_modem: SimulatedModem
) -> None:
    """No echo to sync on: after a timeout the channel waits for the port to go quiet."""
    sim_modem.inject_delay("AT+CSQ", 0.5)
    async with AtChannel(AtConfig(port=sim_modem.port, resync_quiet_s=0.6)) as quiet:
        with pytest.raises(AtTimeoutError):
            await quiet.command("AT+CSQ", timeout_s=0.2)
        # The late answer comes 0.3 s after the timeout, inside the quiet window: drained as stray.
        assert await quiet.command("AT+CEREG?") == ["+CEREG: 0,1"]
        assert await quiet.command("AT+CGSN") == ["356938035643809"]
        assert quiet.resyncs == 1
        assert quiet.late_lines == 0


async def test_missing_answer_line_is_a_modem_error(sim_modem: SimulatedModem, at: AtChannel) -> None:
    modem = Modem(at, modem_profile("generic"))
    sim_modem.inject_cme("AT+CSQ", 3)
    with pytest.raises(CmeError):
        await modem.signal()
    with pytest.raises(ModemError, match="AT\\+CFUN\\?: no \\+CFUN line"):
        await Modem(_Answers(at, []), modem_profile("generic")).radio_on()


class _Answers(AtChannel):
    """An AT channel that answers every command with ``lines`` (a modem that says OK and nothing)."""

    def __init__(self, inner: AtChannel, lines: list[str]) -> None:
        super().__init__(inner.config)
        self._lines = lines

    async def command(self, command: str, *, timeout_s: float | None = None) -> list[str]:
        return list(self._lines)


async def test_verbose_cme_error_and_urc_queue_policy(sim_modem: SimulatedModem) -> None:
    async with AtChannel(AtConfig(port=sim_modem.port, urc_queue_size=2)) as at:
        sim_modem.inject_no_answer("AT+CPIN?")
        pending = asyncio.create_task(at.command("AT+CPIN?", timeout_s=2))
        await asyncio.sleep(0.1)
        sim_modem.emit_raw(b"\r\n+CME ERROR: SIM busy\r\n")
        with pytest.raises(CmeError, match=r"AT\+CPIN\?: \+CME ERROR 14 \(SIM busy\)") as info:
            await pending
        assert (info.value.code, info.value.name) == (14, "SIM busy")
        urcs = at.subscribe(("+CEREG",))
        sim_modem.emit_raw(b"".join(b"\r\n+CEREG: %d\r\n" % i for i in range(5)))
        await asyncio.sleep(0.1)
        assert [await urcs.get(timeout_s=1) for _ in range(2)] == ["+CEREG: 3", "+CEREG: 4"]
        assert urcs.dropped == 3  # oldest dropped first


async def test_garbage_tolerant_lines(at: AtChannel, sim_modem: SimulatedModem) -> None:
    sim_modem.emit_raw(b"\x00\xff\xfe garbage \x07\r\n\r\n\r\nRDY\r\n")
    await asyncio.sleep(0.05)
    assert await at.command("ATI") == ["tcu simulated modem", "Revision: SIM 1.0"]


async def test_urcs_reach_subscribers_while_a_command_is_in_flight(
    at: AtChannel, sim_modem: SimulatedModem
) -> None:
    await Modem(at, modem_profile("generic")).wait_registered(timeout_s=3)
    await at.command("AT+CEREG=2")
    urcs = at.subscribe(("+CEREG",))
    sim_modem.inject_no_answer("AT+CSQ")
    pending = asyncio.create_task(at.command("AT+CSQ", timeout_s=1.0))
    await asyncio.sleep(0.1)
    sim_modem.set_country("AT")
    assert await urcs.get(timeout_s=2) == "+CEREG: 2"
    assert (await urcs.get(timeout_s=2)).startswith("+CEREG: 5,")
    assert not pending.done()
    with pytest.raises(AtTimeoutError):
        await pending
    urcs.close()


async def test_registration_follows_country_and_coverage(at: AtChannel, sim_modem: SimulatedModem) -> None:
    modem = Modem(at, modem_profile("generic"))
    reg = await modem.wait_registered(timeout_s=3)
    assert (reg.status, reg.mcc, reg.mnc, reg.act) == (
        RegistrationStatus.home,
        "262",
        "01",
        AccessTechnology.eutran,
    )
    assert not reg.roaming
    sim_modem.set_country("AT")
    reg = await modem.wait_registered(timeout_s=3)
    assert (reg.status, reg.mcc, reg.roaming) == (RegistrationStatus.roaming, "232", True)
    signal = await modem.signal()
    assert (signal.rssi_dbm, signal.rsrp_dbm, signal.rsrq_db) == (-71, -86, -10.0)
    sim_modem.set_coverage(False)
    await asyncio.sleep(0.2)
    reg = await modem.registration()
    assert reg.status is RegistrationStatus.searching and reg.mcc is None
    with pytest.raises(ModemError, match=r"not registered after 0\.3 s"):
        await modem.wait_registered(timeout_s=0.3, poll_s=0.1)
    sim_modem.set_coverage(True)
    await modem.set_radio(False)
    assert not await modem.radio_on()
    assert (await modem.registration()).status is RegistrationStatus.not_registered
    await modem.set_radio(True)
    assert (await modem.wait_registered(timeout_s=3)).status is RegistrationStatus.roaming


async def test_never_attach(at: AtChannel, sim_modem: SimulatedModem) -> None:
    sim_modem.never_attach.add((HOME_DE, "CH"))
    sim_modem.set_country("CH")
    modem = Modem(at, modem_profile("generic"))
    with pytest.raises(ModemError, match="last state searching"):
        await modem.wait_registered(timeout_s=0.4, poll_s=0.1)


async def test_es10_over_cgla_and_refresh_reattach(at: AtChannel, sim_modem: SimulatedModem) -> None:
    modem = Modem(at, modem_profile("generic"))
    sim_modem.set_country("AT")
    assert (await modem.wait_registered(timeout_s=3)).roaming
    async with IsdrSession(AtApduTransport(at, modem_profile("generic"))) as session:
        assert await session.get_eid() == sim_modem.card.config.eid
        await session.enable_profile(es10.ProfileRef(iccid=LOCAL_AT))
        assert session.proactive_pending
    reg = await modem.wait_registered(timeout_s=3)
    assert (reg.status, reg.mcc, reg.mnc) == (RegistrationStatus.home, "232", "03")
    assert any(c.startswith('AT+CCHO="A0000005591010FFFFFFFF8900000100"') for c in sim_modem.commands)
    assert any(c.startswith("AT+CCHC=") for c in sim_modem.commands)


@pytest.mark.parametrize(
    ("sim_modem", "profile"),
    [
        ({"support_cgla": False}, ModemProfile("t-csim", apdu_mode="csim")),
        ({"ccho_prefixed": False, "session_id_offset": 2**40}, ModemProfile("t-bare", ccho_prefixed=False)),
        ({"session_id_offset": 0x1F0, "session_id_base": 16}, ModemProfile("t-hex", session_id_base=16)),
    ],
    indirect=["sim_modem"],
)
async def test_modem_quirks_are_data(at: AtChannel, sim_modem: SimulatedModem, profile: ModemProfile) -> None:
    async with IsdrSession(AtApduTransport(at, profile)) as session:
        profiles = await session.list_profiles()
    assert [p.iccid for p in profiles] == [HOME_DE, LOCAL_AT]
    if profile.apdu_mode == "csim":
        assert not any(c.startswith("AT+CGLA") for c in sim_modem.commands)


async def test_card_faults_through_the_modem(at: AtChannel, sim_modem: SimulatedModem) -> None:
    transport = AtApduTransport(at, ModemProfile("fast", apdu_timeout_s=0.3))
    async with IsdrSession(transport) as session:
        sim_modem.card.inject_sw(0x6F00)
        with pytest.raises(ApduStatusError, match="SW 6F00"):
            await session.get_eid()
        sim_modem.card.mute = True
        with pytest.raises(ApduTransportError, match=r"no answer within 0\.3 s") as info:
            await session.get_eid()
        assert isinstance(info.value.__cause__, AtTimeoutError)
        sim_modem.card.mute = False
        sim_modem.inject_cme("AT+CGLA", 13)
        with pytest.raises(ApduTransportError, match="SIM failure"):
            await session.get_eid()
        assert await session.get_eid() == sim_modem.card.config.eid


async def test_cfun_cycle_needed_without_refresh() -> None:
    profile = modem_profile("cfun-cycle")
    sim = SimulatedModem(
        make_card(), SimModemConfig(home_plmn=HOME_PLMN, attach_delay_s=0.05, honour_refresh=False)
    )
    with sim:
        async with AtChannel(AtConfig(port=sim.port)) as channel:
            modem = Modem(channel, profile)
            sim.set_country("AT")
            assert (await modem.wait_registered(timeout_s=3)).roaming
            async with IsdrSession(AtApduTransport(channel, profile)) as session:
                await session.enable_profile(es10.ProfileRef(iccid=LOCAL_AT), refresh=profile.refresh_flag)
            await asyncio.sleep(0.2)
            assert (await modem.registration()).roaming  # modem still uses the old profile
            await modem.after_profile_switch()
            reg = await modem.wait_registered(timeout_s=3)
            assert (reg.status, reg.mnc) == (RegistrationStatus.home, "03")
            first = sim.commands.index("AT+CFUN=0")
            assert sim.commands[first : first + 2] == ["AT+CFUN=0", "AT+CFUN=1"]


@pytest.mark.parametrize("sim_modem", [{"nmea_period_s": 0.05}], indirect=True)
async def test_gnss_fixes_from_nmea(at: AtChannel, sim_modem: SimulatedModem) -> None:
    sim_modem.position = (47.2692, -11.4041)
    modem = Modem(at, modem_profile("generic"))
    fixes = modem.gnss_fixes()
    sim_modem.emit_raw(b"\r\n$GPRMC,1,A,4807.038,N,01131.000,E,1,1,230394*00\r\n")  # bad checksum, skipped
    seen = []
    async with asyncio.timeout(3):
        async for fix in fixes:
            seen.append(fix)
            moved = {f.sentence for f in seen if f.lat_deg == pytest.approx(47.2692, abs=1e-4)}
            if moved == {"RMC", "GGA"}:
                break  # fixes queued in the pty before the move carry the old position
    await fixes.aclose()
    last = seen[-1]
    assert last.lon_deg == pytest.approx(-11.4041, abs=1e-4) and last.valid
    assert any(f.sentence == "GGA" and f.satellites == 8 for f in seen)
    assert not any(f.lat_deg == pytest.approx(48.1173, abs=1e-4) for f in seen)  # bad checksum skipped


# 3GPP TS 27.007 test forms (``=?``) and read forms (``?``), as lpac probes them at connect.
TEST_FORMS = {
    "AT+CCHO=?": [],
    "AT+CCHC=?": [],
    "AT+CGLA=?": [],
    "AT+CSIM=?": [],
    "AT+CGSN=?": [],
    "AT+CFUN=?": ["+CFUN: (0,1,4),(0-1)"],
    "AT+CEREG=?": ["+CEREG: (0-2)"],
    "AT+CREG=?": ["+CREG: (0-2)"],
    "AT+CSQ=?": ["+CSQ: (0-31,99),(0-7,99)"],
    "AT+CESQ=?": ["+CESQ: (0-63,99),(0-7,99),(0-96,255),(0-49,255),(0-34,255),(0-97,255)"],
}


async def test_test_forms_answer_like_a_27007_modem(at: AtChannel) -> None:
    for command, lines in TEST_FORMS.items():
        assert await at.command(command) == lines, command
    # read forms where 27.007 defines one
    assert await at.command("AT+CFUN?") == ["+CFUN: 1"]
    assert (await at.command("AT+CEREG?"))[0].startswith("+CEREG: 0,")
    assert (await at.command("AT+CREG?"))[0].startswith("+CREG: 0,")
    assert (await at.command("AT+COPS?"))[0].startswith("+COPS: 0")
    # AT+CCHO, AT+CGLA, AT+CCHC and AT+CSIM have no read form in 27.007: ERROR, not a CME error
    for command in ("AT+CCHO?", "AT+CGLA?", "AT+CCHC?", "AT+CSIM?", "AT+NOPE=?"):
        with pytest.raises(AtCommandError, match="modem answered ERROR"):
            await at.command(command)


async def test_cops_test_form_lists_the_networks_of_the_country(at: AtChannel) -> None:
    modem = Modem(at, modem_profile("generic"))
    await modem.wait_registered(timeout_s=3)
    (line,) = await at.command("AT+COPS=?")
    assert line == '+COPS: (2,"","","26201",7),(1,"","","26202",7),(1,"","","26203",7),,(0-4),(2)'


@pytest.mark.parametrize("sim_modem", [{"support_cgla": False}], indirect=True)
async def test_a_modem_without_cgla_says_so_in_the_test_form(at: AtChannel) -> None:
    for command in ("AT+CCHO=?", "AT+CCHC=?", "AT+CGLA=?"):
        with pytest.raises(AtCommandError, match="modem answered ERROR"):
            await at.command(command)
    assert await at.command("AT+CSIM=?") == []


def test_every_command_gets_a_final_result_line(sim_modem: SimulatedModem) -> None:
    """lpac waits for a bare ``OK`` or ``ERROR``: every probe must end with one of them."""
    fd = os.open(sim_modem.port, os.O_RDWR | os.O_NOCTTY)
    try:
        for command in [*TEST_FORMS, "AT+CCHO?", "AT+COPS=?"]:
            os.write(fd, command.encode() + b"\r")
            seen = b""
            deadline = time.monotonic() + 3
            while not re.search(rb"\r\n(OK|ERROR)\r\n$", seen):
                assert time.monotonic() < deadline, f"{command}: no final result, got {seen!r}"
                ready, _, _ = select.select([fd], [], [], 0.1)
                if ready:
                    seen += os.read(fd, 4096)
            assert b"CME ERROR" not in seen, command
    finally:
        os.close(fd)
