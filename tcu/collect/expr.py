"""A small, safe expression language for campaign conditions.

Written here from scratch: a regex tokenizer and a Pratt (precedence-climbing)
parser build a typed tree; nothing is passed to ``eval`` or the ``ast`` module.
Example::

    Vehicle.Acceleration.Longitudinal < -6 and Vehicle.Speed > 30

Grammar, from loosest to tightest binding::

    or  <  and  <  not  <  comparison (< <= > >= == !=, not chainable)
        <  + -  <  * /  <  unary minus  <  atoms

Atoms are numbers (``30``, ``-6.5``, ``1e3``), dotted VSS signal names,
parenthesised expressions and the functions ``abs(x)``, ``min(sig, 2s)``,
``max(sig, 500ms)``, ``avg(sig, 2s)`` (windowed, over a signal name and a
duration in ``ms``, ``s`` or ``min``), ``changed(sig)`` and ``is_null(sig)``.

Every node has a static type, number or condition, checked while parsing: ``and``,
``or`` and ``not`` take conditions, arithmetic and comparisons take numbers, and
the whole expression must be a condition.

Semantics at an evaluation time ``t`` (see :meth:`Expression.evaluate`):

* a signal's value is its latest sample with time ``<= t``; before its first
  sample it is *null*;
* arithmetic with null gives null; division by zero gives null;
* every comparison with a null operand is false (``!=`` too); ``not`` then
  applies plain boolean logic, so ``not (x > 3)`` is true while ``x`` is null;
* ``is_null(sig)`` is true before the signal's first sample;
* ``min/max/avg(sig, W)`` reduce the samples with time in the closed window
  ``[t - W, t]`` (``avg`` is the arithmetic mean of the samples, not time
  weighted); an empty window gives null;
* ``changed(sig)`` is true when ``sig`` has a sample at exactly ``t`` whose value
  differs from the sample before it; a signal's first sample is not a change.

Cost: :meth:`Expression.cost` gives the node count, depth (nodes on the longest
root-to-leaf path; a negative number literal is one node) and windows. They
are checked against :class:`ExprLimits` when the expression is compiled; an
expression over a limit is refused with the column of the offending node.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from tcu.errors import InputError

__all__ = [
    "ExprCost",
    "ExprLimits",
    "Expression",
    "ExpressionError",
    "WindowUse",
    "compile_expression",
]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]
Series = tuple[I64, F64]

_NUM, _BOOL = "number", "condition"


class ExpressionError(InputError):
    """An expression is malformed, mistyped or over a cost limit.

    ``column`` is 1-based inside ``expression``; the message shows the
    expression with a caret under that column.
    """

    def __init__(self, problem: str, *, expression: str, column: int) -> None:
        self.expression = expression
        self.column = column
        caret = " " * (column - 1) + "^"
        super().__init__(f"column {column}: {problem}\n    {expression}\n    {caret}")
        self.problem = problem


@dataclass(frozen=True, slots=True)
class ExprLimits:
    """Bounds on one expression's evaluation cost, checked at load."""

    max_depth: int = 10
    max_nodes: int = 256
    max_window_ms: int = 60_000
    max_total_window_ms: int = 600_000


@dataclass(frozen=True, slots=True)
class WindowUse:
    """One windowed function call: ``func(signal, window_ns)`` at ``column``."""

    func: str
    signal: str
    window_ns: int
    column: int


@dataclass(frozen=True, slots=True)
class ExprCost:
    nodes: int
    depth: int
    windows: tuple[WindowUse, ...]
    signals: frozenset[str]
    signal_columns: tuple[tuple[str, int], ...] = ()  # (name, column of its first use)

    @property
    def total_window_ms(self) -> float:
        return sum(w.window_ns for w in self.windows) / 1e6

    def window_samples(self, rate_hz: Mapping[str, float]) -> int:
        """Samples scanned per evaluation by the windowed functions, at the given rates."""
        return sum(int(np.ceil(w.window_ns / 1e9 * rate_hz.get(w.signal, 0.0))) + 1 for w in self.windows)


# --------------------------------------------------------------------------- tree


@dataclass(frozen=True, slots=True)
class _Num:
    value: float
    column: int
    kind: str = _NUM


@dataclass(frozen=True, slots=True)
class _Sig:
    name: str
    column: int
    kind: str = _NUM


@dataclass(frozen=True, slots=True)
class _Neg:
    operand: _Node
    column: int
    kind: str = _NUM


