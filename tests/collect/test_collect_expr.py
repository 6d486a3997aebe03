"""The expression language: precedence, null semantics, windows, changed, errors, cost limits."""

from __future__ import annotations

import numpy as np
import pytest

from tcu.collect.expr import ExpressionError, ExprLimits, compile_expression
from tcu.errors import InputError

I64 = np.int64

CONST = {"A.a": 2.0, "A.b": 3.0, "A.c": 4.0}


def at_once(text: str, values: dict[str, float] | None = None) -> bool:
    """Evaluate ``text`` at t=10 with every signal holding one sample at t=0."""
    values = CONST if values is None else values
    series = {k: (np.array([0], I64), np.array([v])) for k, v in values.items()}
    return bool(compile_expression(text).evaluate(series, np.array([10], I64))[0])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A.a + A.b * A.c == 14", True),  # * before +
        ("(A.a + A.b) * A.c == 20", True),
        ("A.a - A.b - A.c == -5", True),  # left associative
        ("A.c / A.a / A.a == 1", True),
        ("A.a * A.b - A.c / A.a == 4", True),
        ("-A.a * A.b == -6", True),  # unary minus binds tightest
        ("- -A.a == 2", True),
        ("-A.a - -A.b == 1", True),
        ("A.a * A.b < A.c + 3", True),  # arithmetic before comparison
        ("A.a > 5 and A.b > 5 or A.c == 4", True),  # and before or
        ("A.c == 4 or A.a > 5 and A.b > 5", True),
        ("(A.c == 4 or A.a > 5) and A.b > 5", False),
        ("not A.a < 5 or A.b == 3", True),  # not looser than comparison, tighter than or
        ("not A.a < 5 and A.b == 3", False),
        ("not not A.a == 2", True),
        ("abs(-A.c) == 4", True),
        ("abs(A.a - A.c) * 2 == 4", True),
        ("A.a <= 2 and A.a >= 2 and A.a != 3", True),
        ("1e1 > A.c", True),
        (".5 * A.c == 2", True),
    ],
)
def test_collect_precedence_table(text: str, expected: bool) -> None:
    assert at_once(text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("B.x > 0", False),
        ("B.x < 0", False),
        ("B.x == B.x", False),
        ("B.x != 1", False),
        ("not (B.x > 0)", True),
        ("is_null(B.x)", True),
        ("is_null(A.a)", False),
        ("B.x + 1 > 0", False),
        ("abs(B.x) >= 0", False),
        ("-B.x <= 0", False),
        ("A.a / 0 > 0", False),  # division by zero is null
        ("A.a / 0 < 0", False),
        ("A.a / 0 != 1", False),
        ("A.a > 1 or B.x > 0", True),
        ("A.a > 1 and B.x > 0", False),
    ],
)
def test_collect_null_semantics(text: str, expected: bool) -> None:
    assert at_once(text) is expected


def test_collect_null_before_first_sample_then_value() -> None:
    expr = compile_expression("is_null(A.a)")
    series = {"A.a": (np.array([100, 200], I64), np.array([1.0, 2.0]))}
    got = expr.evaluate(series, np.array([0, 99, 100, 150], I64))
    assert got.tolist() == [True, True, False, False]
    gt = compile_expression("A.a > 1.5").evaluate(series, np.array([99, 100, 199, 200, 10_000], I64))
    assert gt.tolist() == [False, False, False, True, True]


@pytest.mark.parametrize("func", ["min", "max", "avg"])
def test_collect_windows_are_exact_closed_intervals(func: str) -> None:
    rng = np.random.default_rng(7)
    t = np.arange(0, 2_000, 100, dtype=I64) * 1_000_000  # every 100 ms for 2 s
    v = np.round(rng.normal(0, 10, len(t)), 3)
    series = {"A.a": (t, v)}
    window_ns = 300_000_000
    # Times on sample instants (window edge falls exactly on a sample) and between them.
    times = np.array([0, 50, 300, 350, 1_000, 1_050, 1_900, 2_500, 5_000], I64) * 1_000_000
    for when in times.tolist():
        inside = v[(t >= when - window_ns) & (t <= when)]
        if len(inside) == 0:
            expr = compile_expression(f"is_null(A.a) or not ({func}(A.a, 300ms) > -1e300)")
            assert expr.evaluate(series, np.array([when], I64)).tolist() == [True]
            continue
        ref = {"min": inside.min(), "max": inside.max(), "avg": inside.mean()}[func]
        expr = compile_expression(f"abs({func}(A.a, 300ms) - {float(ref)!r}) < 1e-9")
        assert expr.evaluate(series, np.array([when], I64)).tolist() == [True], (func, when, inside)
    # The closed edge: at 300 ms a 300 ms window holds 0, 100, 200 and 300 ms (4 samples).
    count_edge = compile_expression(f"abs(avg(A.a, 300ms) - {float(v[:4].mean())!r}) < 1e-9")
    assert count_edge.evaluate(series, np.array([300_000_000], I64)).tolist() == [True]


