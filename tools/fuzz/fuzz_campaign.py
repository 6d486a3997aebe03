"""Fuzz target ``campaign``: :func:`tcu.collect.expr.compile_expression` and
:func:`tcu.collect.campaign.parse_campaigns`.

The input, decoded as UTF-8 with replacement, is compiled as an expression and parsed as
a campaign file. A compiled expression (also those inside parsed campaigns) is evaluated
over a short history of every signal it reads. Contract: compiling and parsing raise only
:class:`tcu.errors.InputError` subclasses; evaluating raises nothing and gives one bool
per evaluation time.
"""

from __future__ import annotations

import contextlib
import warnings
from functools import cache

import numpy as np

from tcu.collect.campaign import Condition, parse_campaigns
from tcu.collect.expr import Expression, compile_expression
from tcu.errors import InputError

__all__ = ["NAME", "one_input", "seeds"]

NAME = "campaign"

_EXPRESSIONS = (
    "Vehicle.Acceleration.Longitudinal < -6 and Vehicle.Speed > 30",
    "avg(Vehicle.Speed, 2s) > 100 or not (Vehicle.Speed <= 5)",
    "max(Vehicle.Speed, 500ms) - min(Vehicle.Speed, 500ms) >= 20",
    "changed(Vehicle.Cabin.Door.Row1.DriverSide.IsOpen)",
    "abs(Vehicle.Speed - Vehicle.Chassis.Axle.Row1.Wheel.Left.Speed) > 1e1 and not is_null(Vehicle.Speed)",
    "(Vehicle.Speed * 3.6 / 2 + 1) != 0 and max(Vehicle.Speed, 1min) == 0.5",
)

_CAMPAIGNS = """[[campaign]]
name = "hard_braking"
version = 1
priority = 50
signals = ["Vehicle.Speed", "Vehicle.Acceleration.Longitudinal"]
[campaign.condition]
expression = "Vehicle.Acceleration.Longitudinal < -6"
trigger = "rising_edge"
min_trigger_interval_ms = 2000
pre_trigger_ms = 10000
post_trigger_ms = 5000
raw_frames = [{bus = "can0", arbitration_id = 0x123}]

[[campaign]]
name = "minutely"
version = 3
signals = ["Vehicle.Speed", "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"]
[campaign.periodic]
period_ms = 60000
groups = [{signals = ["Vehicle.Speed"], period_ms = 1000}]

[[campaign]]
name = "speed_changes"
version = 1
signals = ["Vehicle.Speed"]
[campaign.on_change]
min_interval_ms = 500
deadband = {"Vehicle.Speed" = 0.5}
"""

_TIMES = np.array([0, 500_000_000, 1_000_000_000, 1_000_000_000, 2_500_000_000], dtype=np.int64)
_SAMPLE_T = np.array([0, 400_000_000, 1_000_000_000, 2_000_000_000], dtype=np.int64)
_SAMPLE_V = np.array([0.0, -7.5, np.inf, 1e308], dtype=np.float64)


@cache
def seeds() -> list[bytes]:
    """The expression examples, the campaign file example and each campaign of it alone."""
    parts = _CAMPAIGNS.split("\n\n")
    return [e.encode() for e in _EXPRESSIONS] + [_CAMPAIGNS.encode()] + [p.encode() for p in parts]


def _evaluate(expression: Expression) -> None:
    series = dict.fromkeys(expression.signals, (_SAMPLE_T, _SAMPLE_V))
    result = expression.evaluate(series, _TIMES)
    if result.shape != _TIMES.shape or result.dtype != np.bool_:
        raise AssertionError(f"evaluate gave {result.dtype}{result.shape} for {_TIMES.shape} times")


def one_input(data: bytes) -> None:
    text = data.decode("utf-8", errors="replace")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy's overflow/invalid warnings are not failures
        with contextlib.suppress(InputError):
            _evaluate(compile_expression(text))
        try:
            campaigns = parse_campaigns(text, path="fuzz.toml")
        except InputError:
            return
        for campaign in campaigns:
            if isinstance(campaign.mode, Condition):
                _evaluate(campaign.mode.expression)