@dataclass(frozen=True, slots=True)
class _Arith:
    op: str
    left: _Node
    right: _Node
    column: int
    kind: str = _NUM


@dataclass(frozen=True, slots=True)
class _Compare:
    op: str
    left: _Node
    right: _Node
    column: int
    kind: str = _BOOL


@dataclass(frozen=True, slots=True)
class _Logic:
    op: str
    left: _Node
    right: _Node
    column: int
    kind: str = _BOOL


@dataclass(frozen=True, slots=True)
class _Not:
    operand: _Node
    column: int
    kind: str = _BOOL


@dataclass(frozen=True, slots=True)
class _Abs:
    operand: _Node
    column: int
    kind: str = _NUM


@dataclass(frozen=True, slots=True)
class _Window:
    func: str
    signal: _Sig
    window_ns: int
    column: int
    kind: str = _NUM


@dataclass(frozen=True, slots=True)
class _Changed:
    signal: _Sig
    column: int
    kind: str = _BOOL


@dataclass(frozen=True, slots=True)
class _IsNull:
    signal: _Sig
    column: int
    kind: str = _BOOL


_Node = _Num | _Sig | _Neg | _Arith | _Compare | _Logic | _Not | _Abs | _Window | _Changed | _IsNull


def _children(node: _Node) -> tuple[_Node, ...]:
    if isinstance(node, _Neg | _Not | _Abs):
        return (node.operand,)
    if isinstance(node, _Arith | _Compare | _Logic):
        return (node.left, node.right)
    if isinstance(node, _Window | _Changed | _IsNull):
        return (node.signal,)
    return ()


# --------------------------------------------------------------------------- tokens

