"""A simulated cellular modem answering AT commands on a pseudo-terminal.

``SimulatedModem(card, config)`` opens a pty pair (``os.openpty()``); the client opens
:attr:`SimulatedModem.port` (the slave path) exactly like ``/dev/ttyUSB2``. A background
thread reads command lines from the master side and answers them.

Commands: ``AT``, ``ATE0/ATE1``, ``ATI``, ``AT+CGSN``, ``AT+CFUN?/=0|1|4``,
``AT+CEREG?/=n``, ``AT+CREG?``, ``AT+COPS?/=3,2``, ``AT+CSQ``, ``AT+CESQ``,
``AT+CCHO``/``AT+CGLA``/``AT+CCHC`` and ``AT+CSIM`` routed to a
:class:`sim.euicc.SimulatedEuicc`, and the 3GPP TS 27.007 test forms (``AT+CMD=?``) of
these as a real modem answers them (``OK``, or ``+CMD: (ranges)`` then ``OK``; ``AT+COPS=?``
lists the networks of the country), which LPAs such as lpac probe before they start.
Unknown commands, and read forms 27.007 does not define (``AT+CCHO?``), answer ``ERROR``.

Registration follows a settable *country under the vehicle*: the modem serves on the
enabled profile's home PLMN when that network exists in the country (``+CEREG`` stat 1),
otherwise on the country's first PLMN as a roamer (stat 5). After every change (country,
coverage, profile, radio) it goes through *searching* (stat 2) for ``attach_delay_s``.
Coverage holes and tunnels (:meth:`set_coverage`) leave it unregistered, an attach that
never completes can be set per ``(iccid, country)`` (:attr:`never_attach`), and
``+CEREG`` URCs are emitted on each change when enabled with ``AT+CEREG=1|2``.

The modem adopts a newly enabled profile when the card signals REFRESH (``91xx``) and
``honour_refresh`` is set, or on ``AT+CFUN=1`` after ``AT+CFUN=0|4``.

Faults: :meth:`inject_cme` (``+CME ERROR: n`` for the next N commands with a prefix),
:meth:`inject_no_answer` (the next N commands with a prefix get no answer: the client
times out); card faults (``6F00``, catBusy, mute) are set on the card itself.
Optional NMEA (``$GPRMC``/``$GPGGA``) every ``nmea_period_s`` from :attr:`position`.

This module imports only the standard library and ``tcu``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import select
import threading
import time
import tty
from collections.abc import Mapping
from dataclasses import dataclass, field

from sim.euicc import SimulatedEuicc
from tcu.modem.parse import nmea_sentence

__all__ = ["DEFAULT_COUNTRIES", "SimModemConfig", "SimulatedModem"]

log = logging.getLogger(__name__)

#: PLMNs (MCC+MNC) present in each country (real MCCs, a few real MNCs).
DEFAULT_COUNTRIES: dict[str, tuple[str, ...]] = {
    "DE": ("26201", "26202", "26203"),
    "AT": ("23201", "23203"),
    "CH": ("22801", "22802"),
    "FR": ("20801", "20810"),
    "BR": ("72405", "72410"),
}


#: 3GPP TS 27.007 test forms (``AT+CMD=?``) this modem answers: the ranges it supports
#: (an empty string: the command exists and has no parameters to list, just ``OK``).
_TEST_FORMS: dict[str, str] = {
    "+CFUN": "(0,1,4),(0-1)",
    "+CEREG": "(0-2)",
    "+CREG": "(0-2)",
    "+CSQ": "(0-31,99),(0-7,99)",
    "+CESQ": "(0-63,99),(0-7,99),(0-96,255),(0-49,255),(0-34,255),(0-97,255)",
    "+CGSN": "",
    "+CSIM": "",
}


@dataclass(frozen=True, slots=True)
class SimModemConfig:
    home_plmn: Mapping[str, str]
    """ICCID → home PLMN of that profile."""
    countries: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_COUNTRIES))
    country: str = "DE"
    attach_delay_s: float = 0.2
    ccho_prefixed: bool = True
    session_id_offset: int = 0
    session_id_base: int = 10
    support_cgla: bool = True
    honour_refresh: bool = True
    echo: bool = True
    nmea_period_s: float | None = None
    imei: str = "356938035643809"


class SimulatedModem:
    """A modem on a pty; use as a context manager or call :meth:`start`/:meth:`stop`."""

    def __init__(self, card: SimulatedEuicc, config: SimModemConfig) -> None:
        self.card = card
        self.config = config
        self.country = config.country
        self.coverage = True
        self.cfun = 1
        self.position: tuple[float, float] = (48.137, 11.575)
        self.never_attach: set[tuple[str, str]] = set()
        self.commands: list[str] = []
        self._echo = config.echo
        self._cereg_n = 0
        self._stat = 0
        self._serving: str | None = None
        self._active_iccid = card.enabled.iccid if card.enabled else None
        self._attach_at: float | None = None
        self._next_nmea = 0.0
        self._sessions: dict[int, int] = {}
        self._cme: list[tuple[str, int]] = []
        self._mute: list[str] = []
        self._delay: list[tuple[str, float]] = []
        self._late: list[tuple[float, str]] = []  # (due monotonic time, line) in order
        self._lock = threading.RLock()
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        tty.setraw(self._master)
        os.set_blocking(self._master, False)
        self.port = os.ttyname(self._slave)
        self._wake_r, self._wake_w = os.pipe()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sim-modem[{self.port}]", daemon=True)
        self._buffer = bytearray()
        self._begin_attach()

    # --- life cycle -----------------------------------------------------------------------

    def start(self) -> SimulatedModem:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and close the pty; idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        os.write(self._wake_w, b"x")
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        for fd in (self._master, self._slave, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> SimulatedModem:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- control from tests and scenarios ---------------------------------------------------

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def set_country(self, country: str) -> None:
        with self._lock:
            if country not in self.config.countries:
                raise KeyError(f"unknown country {country!r}")
            if country != self.country:
                self.country = country
                self._begin_attach()
        self._wake()

    def set_coverage(self, covered: bool) -> None:
        with self._lock:
            if covered != self.coverage:
                self.coverage = covered
                self._begin_attach()
        self._wake()

    def inject_cme(self, prefix: str, code: int, count: int = 1) -> None:
        with self._lock:
            self._cme.extend([(prefix.upper(), code)] * count)

    def inject_no_answer(self, prefix: str, count: int = 1) -> None:
        with self._lock:
            self._mute.extend([prefix.upper()] * count)

    def inject_delay(self, prefix: str, delay_s: float, count: int = 1) -> None:
        """Answer the next ``count`` commands starting with ``prefix`` only after ``delay_s``.

        Like a busy modem, later commands are answered in order after the late one.
        """
        with self._lock:
            self._delay.extend([(prefix.upper(), delay_s)] * count)

    def emit_raw(self, data: bytes) -> None:
        """Write raw bytes to the client (line noise, garbage, partial lines)."""
        with self._lock, contextlib.suppress(OSError):
            os.write(self._master, data)

    @property
    def stat(self) -> int:
        with self._lock:
            return self._stat

    @property
    def serving_plmn(self) -> str | None:
        with self._lock:
            return self._serving

    # --- registration model ---------------------------------------------------------------

    def _target(self) -> tuple[int, str | None]:
        iccid = self._active_iccid
        if self.cfun != 1:
            return 0, None
        if not self.coverage or iccid is None or (iccid, self.country) in self.never_attach:
            return 2, None
        networks = self.config.countries[self.country]
        home = self.config.home_plmn.get(iccid)
        if home in networks:
            return 1, home
        return 5, networks[0]

    def _set_stat(self, stat: int, serving: str | None) -> None:
        if (stat, serving) == (self._stat, self._serving):
            return
        self._stat, self._serving = stat, serving
        if self._cereg_n >= 1:
            self._send(self._cereg_line(urc=True))

    def _begin_attach(self) -> None:
        target, _ = self._target()
        self._set_stat(target if target == 0 else 2, None)
        self._attach_at = time.monotonic() + self.config.attach_delay_s if target != 0 else None

    def _tick(self) -> None:
        now = time.monotonic()
        if self._attach_at is not None and now >= self._attach_at:
            self._attach_at = None
            self._set_stat(*self._target())
        while self._late and self._late[0][0] <= now:
            self._send(self._late.pop(0)[1])
        period = self.config.nmea_period_s
        if period and now >= self._next_nmea:
            self._next_nmea = now + period
            self._send_nmea()

    def _cereg_line(self, *, urc: bool) -> str:
        parts = [] if urc else [str(self._cereg_n)]
        parts.append(str(self._stat))
        if self._cereg_n >= 2 and self._stat in (1, 5):
            parts += ['"1A2B"', '"01A2D101"', "7"]
        return "+CEREG: " + ",".join(parts)

    def _send_nmea(self) -> None:
        lat, lon = self.position
        stamp = time.strftime("%H%M%S.00", time.gmtime())
        date = time.strftime("%d%m%y", time.gmtime())
        lat_s = f"{int(abs(lat)):02d}{(abs(lat) % 1) * 60:07.4f},{'N' if lat >= 0 else 'S'}"
        lon_s = f"{int(abs(lon)):03d}{(abs(lon) % 1) * 60:07.4f},{'E' if lon >= 0 else 'W'}"
        self._send(nmea_sentence(f"GPRMC,{stamp},A,{lat_s},{lon_s},12.0,90.0,{date},,,A"))
        self._send(nmea_sentence(f"GPGGA,{stamp},{lat_s},{lon_s},1,08,0.9,520.0,M,47.0,M,,"))

    # --- I/O --------------------------------------------------------------------------------

    def _send(self, line: str) -> None:
        data = b"\r\n" + line.encode() + b"\r\n"
        try:
            os.write(self._master, data)
        except BlockingIOError:
            log.debug("pty full, dropped %r", line)
        except OSError as exc:
            log.debug("pty write failed: %s", exc)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                self._tick()
                deadlines = [d for d in (self._attach_at,) if d is not None]
                if self._late:
                    deadlines.append(self._late[0][0])
                if self.config.nmea_period_s:
                    deadlines.append(self._next_nmea)
            timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else 0.5
            try:
                ready, _, _ = select.select([self._master, self._wake_r], [], [], min(timeout, 0.5))
            except (OSError, ValueError):
                return
            if self._wake_r in ready:
                with contextlib.suppress(OSError):
                    os.read(self._wake_r, 64)
            if self._master in ready:
                try:
                    chunk = os.read(self._master, 4096)
                except BlockingIOError:
                    continue
                except OSError:
                    time.sleep(0.05)  # no client attached (EIO); wait for one
                    continue
                self._buffer += chunk
                while b"\r" in self._buffer:
                    raw, _, rest = bytes(self._buffer).partition(b"\r")
                    self._buffer = bytearray(rest)
                    line = raw.decode("ascii", errors="replace").strip()
                    if line:
                        with self._lock:
                            self._handle(line)

    # --- commands ---------------------------------------------------------------------------

    def _handle(self, line: str) -> None:
        self.commands.append(line)
        echo = [line] if self._echo else []  # (before ATE0/ATE1 takes effect, as on a modem)
        # Commands are processed in order: behind a late answer, echo and answer wait too.
        due = self._late[-1][0] if self._late else 0.0
        if due:
            self._late.extend((due, item) for item in echo)
        else:
            for item in echo:
                self._send(item)
        answer = self._answer_or_error(line)
        if answer is None:
            return  # no answer at all (card stopped answering)
        upper = line.upper()
        for i, (prefix, delay_s) in enumerate(self._delay):
            if upper.startswith(prefix):
                del self._delay[i]
                due = max(due, time.monotonic() + delay_s)
                break
        if due:  # late, or queued behind a late answer
            self._late.extend((due, item) for item in answer)
            return
        for item in answer:
            self._send(item)

    def _answer_or_error(self, line: str) -> list[str] | None:
        upper = line.upper()
        for i, prefix in enumerate(self._mute):
            if upper.startswith(prefix):
                del self._mute[i]
                return None
        for i, (prefix, code) in enumerate(self._cme):
            if upper.startswith(prefix):
                del self._cme[i]
                return [f"+CME ERROR: {code}"]
        try:
            return self._answer(line, upper)
        except (ValueError, IndexError, KeyError):
            return ["+CME ERROR: 50"]

    def _test_form(self, command: str) -> list[str]:
        """``AT+CMD=?`` (3GPP TS 27.007 test command): the supported ranges, then ``OK``."""
        if command in ("+CCHO", "+CCHC", "+CGLA"):
            return ["OK"] if self.config.support_cgla else ["ERROR"]
        if command == "+COPS":
            target, _ = self._target()
            networks = self.config.countries[self.country] if target != 0 and self.coverage else ()
            found = "".join(f'({2 if plmn == self._serving else 1},"","","{plmn}",7),' for plmn in networks)
            return [f"+COPS: {found},(0-4),(2)", "OK"]
        ranges = _TEST_FORMS.get(command)
        if ranges is None:
            return ["ERROR"]
        return [f"{command}: {ranges}", "OK"] if ranges else ["OK"]

    def _answer(self, line: str, upper: str) -> list[str] | None:  # noqa: PLR0911 - one per command
        if upper.startswith("AT+") and upper.endswith("=?"):
            return self._test_form(upper[2:-2])
        if upper in ("AT", "ATZ"):
            return ["OK"]
        if upper in ("ATE0", "ATE1"):
            self._echo = upper == "ATE1"
            return ["OK"]
        if upper == "ATI":
            return ["tcu simulated modem", "Revision: SIM 1.0", "OK"]
        if upper == "AT+CGSN":
            return [self.config.imei, "OK"]
        if upper == "AT+CFUN?":
            return [f"+CFUN: {self.cfun}", "OK"]
        if upper.startswith("AT+CFUN="):
            return self._cfun(int(upper.split("=", 1)[1].split(",", maxsplit=1)[0]))
        if upper == "AT+CEREG?":
            return [self._cereg_line(urc=False), "OK"]
        if upper.startswith("AT+CEREG="):
            self._cereg_n = int(upper.split("=", 1)[1])
            return ["OK"]
        if upper == "AT+CREG?":
            return [f"+CREG: 0,{self._stat}", "OK"]
        if upper.startswith("AT+CREG="):
            return ["OK"] if upper.split("=", 1)[1] in ("0", "1", "2") else ["+CME ERROR: 50"]
        if upper.startswith("AT+COPS="):
            return ["OK"]
        if upper == "AT+COPS?":
            if self._serving is None:
                return ["+COPS: 0", "OK"]
            return [f'+COPS: 0,2,"{self._serving}",7', "OK"]
        if upper == "AT+CSQ":
            return ["+CSQ: 21,99" if self._stat in (1, 5) else "+CSQ: 99,99", "OK"]
        if upper == "AT+CESQ":
            registered = self._stat in (1, 5)
            return [f"+CESQ: 99,99,255,255,{20 if registered else 255},{55 if registered else 255}", "OK"]
        if upper.startswith("AT+CCHO=") and self.config.support_cgla:
            return self._ccho(line.split("=", 1)[1].strip().strip('"'))
        if upper.startswith("AT+CGLA=") and self.config.support_cgla:
            return self._cgla(line.split("=", 1)[1])
        if upper.startswith("AT+CCHC=") and self.config.support_cgla:
            return self._cchc(int(upper.split("=", 1)[1], self.config.session_id_base))
        if upper.startswith("AT+CSIM="):
            return self._csim(line.split("=", 1)[1])
        return ["ERROR"]

    def _cfun(self, mode: int) -> list[str]:
        if mode not in (0, 1, 4):
            return ["+CME ERROR: 50"]
        previous, self.cfun = self.cfun, mode
        if mode == 1 and previous != 1:
            self.card.power_cycle()
            self._sessions.clear()
            self._active_iccid = self.card.enabled.iccid if self.card.enabled else None
        if mode != previous:
            self._begin_attach()
        return ["OK"]

    def _card(self, apdu: bytes) -> bytes | None:
        try:
            answer = self.card.transmit(apdu)
        except TimeoutError:
            return None
        if answer[-2:-1] == b"\x91" and self.config.honour_refresh:
            # the terminal FETCHes the proactive REFRESH and re-reads the USIM
            self._active_iccid = self.card.enabled.iccid if self.card.enabled else None
            self._begin_attach()
        return answer

    def _ccho(self, aid_hex: str) -> list[str] | None:
        aid = bytes.fromhex(aid_hex)
        opened = self._card(bytes([0x00, 0x70, 0x00, 0x00, 0x01]))
        if opened is None:
            return None
        if len(opened) != 3 or opened[-2:] != b"\x90\x00":
            return ["+CME ERROR: 3"]
        channel = opened[0]
        selected = self._card(bytes([channel, 0xA4, 0x04, 0x00, len(aid)]) + aid)
        if selected is None:
            return None
        if selected[-2:] != b"\x90\x00":
            self._card(bytes([0x00, 0x70, 0x80, channel]))
            return ["+CME ERROR: 22"]
        sid = self.config.session_id_offset + channel
        self._sessions[sid] = channel
        text = f"{sid:X}" if self.config.session_id_base == 16 else str(sid)
        return [f"+CCHO: {text}" if self.config.ccho_prefixed else text, "OK"]

    def _cgla(self, args: str) -> list[str] | None:
        match = re.fullmatch(r'\s*([0-9A-Fa-f]+)\s*,\s*(\d+)\s*,\s*"?([0-9A-Fa-f]*)"?\s*', args)
        if match is None:
            return ["+CME ERROR: 50"]
        sid, length, hex_text = int(match[1], self.config.session_id_base), int(match[2]), match[3]
        if sid not in self._sessions or length != len(hex_text) or length < 8:
            return ["+CME ERROR: 50"]
        apdu = bytes.fromhex(hex_text)
        channel = self._sessions[sid]
        answer = self._card(bytes([(apdu[0] & 0xFC) | channel]) + apdu[1:])
        if answer is None:
            return None
        return [f'+CGLA: {len(answer) * 2},"{answer.hex().upper()}"', "OK"]

    def _cchc(self, sid: int) -> list[str]:
        channel = self._sessions.pop(sid, None)
        if channel is None:
            return ["+CME ERROR: 50"]
        self._card(bytes([0x00, 0x70, 0x80, channel]))
        return ["OK"]

    def _csim(self, args: str) -> list[str] | None:
        length_text, _, hex_text = args.partition(",")
        hex_text = hex_text.strip().strip('"')
        if int(length_text) != len(hex_text):
            return ["+CME ERROR: 50"]
        answer = self._card(bytes.fromhex(hex_text))
        if answer is None:
            return None
        return [f'+CSIM: {len(answer) * 2},"{answer.hex().upper()}"', "OK"]
