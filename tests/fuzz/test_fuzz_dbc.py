"""Fuzz the DBC loader and codec compiler (harness: tools/fuzz/fuzz_dbc.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tcu.signals.codec import compile_database
from tcu.signals.dbc import load_dbc
from tools.fuzz import fuzz_dbc as harness
from tools.fuzz._hypothesis import check_input, fuzz_settings, mutated


def test_fuzz_dbc_seeds_load_and_compile(tmp_path):
    seeds = harness.seeds()
    assert len(seeds) == 9
    for index, seed in enumerate(seeds):
        path = tmp_path / f"seed{index}.dbc"
        path.write_bytes(seed)
        assert len(compile_database(load_dbc(path))) > 0, f"seed {index} has no messages"
        check_input(harness, seed)


@fuzz_settings(250)
@given(st.binary(max_size=2048))
def test_fuzz_dbc_random_bytes(data):
    check_input(harness, data)


@fuzz_settings(500)
@given(mutated(harness.seeds()))
def test_fuzz_dbc_mutated_seeds(data):
    check_input(harness, data)