_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<dur>(?:\d+(?:\.\d+)?|\.\d+)(?:ms|min|s)(?![A-Za-z0-9_.]))
  | (?P<num>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)
  | (?P<op><=|>=|==|!=|<|>|\+|-|\*|/|\(|\)|,)
    """,
    re.VERBOSE,
)
_DUR_UNIT_NS = {"ms": 1_000_000, "s": 1_000_000_000, "min": 60_000_000_000}
_KEYWORDS = {"and", "or", "not"}
_FUNCTIONS = {"abs", "min", "max", "avg", "changed", "is_null"}
_COMPARE = {"<", "<=", ">", ">=", "==", "!="}
# Left binding powers of infix operators.
_LBP = {"or": 10, "and": 20, **dict.fromkeys(_COMPARE, 40), "+": 50, "-": 50, "*": 60, "/": 60}
_NOT_BP = 30
_NEG_BP = 70
# Parser recursion bound (far above ExprLimits.max_depth, far below Python's recursion limit).
_MAX_NESTING = 100


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: Literal["dur", "num", "name", "op", "end"]
    text: str
    column: int


def _tokenize(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            raise ExpressionError(f"unexpected character {text[pos]!r}", expression=text, column=pos + 1)
        kind = m.lastgroup
        assert kind is not None
        if kind == "num" and m.end() < len(text) and (text[m.end()].isalpha() or text[m.end()] == "_"):
            raise ExpressionError(
                f"bad number or duration {text[pos : m.end() + 1]!r}... (durations end in ms, s or min)",
                expression=text,
                column=pos + 1,
            )
        if kind != "ws":
            toks.append(_Tok(kind, m.group(), pos + 1))  # type: ignore[arg-type]
        pos = m.end()
    toks.append(_Tok("end", "", len(text) + 1))
    return toks


# --------------------------------------------------------------------------- parser


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokenize(text)
        self.pos = 0
        self.nesting = 0

    def fail(self, problem: str, column: int) -> ExpressionError:
        return ExpressionError(problem, expression=self.text, column=column)

    def peek(self) -> _Tok:
        return self.toks[self.pos]

    def take(self) -> _Tok:
        tok = self.toks[self.pos]
        self.pos += 1
        return tok

    def expect(self, text: str, context: str) -> _Tok:
        tok = self.take()
        if tok.text != text or tok.kind not in ("op",):
            raise self.fail(f"expected {text!r} {context}, got {_show(tok)}", tok.column)
        return tok

    def need(self, node: _Node, kind: str, context: str) -> _Node:
        if node.kind != kind:
            raise self.fail(f"{context} needs a {kind}, got a {node.kind}", _first_column(node))
        return node

    def parse(self) -> _Node:
        if self.peek().kind == "end":
            raise self.fail("empty expression", 1)
        node = self.expression(0)
        tok = self.peek()
        if tok.kind != "end":
            raise self.fail(f"unexpected {_show(tok)} after a complete expression", tok.column)
        return self.need(node, _BOOL, "a campaign condition")

    def lbp(self, tok: _Tok) -> int:
        if tok.kind == "op" or (tok.kind == "name" and tok.text in ("and", "or")):
            return _LBP.get(tok.text, 0)
        return 0

    def expression(self, rbp: int) -> _Node:
        if self.nesting >= _MAX_NESTING:  # refuse before Python's recursion limit does
            raise self.fail(f"expression is nested more than {_MAX_NESTING} levels deep", self.peek().column)
        self.nesting += 1
        try:
            left = self.nud(self.take())
            while rbp < self.lbp(self.peek()):
                left = self.led(self.take(), left)
            return left
        finally:
            self.nesting -= 1

    def nud(self, tok: _Tok) -> _Node:  # noqa: PLR0911 - one return per kind of atom
        if tok.kind == "num":
            return _Num(float(tok.text), tok.column)
        if tok.kind == "dur":
            raise self.fail(
                f"a duration such as {tok.text!r} is only allowed as the window of min/max/avg", tok.column
            )
        if tok.kind == "op" and tok.text == "(":
            inner = self.expression(0)
            self.expect(")", f"to close the '(' at column {tok.column}")
            return inner
        if tok.kind == "op" and tok.text == "-":
            operand = self.need(self.expression(_NEG_BP), _NUM, "unary '-'")
            if isinstance(operand, _Num):
                return _Num(-operand.value, tok.column)
            return _Neg(operand, tok.column)
        if tok.kind == "name":
            if tok.text == "not":
                return _Not(self.need(self.expression(_NOT_BP), _BOOL, "'not'"), tok.column)
            if tok.text in _KEYWORDS:
                raise self.fail(f"{tok.text!r} needs an operand on its left", tok.column)
            if self.peek().text == "(" and self.peek().kind == "op":
                return self.call(tok)
            if tok.text in _FUNCTIONS:
                raise self.fail(f"function {tok.text!r} needs '(' and its arguments", tok.column)
            if "." not in tok.text:
                raise self.fail(
                    f"unknown name {tok.text!r}: signals are dotted VSS names such as 'Vehicle.Speed'",
                    tok.column,
                )
            return _Sig(tok.text, tok.column)
        raise self.fail(f"expected a number, signal or '(', got {_show(tok)}", tok.column)

    def led(self, tok: _Tok, left: _Node) -> _Node:
        op = tok.text
        bp = _LBP[op]
        if op in ("and", "or"):
            self.need(left, _BOOL, f"{op!r}")
            right = self.need(self.expression(bp), _BOOL, f"{op!r}")
            return _Logic(op, left, right, tok.column)
        if op in _COMPARE:
            self.need(left, _NUM, f"comparison {op!r}")
            right = self.need(self.expression(bp), _NUM, f"comparison {op!r}")
            nxt = self.peek()
            if nxt.kind == "op" and nxt.text in _COMPARE:
                raise self.fail("comparisons cannot be chained; combine them with 'and'", nxt.column)
            return _Compare(op, left, right, tok.column)
        self.need(left, _NUM, f"operator {op!r}")
        right = self.need(self.expression(bp), _NUM, f"operator {op!r}")
        return _Arith(op, left, right, tok.column)

    def call(self, name: _Tok) -> _Node:
        func = name.text
        if func not in _FUNCTIONS:
            raise self.fail(
                f"unknown function {func!r} (known: {', '.join(sorted(_FUNCTIONS))})", name.column
            )
        self.expect("(", f"after {func!r}")
        if func == "abs":
            arg = self.need(self.expression(0), _NUM, "abs()")
            self.expect(")", "to close abs(")
            return _Abs(arg, name.column)
        sig_tok = self.take()
        if sig_tok.kind != "name" or "." not in sig_tok.text or sig_tok.text in _FUNCTIONS:
            raise self.fail(f"{func}() takes a signal name first, got {_show(sig_tok)}", sig_tok.column)
        sig = _Sig(sig_tok.text, sig_tok.column)
        if func in ("changed", "is_null"):
            self.expect(")", f"to close {func}(: it takes one signal name")
            return _Changed(sig, name.column) if func == "changed" else _IsNull(sig, name.column)
        self.expect(",", f"after the signal of {func}(): it takes a window such as 2s")
        dur = self.take()
        if dur.kind != "dur":
            raise self.fail(
                f"{func}() needs a window duration such as 500ms, 2s or 1min, got {_show(dur)}", dur.column
            )
        m = re.fullmatch(r"([0-9.]+)(ms|min|s)", dur.text)
        assert m is not None
        window = float(m.group(1)) * _DUR_UNIT_NS[m.group(2)]
        if not window < 2**63:  # round() of an infinite float raises OverflowError
            raise self.fail(f"window {dur.text!r} is too long", dur.column)
        window_ns = round(window)
        if window_ns <= 0:
            raise self.fail(f"window {dur.text!r} must be longer than zero", dur.column)
        self.expect(")", f"to close {func}(")
        return _Window(func, sig, window_ns, name.column)


def _show(tok: _Tok) -> str:
    return "the end of the expression" if tok.kind == "end" else repr(tok.text)


def _first_column(node: _Node) -> int:
    while isinstance(node, _Arith | _Compare | _Logic):
        node = node.left
    return node.column


# --------------------------------------------------------------------------- cost


def _cost(root: _Node, text: str, limits: ExprLimits) -> ExprCost:
    nodes = 0
    depth = 0
    windows: list[WindowUse] = []
    signals: dict[str, int] = {}
    total_window_ns = 0
    stack: list[tuple[_Node, int]] = [(root, 1)]
    while stack:  # pre-order, left to right
        node, d = stack.pop()
        nodes += 1
        depth = max(depth, d)
        if d > limits.max_depth:
            raise ExpressionError(
                f"expression is nested deeper than the limit of {limits.max_depth} levels",
                expression=text,
                column=node.column,
            )
        if nodes > limits.max_nodes:
            raise ExpressionError(
                f"expression has more than the limit of {limits.max_nodes} nodes",
                expression=text,
                column=node.column,
            )
        if isinstance(node, _Sig):
            signals.setdefault(node.name, node.column)
        if isinstance(node, _Window):
            if node.window_ns > limits.max_window_ms * 1_000_000:
                raise ExpressionError(
                    f"window of {node.window_ns / 1e6:g} ms is over the limit of {limits.max_window_ms} ms",
                    expression=text,
                    column=node.column,
                )
            total_window_ns += node.window_ns
            if total_window_ns > limits.max_total_window_ms * 1_000_000:
                raise ExpressionError(
                    f"windows add up to more than the limit of {limits.max_total_window_ms} ms",
                    expression=text,
                    column=node.column,
                )
            windows.append(WindowUse(node.func, node.signal.name, node.window_ns, node.column))
        stack.extend((c, d + 1) for c in reversed(_children(node)))
    return ExprCost(nodes, depth, tuple(windows), frozenset(signals), tuple(signals.items()))


# --------------------------------------------------------------------------- evaluation


@dataclass(slots=True)
class _Ctx:
    times: I64
    series: Mapping[str, Series]
    latest: dict[str, I64] = field(default_factory=dict)

    def series_of(self, name: str) -> Series:
        s = self.series.get(name)
        if s is None:
            empty: Series = (np.empty(0, np.int64), np.empty(0, np.float64))
            return empty
        return s

    def latest_index(self, name: str) -> I64:
        """Index of each evaluation time's latest sample (``-1``: none yet)."""
        idx = self.latest.get(name)
        if idx is None:
            t, _ = self.series_of(name)
            idx = np.searchsorted(t, self.times, side="right").astype(np.int64) - 1
            self.latest[name] = idx
        return idx