def test_collect_window_empty_after_signal_stops_is_null() -> None:
    series = {"A.a": (np.array([0], I64), np.array([5.0]))}
    expr = compile_expression("max(A.a, 1s) > 0")
    got = expr.evaluate(series, np.array([0, 1_000_000_000, 1_000_000_001], I64))
    assert got.tolist() == [True, True, False]
    assert compile_expression("max(A.a, 1.5s) > 0").cost().windows[0].window_ns == 1_500_000_000
    assert compile_expression("max(A.a, 1min) > 0", ExprLimits(max_window_ms=60_000)).cost().windows[
        0
    ].window_ns == (60_000_000_000)


def test_collect_changed() -> None:
    t = np.array([0, 10, 20, 30, 40, 50], I64)
    v = np.array([1.0, 1.0, 2.0, 2.0, 2.0, 3.0])
    expr = compile_expression("changed(A.g)")
    got = expr.evaluate({"A.g": (t, v)}, t)
    assert got.tolist() == [False, False, True, False, False, True]
    between = expr.evaluate({"A.g": (t, v)}, np.array([25, 55], I64))
    assert between.tolist() == [False, False]
    assert expr.evaluate({}, np.array([0], I64)).tolist() == [False]


@pytest.mark.parametrize(
    ("text", "column", "problem"),
    [
        ("A.a < ", 7, "expected a number"),
        ("A.a < 3 < 4", 9, "cannot be chained"),
        ("foo(A.a) > 1", 1, "unknown function 'foo'"),
        ("A.a + (A.b < 3) > 1", 8, "needs a number, got a condition"),
        ("A.a > 1 and 3", 13, "needs a condition, got a number"),
        ("A.a + 1", 1, "campaign condition needs a condition"),
        ("min(A.a, 2) > 1", 10, "window duration"),
        ("min(3, 2s) > 1", 5, "takes a signal name"),
        ("A.a > 3s", 7, "only allowed as the window"),
        ("A.a @ 3", 5, "unexpected character '@'"),
        ("5x > 3", 1, "bad number"),
        ("speed > 3", 1, "unknown name 'speed'"),
        ("(A.a > 3", 9, "expected ')'"),
        ("A.a > 3)", 8, "unexpected ')'"),
        ("", 1, "empty expression"),
        ("changed(A.a, 2s)", 12, "expected ')'"),
        ("and A.a > 1", 1, "needs an operand"),
        ("max(A.a, 0ms) > 1", 10, "longer than zero"),
    ],
)
def test_collect_errors_point_at_column(text: str, column: int, problem: str) -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expression(text)
    err = info.value
    assert isinstance(err, InputError)
    assert err.column == column, str(err)
    assert problem in str(err)
    lines = str(err).splitlines()
    assert lines[1] == "    " + text
    assert lines[2] == "    " + " " * (column - 1) + "^"


def _nested_abs(levels: int) -> str:
    return "abs(" * levels + "A.a" + ")" * levels + " > 0"


def test_collect_depth_limit() -> None:
    ok = compile_expression(_nested_abs(8))
    assert ok.cost().depth == 10
    text = _nested_abs(9)
    with pytest.raises(ExpressionError) as info:
        compile_expression(text)
    assert "deeper than the limit of 10" in str(info.value)
    assert info.value.column == text.index("A.a") + 1  # the node at depth 11


def _balanced_sum(leaves: int) -> str:
    parts = ["A.a"] * leaves
    while len(parts) > 1:
        parts = [f"({parts[i]} + {parts[i + 1]})" for i in range(0, len(parts), 2)]
    return parts[0]


def test_collect_node_limit() -> None:
    ok = compile_expression(_balanced_sum(64) + " > 0")
    assert ok.cost().nodes == 129
    assert ok.cost().depth == 8
    with pytest.raises(ExpressionError) as info:
        compile_expression(_balanced_sum(128) + " > 0")  # 257 nodes, depth 9
    assert "more than the limit of 256 nodes" in str(info.value)
    assert compile_expression(_balanced_sum(128) + " > 0", ExprLimits(max_nodes=257)).cost().nodes == 257


def test_collect_window_limits() -> None:
    text = "max(A.a, 2s) > 0 and min(A.b, 61s) < 0"
    with pytest.raises(ExpressionError) as info:
        compile_expression(text)
    assert info.value.column == text.index("min") + 1
    assert "over the limit of 60000 ms" in str(info.value)
    with pytest.raises(ExpressionError) as total:
        compile_expression("max(A.a, 40s) > 0 and min(A.b, 40s) < 0", ExprLimits(max_total_window_ms=60_000))
    assert total.value.column == len("max(A.a, 40s) > 0 and ") + 1


def test_collect_cost_report() -> None:
    expr = compile_expression("Vehicle.Acceleration.Longitudinal < -6 and avg(Vehicle.Speed, 2s) > 30")
    cost = expr.cost()
    assert cost.nodes == 8  # and, <, sig, -6 (one literal), >, avg, its signal, 30
    assert cost.depth == 4
    assert cost.signals == {"Vehicle.Acceleration.Longitudinal", "Vehicle.Speed"}
    assert [(w.func, w.signal, w.window_ns) for w in cost.windows] == [
        ("avg", "Vehicle.Speed", 2_000_000_000)
    ]
    assert cost.window_samples({"Vehicle.Speed": 50.0}) == 101
