"""Fuzz signed-command verification (harness: tools/fuzz/fuzz_commands.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcu.pki import CommandRejected
from tcu.pki.commands import CommandVerifier, NonceStore
from tools.fuzz import fuzz_commands as harness
from tools.fuzz._hypothesis import check_input, fuzz_settings, mutated


def _verifier() -> CommandVerifier:
    clock = lambda: harness.NOW_NS  # noqa: E731 - a fixed clock
    return CommandVerifier(harness._KEY.public_key(), harness.VEHICLE_ID, clock, NonceStore(clock=clock))


def test_fuzz_commands_seeds_reach_every_outcome():
    reasons = []
    for seed in harness.seeds():
        check_input(harness, seed)
        try:
            _verifier().verify(seed[1:])
            reasons.append("accepted")
        except CommandRejected as exc:
            reasons.append(exc.reason.value)
    assert sorted(set(reasons)) == ["accepted", "expired", "wrong_target"]


def test_fuzz_commands_resign_mode_passes_the_signature_check():
    blob = harness.seeds()[0][1:].replace(b'"kind":"campaign.start"', b'"kind":"campaign.stop"')
    with pytest.raises(CommandRejected, match="bad_signature"):
        _verifier().verify(blob)
    _verifier().verify(harness._resign(blob))  # accepted once re-signed


@fuzz_settings(2000)
@given(st.binary(max_size=1024))
def test_fuzz_commands_random_bytes(data):
    check_input(harness, data)


@fuzz_settings(2000)
@given(mutated(harness.seeds()))
def test_fuzz_commands_mutated_seeds(data):
    check_input(harness, data)
