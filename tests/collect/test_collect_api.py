"""The public API of the campaign modules: exactly these names, all importable."""

from __future__ import annotations

import importlib

import pytest

PUBLIC = {
    "tcu.collect.expr": {
        "ExprCost",
        "ExprLimits",
        "Expression",
        "ExpressionError",
        "WindowUse",
        "compile_expression",
    },
    "tcu.collect.campaign": {
        "MAX_POST_TRIGGER_MS",
        "MAX_PRE_TRIGGER_MS",
        "Campaign",
        "CampaignError",
        "Condition",
        "OnChange",
        "Periodic",
        "RawFrame",
        "SourceRef",
        "load_campaigns",
        "parse_campaigns",
        "validate",
    },
    "tcu.collect.buffer": {
        "BYTES_PER_FRAME",
        "BYTES_PER_SAMPLE",
        "BufferPlan",
        "FrameKey",
        "FrameRing",
        "RingBuffer",
        "buffer_needs",
        "frame_needs",
        "frame_rates_from_dbc",
        "plan_buffers",
        "rates_from_dbc",
    },
    "tcu.collect.engine": {
        "CampaignEngine",
        "CapturedEvent",
        "CapturedFrames",
        "CollectOutput",
        "EngineStats",
    },
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_collect_public_all(module: str) -> None:
    mod = importlib.import_module(module)
    assert set(mod.__all__) == PUBLIC[module]
    for name in mod.__all__:
        assert hasattr(mod, name), name


def test_collect_errors_are_input_errors() -> None:
    from tcu.collect.campaign import CampaignError
    from tcu.collect.expr import ExpressionError
    from tcu.errors import InputError, TcuError

    assert issubclass(CampaignError, InputError) and issubclass(ExpressionError, InputError)
    assert issubclass(InputError, TcuError)
