"""Fuzz target ``modem``: :mod:`tcu.modem.parse` and the line handling of
:class:`tcu.modem.at.AtChannel`.

Each line of the input (decoded as UTF-8 with replacement) goes to every parser
(``parse_creg`` solicited and not, ``parse_cops``, ``parse_csq``, ``parse_cesq``,
``parse_nmea``). Then the raw bytes are the answer of a modem to ``AT+CEREG?``: a real
pseudo-terminal stands in for the modem's tty, the channel's reader runs on an asyncio
loop, and ``\\r\\nOK\\r\\n`` is appended so the command always ends. Contract: only
:class:`tcu.errors.ModemError` escapes (``parse_nmea`` may return None), and the
channel's reader callback raises nothing (asyncio would only log it and the command
would hang until its timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from functools import cache
from typing import Any

from tcu.errors import ModemError
from tcu.modem.at import AtChannel, AtConfig
from tcu.modem.parse import nmea_sentence, parse_cesq, parse_cops, parse_creg, parse_csq, parse_nmea

__all__ = ["AT_INPUT_BYTES", "NAME", "one_input", "seeds"]

NAME = "modem"
#: Bytes of the input sent as the modem's answer (stays below the pty's buffer).
AT_INPUT_BYTES = 1024
_COMMAND = "AT+CEREG?"
_COMMAND_TIMEOUT_S = 1.0

_SEED_LINES = (
    '+CEREG: 2,5,"2F0A","01A2B3C4",7',
    '+CEREG: 1,"2F0A","01A2B3C4",7',
    "+CREG: 0,1",
    '+CGREG: 2,1,"00C3","0000A1B2",2',
    '+C5GREG: 1,"000001","0000000A1",11',
    '+COPS: 0,2,"26201",7',
    '+COPS: 0,0,"Telekom.de",7',
    "+COPS: 0",
    "+CSQ: 23,99",
    "+CESQ: 99,99,255,255,20,45",
    "+CME ERROR: 10",
    "+CME ERROR: SIM not inserted",
    "+CMS ERROR: 500",
    "RING",
    "ERROR",
    "AT+CEREG?",
    nmea_sentence("GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W"),
    nmea_sentence("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"),
    nmea_sentence("GNGSA,A,3,04,05,,09,12,,,24,,,,,2.5,1.3,2.1"),
)


@cache
def seeds() -> list[bytes]:
    """Typical modem answers: each line alone, and a whole session of them."""
    lines = [line.encode() for line in _SEED_LINES]
    return [*lines, b"\r\n".join(lines) + b"\r\n"]


def _parse_lines(text: str) -> None:
    for line in text.splitlines():
        for parse in (
            lambda s: parse_creg(s, solicited=True),
            lambda s: parse_creg(s, solicited=False),
            parse_cops,
            parse_csq,
            parse_cesq,
            parse_nmea,
        ):
            with contextlib.suppress(ModemError):
                parse(line)


async def _talk(answer: bytes) -> list[BaseException]:
    """Send ``AT+CEREG?`` over a pty and answer it with ``answer``; return callback errors."""
    loop = asyncio.get_running_loop()
    errors: list[BaseException] = []

    def on_error(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        errors.append(exc if isinstance(exc, BaseException) else RuntimeError(str(context.get("message"))))

    loop.set_exception_handler(on_error)
    master, slave = os.openpty()
    try:
        channel = AtChannel(AtConfig(port=os.ttyname(slave), command_timeout_s=_COMMAND_TIMEOUT_S))
        async with channel:
            sub = channel.subscribe()
            heard = asyncio.Event()
            loop.add_reader(master, heard.set)
            task = asyncio.create_task(channel.command(_COMMAND))
            try:
                await asyncio.wait_for(heard.wait(), _COMMAND_TIMEOUT_S)
                os.read(master, 4096)
            finally:
                loop.remove_reader(master)
            os.write(master, answer + b"\r\nOK\r\n")
            with contextlib.suppress(ModemError):
                await task
            while not sub.queue.empty():
                sub.queue.get_nowait()
            sub.close()
    finally:
        os.close(master)
        os.close(slave)
    return errors


def one_input(data: bytes) -> None:
    _parse_lines(data.decode("utf-8", errors="replace"))
    errors = asyncio.run(_talk(data[:AT_INPUT_BYTES]))
    if errors:
        raise errors[0]
