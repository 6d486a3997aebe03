"""Fuzz campaign expressions and campaign files (harness: tools/fuzz/fuzz_campaign.py),
plus regression tests for what the fuzzer found in ``tcu.collect``."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcu.collect.campaign import CampaignError, parse_campaigns
from tcu.collect.expr import ExpressionError, ExprLimits, compile_expression
from tools.fuzz import fuzz_campaign as harness
from tools.fuzz._hypothesis import check_input, fuzz_settings, mutated

_EXPR_TOKENS = ["Vehicle.Speed", " and ", " or ", "not ", "avg(", "max(", "abs(", "changed(", "is_null("]
_EXPR_ALPHABET = st.sampled_from([*"()-+*/<>=!, .0123456789eVS", *_EXPR_TOKENS, "2s", "500ms", "1min"])


def test_fuzz_campaign_seeds_compile():
    seeds = harness.seeds()
    for seed in seeds[: len(harness._EXPRESSIONS)]:
        compile_expression(seed.decode())
    assert len(parse_campaigns(seeds[len(harness._EXPRESSIONS)].decode())) == 3
    for seed in seeds:
        check_input(harness, seed)


@fuzz_settings(1000)
@given(st.binary(max_size=512))
def test_fuzz_campaign_random_bytes(data):
    check_input(harness, data)


@fuzz_settings(800)
@given(st.lists(_EXPR_ALPHABET, max_size=40).map("".join))
def test_fuzz_campaign_expression_tokens(text):
    check_input(harness, text.encode())


@fuzz_settings(1500)
@given(mutated(harness.seeds()))
def test_fuzz_campaign_mutated_seeds(data):
    check_input(harness, data)


@pytest.mark.parametrize(
    "text",
    [
        "(" * 5000 + "Vehicle.Speed > 1" + ")" * 5000,
        "-" * 5000 + "Vehicle.Speed > 1",
        "not " * 3000 + "Vehicle.Speed > 1",
        "abs(" * 3000 + "Vehicle.Speed",
        "(" * 101 + "Vehicle.Speed > 1" + ")" * 101,
    ],
)
def test_fuzz_campaign_deep_nesting_is_an_expression_error(text):
    # Found by the fuzzer: the recursive parser raised RecursionError.
    with pytest.raises(ExpressionError, match="nested more than 100 levels deep"):
        compile_expression(text, ExprLimits(max_depth=10_000, max_nodes=100_000))


def test_fuzz_campaign_nesting_below_the_parser_bound_still_compiles():
    text = "(" * 90 + "Vehicle.Speed > 1" + ")" * 90
    assert compile_expression(text, ExprLimits(max_depth=200)).signals == frozenset({"Vehicle.Speed"})


def test_fuzz_campaign_infinite_window_is_an_expression_error():
    # Found by the fuzzer: round(inf) raised OverflowError.
    with pytest.raises(ExpressionError, match="is too long"):
        compile_expression("max(Vehicle.Speed, " + "9" * 400 + "s) > 1")


@pytest.mark.parametrize("text", ["a = " + "[" * 5000, "a = " + "{b = " * 5000])
def test_fuzz_campaign_deeply_nested_toml_is_a_campaign_error(text):
    # Found by the fuzzer: tomllib raised RecursionError.
    with pytest.raises(CampaignError, match="nested too deeply") as info:
        parse_campaigns(text, path="deep.toml")
    assert str(info.value).startswith("deep.toml: ")
