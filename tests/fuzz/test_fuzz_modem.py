"""Fuzz the modem parsers and the AT channel's line handling (harness:
tools/fuzz/fuzz_modem.py), plus regression tests for what the fuzzer found in
``tcu.modem.at``."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcu.modem.at import AtChannel, AtConfig, CmeError
from tools.fuzz import fuzz_modem as harness
from tools.fuzz._hypothesis import check_input, fuzz_settings, mutated


def test_fuzz_modem_seeds_pass():
    for seed in harness.seeds():
        check_input(harness, seed)


@fuzz_settings(1000)
@given(st.binary(max_size=512))
def test_fuzz_modem_random_bytes(data):
    check_input(harness, data)


@fuzz_settings(1500)
@given(mutated(harness.seeds()))
def test_fuzz_modem_mutated_seeds(data):
    check_input(harness, data)


@fuzz_settings(800)
@given(st.text(alphabet=st.sampled_from('+CMES ERROR:,0123456789²³٣"$*GPRMCAN\r\n'), max_size=80))
def test_fuzz_modem_error_like_text(text):
    check_input(harness, text.encode())


async def _answer(answer: bytes) -> BaseException | None:
    """Send AT+CEREG? over a pty, answer it, return what the command raised."""
    master, slave = os.openpty()
    try:
        async with AtChannel(AtConfig(port=os.ttyname(slave), command_timeout_s=1.0)) as channel:
            task = asyncio.create_task(channel.command("AT+CEREG?"))
            heard = asyncio.Event()
            asyncio.get_running_loop().add_reader(master, heard.set)
            await heard.wait()
            asyncio.get_running_loop().remove_reader(master)
            os.read(master, 4096)
            os.write(master, answer)
            try:
                await task
            except BaseException as exc:  # returned for the test to inspect
                return exc
            return None
    finally:
        os.close(master)
        os.close(slave)


@pytest.mark.parametrize(
    ("answer", "code", "name"),
    [
        (b"+CME ERROR: \xc2\xb2\r\n", None, "\u00b2"),  # '²'.isdigit() is True, int('²') fails
        (b"+CME ERROR\r\n", None, ""),  # no ':' at all
        (b"+CMS ERROR: " + b"1" * 5000 + b"\r\n", None, "1" * 5000),  # int() refuses 5000 digits
        (b"+CME ERROR: 10\r\n", 10, "SIM not inserted"),  # still the normal case
    ],
)
async def test_fuzz_modem_odd_cme_errors_fail_the_command_at_once(answer, code, name):
    # Found by the fuzzer: these lines raised inside the reader callback, asyncio only
    # logged it, and the command hung until its timeout (AtTimeoutError).
    started = time.monotonic()
    exc = await _answer(answer)
    assert isinstance(exc, CmeError)
    assert (exc.code, exc.name) == (code, name)
    assert time.monotonic() - started < 0.5