_Fn = Callable[[_Ctx], npt.NDArray[Any]]

_ARITH: dict[str, Callable[[F64, F64], F64]] = {
    "+": np.add,
    "-": np.subtract,
    "*": np.multiply,
    "/": np.divide,
}
_CMP: dict[str, Callable[[F64, F64], Bools]] = {
    "<": np.less,
    "<=": np.less_equal,
    ">": np.greater,
    ">=": np.greater_equal,
    "==": np.equal,
    "!=": np.not_equal,
}
_REDUCE: dict[str, Callable[..., F64]] = {
    "min": np.minimum.reduceat,
    "max": np.maximum.reduceat,
    "avg": np.add.reduceat,
}


def _compile(node: _Node) -> _Fn:  # noqa: PLR0911 - one branch per node type
    if isinstance(node, _Num):
        value = node.value
        return lambda ctx: np.full(len(ctx.times), value)
    if isinstance(node, _Sig):
        name = node.name

        def sig(ctx: _Ctx) -> F64:
            _, v = ctx.series_of(name)
            idx = ctx.latest_index(name)
            out = np.full(len(idx), np.nan)
            have = idx >= 0
            out[have] = v[idx[have]]
            return out

        return sig
    if isinstance(node, _Neg):
        f = _compile(node.operand)
        return lambda ctx: np.negative(f(ctx))
    if isinstance(node, _Abs):
        f = _compile(node.operand)
        return lambda ctx: np.abs(f(ctx))
    if isinstance(node, _Arith):
        a, b, op = _compile(node.left), _compile(node.right), _ARITH[node.op]

        def arith(ctx: _Ctx) -> F64:
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                out = op(a(ctx), b(ctx))
            out[~np.isfinite(out)] = np.nan
            return out

        return arith
    if isinstance(node, _Compare):
        a, b, cmp = _compile(node.left), _compile(node.right), _CMP[node.op]

        def compare(ctx: _Ctx) -> Bools:
            x, y = a(ctx), b(ctx)
            return cmp(x, y) & ~np.isnan(x) & ~np.isnan(y)

        return compare
    if isinstance(node, _Logic):
        p, q = _compile(node.left), _compile(node.right)
        if node.op == "and":
            return lambda ctx: np.logical_and(p(ctx), q(ctx))
        return lambda ctx: np.logical_or(p(ctx), q(ctx))
    if isinstance(node, _Not):
        p = _compile(node.operand)
        return lambda ctx: np.logical_not(p(ctx))
    if isinstance(node, _IsNull):
        name = node.signal.name
        return lambda ctx: ctx.latest_index(name) < 0
    if isinstance(node, _Changed):
        name = node.signal.name

        def changed(ctx: _Ctx) -> Bools:
            t, v = ctx.series_of(name)
            idx = ctx.latest_index(name)
            out = np.zeros(len(idx), np.bool_)
            ok = idx >= 1
            i = idx[ok]
            out[ok] = (t[i] == ctx.times[ok]) & (v[i] != v[i - 1])
            return out

        return changed
    return _compile_window(node)


def _compile_window(node: _Window) -> _Fn:
    name, window_ns, func = node.signal.name, node.window_ns, node.func
    reduce = _REDUCE[func]

    def window(ctx: _Ctx) -> F64:
        t, v = ctx.series_of(name)
        hi = ctx.latest_index(name) + 1
        lo = np.searchsorted(t, ctx.times - window_ns, side="left").astype(np.int64)
        out = np.full(len(hi), np.nan)
        ok = hi > lo
        if not ok.any():
            return out
        # reduceat over the pairs [lo, hi): even positions hold the window reductions.
        bounds = np.empty(2 * int(ok.sum()), np.int64)
        bounds[0::2] = lo[ok]
        bounds[1::2] = hi[ok]
        padded = np.append(v, 0.0)
        reduced = reduce(padded, bounds)[0::2]
        if func == "avg":
            reduced = reduced / (hi[ok] - lo[ok])
        out[ok] = reduced
        return out

    return window


# --------------------------------------------------------------------------- public


@dataclass(frozen=True, slots=True, eq=False)
class Expression:
    """A compiled condition. Build with :func:`compile_expression`."""

    text: str
    _root: _Node = field(repr=False)
    _cost: ExprCost = field(repr=False)
    _fn: _Fn = field(repr=False)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Expression) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    @property
    def signals(self) -> frozenset[str]:
        """Signal names the expression reads."""
        return self._cost.signals

    def cost(self) -> ExprCost:
        return self._cost

    def evaluate(self, series: Mapping[str, Series], times: I64) -> Bools:
        """The condition at each of ``times``.

        ``series`` maps signal names to ``(t_ns, values)`` arrays sorted by time:
        the history the evaluation may look at (a missing name is a signal never
        seen). Evaluations are independent of each other: the value at ``t``
        depends only on samples with time ``<= t``.
        """
        result: Bools = self._fn(_Ctx(np.asarray(times, np.int64), series))
        return result


def compile_expression(text: str, limits: ExprLimits | None = None) -> Expression:
    """Parse, type-check and cost-check ``text``; raises :class:`ExpressionError`."""
    limits = limits or ExprLimits()
    root = _Parser(text).parse()
    cost = _cost(root, text, limits)
    return Expression(text, root, cost, _compile(root))
