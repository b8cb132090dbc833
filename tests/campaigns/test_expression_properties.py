"""Property tests of the campaign condition language (``edge/campaigns/expression.py``).

Generated conditions are compiled and evaluated against a reference evaluator written here: it
walks Python's ``ast`` of the same text and computes the window functions by brute force from
every ``(time, value)`` update fed so far (the compiled condition reads a ``ConditionState``
that keeps only the history its windows need). Malformed and forbidden texts must be refused
with an ``ExpressionError`` that names a column of the text, and nothing is ever ``eval``-ed.

Semantics the reference follows (docs/campaigns.md, "Conditions", and the module docstring):

* a signal without a value, a function without data, and an arithmetic error (division or
  ``%`` by zero, an overflow converting to float) are *unknown* (``None``); unknown propagates
  through arithmetic, ``abs`` and unary minus; logic is Kleene's: a comparison with unknown is
  unknown (a chain is false when one link is, else unknown when one is), ``not`` unknown is
  unknown, false decides an ``and`` and true an ``or`` whatever else is unknown; a condition
  holds when its value is known and truthy;
* the value a signal had at time ``T`` is the last update at or before ``T``; ``prev(s, N)`` is
  that value at ``now - N`` (unknown before the first update at or before then);
  ``min``/``max``/``avg(s, N)`` are over the value in force at ``now - N`` (if any) and every
  update after it up to ``now`` (``avg``: the plain mean of those values, not time-weighted;
  ``min`` and ``max`` are NaN when one of them is);
* ``changed(s)``: ``s`` was updated in the frame being evaluated with a value ``!=`` the one
  before (the first value counts as a change); never on a "time passes" evaluation;
* ``stale(M, N)``: ``M`` never arrived, or ``now - last arrival > N`` (strictly);
* a choice name ``'R'`` is the number the neighbouring signal's choice table gives it.
"""

from __future__ import annotations

import ast
import builtins
import keyword
import math
import operator
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from unittest.mock import patch

import pytest
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st

from edge.campaigns.expression import (
    MAX_LENGTH,
    ConditionState,
    Expression,
    ExpressionError,
    SignalRef,
    compile_expression,
)

Key = tuple[str, str, str]
MessageKey = tuple[str, str]
Value = bool | int | float | None
#: (time, message or None for "time passes", {signal: value})
Event = tuple[float, str | None, dict[str, float]]

CHOICES = {"P": 0.0, "R": 1.0, "N": 2.0, "D": 3.0, "Rückwärts": 1.0}
SIGNALS: dict[str, SignalRef] = {
    "speed": SignalRef("can0", "ESC", "speed"),
    "brake": SignalRef("can0", "ESC", "brake"),
    "gear": SignalRef("can0", "TCM", "gear", CHOICES),
    "temp": SignalRef("can1", "ECM", "temp"),
}
MESSAGES: dict[str, MessageKey] = {
    "ESC": ("can0", "ESC"),
    "TCM": ("can0", "TCM"),
    "ECM": ("can1", "ECM"),
}
BY_MESSAGE = {"ESC": ("speed", "brake"), "TCM": ("gear",), "ECM": ("temp",)}
NAMES = ["speed", "brake", "temp", "gear", "ESC.speed", "ESC.brake", "ECM.temp", "TCM.gear"]
GEAR_NAMES = ["gear", "TCM.gear"]
COMPARISONS = ["<", "<=", ">", ">=", "==", "!="]

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def resolve_signal(name: str) -> SignalRef:
    """``signal`` or ``Message.signal``; anything else is unknown."""
    message, _, signal = name.rpartition(".")
    ref = SIGNALS.get(signal)
    if ref is None or message not in ("", ref.message):
        raise LookupError(f"no signal {name!r}")
    return ref


def resolve_message(name: str) -> MessageKey:
    if name not in MESSAGES:
        raise LookupError(f"no message {name!r}")
    return MESSAGES[name]


def compile_(text: str) -> Expression:
    return compile_expression(text, resolve_signal, resolve_message)


# -- the reference ------------------------------------------------------------------------------


def dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def truth(value: Value) -> bool:
    return value is not None and bool(value)


def kleene(value: Value) -> bool | None:
    """True, False or unknown (None)."""
    return None if value is None else bool(value)


def same(a: Value, b: Value) -> bool:
    """Equal values (NaN equals NaN, unknown only equals unknown)."""
    if a is None or b is None:
        return a is b
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


_ARITHMETIC: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Mod: operator.mod,
}
_ORDER: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}


class Reference:
    """Every update ever fed, and a brute-force evaluator of condition trees over them."""

    def __init__(self) -> None:
        self.updates: dict[Key, list[tuple[float, float]]] = {}
        self.seen: dict[MessageKey, float] = {}
        self.changed: set[Key] = set()
        self.now = 0.0

    def feed(self, state: ConditionState, event: Event) -> None:
        """Apply ``event`` here and to ``state`` as the engine does (one frame, or time)."""
        t, message, values = event
        self.now = state.now = t
        self.changed = set()
        state.changed.clear()
        if message is None:
            return
        self.seen[MESSAGES[message]] = t
        state.seen[MESSAGES[message]] = t
        for name, value in values.items():
            key = SIGNALS[name].key
            history = self.updates.setdefault(key, [])
            if not history or history[-1][1] != value:
                self.changed.add(key)
            history.append((t, value))
            state.update(key, t, value)

    def at(self, key: Key, when: float) -> float | None:
        """The value ``key`` had at ``when``: its last update at or before then."""
        found = None
        for t, value in self.updates.get(key, []):
            if t <= when:
                found = value
        return found

    def held(self, key: Key, seconds: float) -> list[float]:
        """The values held during the last ``seconds``, oldest first."""
        start = self.now - seconds
        in_force = self.at(key, start)
        later = [v for t, v in self.updates.get(key, []) if start < t <= self.now]
        return ([] if in_force is None else [in_force]) + later

    def evaluate(self, text: str) -> Value:
        return self.value(ast.parse(text.strip(), mode="eval").body)

    def value(self, node: ast.expr) -> Value:
        if isinstance(node, ast.Constant):
            assert isinstance(node.value, int | float)
            return node.value
        name = dotted(node)
        if name is not None:
            updates = self.updates.get(resolve_signal(name).key)
            return updates[-1][1] if updates else None
        if isinstance(node, ast.UnaryOp):
            operand = self.value(node.operand)
            if isinstance(node.op, ast.Not):
                return None if operand is None else not operand
            if operand is None:
                return None
            return -operand if isinstance(node.op, ast.USub) else operand
        if isinstance(node, ast.BinOp):
            a, b = self.value(node.left), self.value(node.right)
            if a is None or b is None:
                return None
            if isinstance(node.op, ast.Div | ast.Mod) and b == 0:
                return None  # division by zero: unknown
            try:
                return _ARITHMETIC[type(node.op)](a, b)
            except OverflowError:  # a huge int that no float can hold: unknown
                return None
        if isinstance(node, ast.BoolOp):  # Kleene's logic of three values
            truths = [kleene(self.value(v)) for v in node.values]
            decides = not isinstance(node.op, ast.And)  # False decides "and", True "or"
            if decides in truths:
                return decides
            return None if None in truths else not decides
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            values = [self.operand(operands, i) for i in range(len(operands))]
            pairs = [
                None if a is None or b is None else _ORDER[type(op)](a, b)
                for op, a, b in zip(node.ops, values, values[1:], strict=False)
            ]
            if False in pairs:
                return False
            return None if None in pairs else True
        assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        return self.call(node.func.id, node.args)

    def operand(self, operands: list[ast.expr], i: int) -> Value:
        node = operands[i]
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            for j in (i - 1, i + 1):
                if 0 <= j < len(operands) and dotted(operands[j]) is not None:
                    name = dotted(operands[j])
                    assert name is not None
                    return resolve_signal(name).choices[node.value]
            raise AssertionError("the generator puts choice names beside a signal")
        return self.value(node)

    def call(self, function: str, args: list[ast.expr]) -> Value:
        if function == "abs":
            inner = self.value(args[0])
            return None if inner is None else abs(inner)
        name = dotted(args[0])
        assert name is not None
        if function == "stale":
            seconds = float(ast.literal_eval(args[1]))
            seen = self.seen.get(resolve_message(name))
            return seen is None or self.now - seen > seconds
        key = resolve_signal(name).key
        if function == "changed":
            return key in self.changed
        seconds = float(ast.literal_eval(args[1]))
        if function == "prev":
            return self.at(key, self.now - seconds)
        values = self.held(key, seconds)
        if not values:
            return None
        if any(v != v for v in values) and function != "avg":
            return math.nan  # min and max of values one of which is NaN
        if function == "min":
            return min(values)
        if function == "max":
            return max(values)
        assert function == "avg"
        return sum(values) / len(values)


@dataclass(frozen=True)
class Reads:
    inputs: frozenset[Key]
    messages: frozenset[MessageKey]
    windows: dict[Key, float]


def reads(text: str) -> Reads:
    """What a condition reads, found statically: every signal named, the messages stale()
    watches, and for each signal the longest window a function asks of it."""
    inputs: set[Key] = set()
    messages: set[MessageKey] = set()
    windows: dict[Key, float] = {}

    def visit(node: ast.AST) -> None:
        name = dotted(node)
        if name is not None:
            inputs.add(resolve_signal(name).key)
            return
        if isinstance(node, ast.Call):
            assert isinstance(node.func, ast.Name)
            function, args = node.func.id, node.args
            if function == "abs":
                visit(args[0])
            elif function == "stale":
                messages.add(resolve_message(str(dotted(args[0]))))
            else:
                key = resolve_signal(str(dotted(args[0]))).key
                inputs.add(key)
                if function != "changed":
                    seconds = float(ast.literal_eval(args[1]))
                    windows[key] = max(windows.get(key, 0.0), seconds)
            return
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(text.strip(), mode="eval"))
    return Reads(frozenset(inputs), frozenset(messages), windows)


def plain_threshold(text: str) -> Key | None:
    """The signal of a condition that is one signal compared with one number or choice name
    (``speed > 20``, ``-3 <= speed``, ``gear == 'R'``): the engine's inline threshold."""
    body = ast.parse(text.strip(), mode="eval").body
    if not isinstance(body, ast.Compare) or len(body.ops) != 1:
        return None

    def constant(node: ast.expr) -> bool:
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            node = node.operand
        return isinstance(node, ast.Constant) and not isinstance(node.value, bool)

    left, right = body.left, body.comparators[0]
    if dotted(left) is not None and constant(right):
        return resolve_signal(str(dotted(left))).key
    if dotted(right) is not None and constant(left):
        return resolve_signal(str(dotted(right))).key
    return None


@contextmanager
def never_evaluated() -> Iterator[None]:
    """Fail if anything runs ``eval``/``exec``, or ``compile`` for more than an AST."""
    real_compile = builtins.compile

    def spy_compile(
        source: Any, filename: Any, mode: str, flags: int = 0, *a: Any, **k: Any
    ) -> Any:
        assert flags & ast.PyCF_ONLY_AST, f"compile() to code: {source!r}"
        return real_compile(source, filename, mode, flags, *a, **k)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"eval/exec called with {args!r}")

    with (
        patch.object(builtins, "compile", spy_compile),
        patch.object(builtins, "eval", refuse),
        patch.object(builtins, "exec", refuse),
    ):
        yield


# -- generators ---------------------------------------------------------------------------------


def literal(number: float) -> str:
    """``number`` as the text of a condition (infinities as 1e999, which Python reads so)."""
    if isinstance(number, float) and math.isinf(number):
        return "-1e999" if number < 0 else "1e999"
    return repr(number)


@dataclass(frozen=True)
class Profile:
    name: str
    #: values fed to signals
    values: st.SearchStrategy[float]
    #: numbers written in conditions
    numbers: st.SearchStrategy[float]
    #: window functions generated (min/max/avg are left out where the answer is ill-defined)
    windows: tuple[str, ...]


#: integers and eighths whose sums are exact in any order (so avg has one right answer)
EXACT_VALUES = st.one_of(
    st.integers(-1000, 1000),
    st.integers(-8000, 8000).map(lambda k: k / 8),
    st.sampled_from([0, 0.0, -0.0, 2**44, -(2**44), 10**12, -2.5]),
)
EXTREMES = st.sampled_from(
    [1e300, -1e300, 1.7976931348623157e308, -1.7976931348623157e308, math.inf, -math.inf, 5e-324]
)
BIG = st.sampled_from([2**63, -(2**63), 10**20, 0.1, 1e-300])
PROFILES = [
    Profile("exact", EXACT_VALUES, EXACT_VALUES, ("min", "max", "avg", "prev")),
    # avg is left out: a plain float sum overflows (see test_avg_of_huge_values)
    Profile(
        "extreme",
        st.one_of(EXACT_VALUES, EXTREMES, BIG),
        st.one_of(EXACT_VALUES, EXTREMES, BIG, st.just(10**309)),
        ("min", "max", "prev"),
    ),
    # min/max are left out: with NaN their answer depends on the order of the values (see
    # test_min_max_nan_do_not_depend_on_the_order)
    Profile(
        "nan",
        st.one_of(EXACT_VALUES, EXTREMES, BIG, st.just(math.nan)),
        st.one_of(EXACT_VALUES, EXTREMES, BIG),
        ("prev",),
    ),
]
SECONDS = st.one_of(st.sampled_from([0.5, 1, 2, 2.5, 3, 5, 10, 600]), st.floats(0.001, 600)).map(
    literal
)
GEAR_VALUES = st.sampled_from([0, 1, 2, 3, 1.0, 7])
STEPS = st.sampled_from([0.0, 0.125, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 7.5])


def arithmetic(profile: Profile) -> st.SearchStrategy[str]:
    names = st.sampled_from(NAMES)
    calls = [
        st.builds(lambda n, s, f=function: f"{f}({n}, {s})", names, SECONDS)
        for function in profile.windows
    ]
    atoms = st.one_of(
        names,
        profile.numbers.map(literal),
        names.map(lambda n: f"changed({n})"),
        st.builds(lambda m, s: f"stale({m}, {s})", st.sampled_from(list(MESSAGES)), SECONDS),
        *calls,
    )

    def extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        return st.one_of(
            st.builds(lambda a, op, b: f"{a} {op} {b}", inner, st.sampled_from("+-*/%"), inner),
            st.builds(
                lambda a, op, z: f"{a} {op} {z}",
                inner,
                st.sampled_from("/%"),
                st.sampled_from(["0", "0.0", "(speed - speed)"]),
            ),
            inner.map(lambda a: f"-{a}"),
            inner.map(lambda a: f"+{a}"),
            inner.map(lambda a: f"({a})"),
            inner.map(lambda a: f"abs({a})"),
            st.builds(
                lambda a, op, b: f"({a} {op} {b})", inner, st.sampled_from(COMPARISONS), inner
            ),
            st.builds(
                lambda a, op, b: f"({a} {op} {b})", inner, st.sampled_from(["and", "or"]), inner
            ),
            inner.map(lambda a: f"(not {a})"),
        )

    return st.recursive(atoms, extend, max_leaves=6)


def conditions(profile: Profile) -> st.SearchStrategy[str]:
    arith = arithmetic(profile)
    cmp = st.sampled_from(COMPARISONS)
    gears = st.sampled_from(GEAR_NAMES)
    choices = st.sampled_from(["P", "R", "N", "D"])
    base = st.one_of(
        st.builds(lambda a, op, b: f"{a} {op} {b}", arith, cmp, arith),
        st.builds(lambda a, o, b, p, c: f"{a} {o} {b} {p} {c}", arith, cmp, arith, cmp, arith),
        st.builds(lambda g, op, c: f"{g} {op} '{c}'", gears, cmp, choices),
        st.builds(lambda c, op, g: f"'{c}' {op} {g}", choices, cmp, gears),
        st.builds(
            lambda c, o, g, p, d: f"'{c}' {o} {g} {p} '{d}'", choices, cmp, gears, cmp, choices
        ),
        st.builds(
            lambda n, op, x: f"{n} {op} {x}",
            st.sampled_from(NAMES),
            cmp,
            profile.numbers.map(literal),
        ),
        arith,
    )
    return st.recursive(
        base,
        lambda inner: st.one_of(
            inner.map(lambda b: f"not {b}"),
            st.builds(lambda a, b: f"{a} and {b}", inner, inner),
            st.builds(lambda a, b: f"{a} or {b}", inner, inner),
            inner.map(lambda b: f"({b})"),
        ),
        max_leaves=4,
    )


@st.composite
def events(
    draw: st.DrawFn,
    values: st.SearchStrategy[float],
    max_size: int = 25,
    steps: st.SearchStrategy[float] = STEPS,
) -> list[Event]:
    """Frames (a message with some of its signals' values) and "time passes" evaluations, in
    time order (several frames may share a time)."""
    out: list[Event] = []
    t = 0.0
    for _ in range(draw(st.integers(1, max_size))):
        t += draw(steps)
        message = draw(st.sampled_from([*BY_MESSAGE, None]))
        fed: dict[str, float] = {}
        if message is not None:
            for name in BY_MESSAGE[message]:
                if draw(st.integers(0, 3)):
                    fed[name] = draw(GEAR_VALUES if name == "gear" else values)
        out.append((t, message, fed))
    return out


CONDITIONS = {p.name: conditions(p) for p in PROFILES}
EVENTS = {p.name: events(p.values) for p in PROFILES}


# -- 1. compiled conditions against the reference ------------------------------------------------


def parts_of(text: str) -> list[str]:
    """The text of every function call, operation and comparison inside ``text``."""
    tree = ast.parse(text, mode="eval")
    compound = ast.Call | ast.BinOp | ast.UnaryOp | ast.Compare | ast.BoolOp
    segments = {
        ast.get_source_segment(text, node)
        for node in ast.walk(tree.body)
        if isinstance(node, compound) and node is not tree.body
    }
    return sorted(segment for segment in segments if segment is not None)


def check(expr: Expression, state: ConditionState, reference: Reference) -> None:
    want = reference.evaluate(expr.text)
    got = expr._root(state)
    assert same(got, want), f"value {got!r}, reference {want!r}"
    holds = truth(want)
    assert (expr.test(state) is True) is holds  # test(): True, or False or None (unknown)
    assert expr(state) is holds
    if expr.threshold is not None:
        key, fn, constant = expr.threshold
        value = state.values.get(key)
        assert (value is not None and fn(value, constant)) is holds


@pytest.mark.parametrize("profile", PROFILES, ids=[p.name for p in PROFILES])
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_conditions_agree_with_a_brute_force_reference(
    profile: Profile, data: st.DataObject
) -> None:
    text = data.draw(CONDITIONS[profile.name], label="condition")
    assume(len(text) <= MAX_LENGTH)
    with never_evaluated():
        expr = compile_(text)
    expected = reads(text)
    assert expr.inputs == expected.inputs
    assert expr.messages == expected.messages
    assert dict(expr.windows) == expected.windows
    key = plain_threshold(text)
    if key is not None:
        assert expr.threshold is not None and expr.threshold[0] == key

    # every compound part of the condition is checked on its own too (the state keeps the
    # history the whole condition needs, which covers each part's)
    parts = [compile_(part) for part in parts_of(text)]
    state = ConditionState(expr.windows)
    reference = Reference()
    check(expr, state, reference)  # nothing seen yet
    for event in data.draw(EVENTS[profile.name], label="events"):
        reference.feed(state, event)
        check(expr, state, reference)
        for part in parts:
            check(part, state, reference)


@FAST
@given(
    inner=arithmetic(PROFILES[1]),
    zero=st.sampled_from(["0", "0.0", "-0.0", "(speed - speed)", "(0 * brake)"]),
    op=st.sampled_from(["/", "%"]),
    evs=EVENTS["extreme"],
)
def test_division_by_zero_is_unknown(inner: str, zero: str, op: str, evs: list[Event]) -> None:
    """The compiler's promise: a division (or ``%``) by zero makes its sub-expression unknown,
    and a comparison with unknown is false whatever the other side, even ``!=`` or ``==``
    with itself; it is never an exception."""
    quotient = f"(({inner}) {op} {zero})"
    texts = [f"{quotient} {c} {quotient}" for c in COMPARISONS]
    texts += [quotient, f"abs({quotient}) >= 0", f"-{quotient} != 1", f"{quotient} + 1 > -1e999"]
    exprs = [compile_(text) for text in texts]
    state = ConditionState({})
    reference = Reference()
    for event in evs:
        reference.feed(state, event)
        denominator = reference.evaluate(zero)
        if denominator is None or (isinstance(denominator, float) and math.isnan(denominator)):
            continue  # speed unknown (or NaN - NaN): not a division by zero
        for expr in exprs:
            value = expr._root(state)
            assert value is None, expr.text  # unknown, and so is every comparison with it
            assert not expr.test(state)
            assert expr(state) is False


GRID = st.sampled_from(["0.5", "1", "1.5", "2", "3"])
TIME_CALLS = st.one_of(
    st.builds(
        lambda f, n, s: f"{f}({n}, {s})",
        st.sampled_from(["min", "max", "avg", "prev"]),
        st.sampled_from(NAMES),
        GRID,
    ),
    st.builds(lambda m, s: f"stale({m}, {s})", st.sampled_from(list(MESSAGES)), GRID),
    st.sampled_from(NAMES).map(lambda n: f"changed({n})"),
)


@FAST
@given(
    calls=st.lists(TIME_CALLS, min_size=1, max_size=6, unique=True),
    evs=events(EXACT_VALUES, max_size=30, steps=st.sampled_from([0.0, 0.5, 0.5, 1.0])),
)
def test_time_functions_at_the_edges_of_their_windows(calls: list[str], evs: list[Event]) -> None:
    """Frames on a half-second grid and windows of whole half-seconds: updates fall exactly
    on the start of windows (in force there, so kept by min/max/avg and given by prev) and
    arrivals exactly N seconds ago (not yet stale)."""
    exprs = [compile_(call) for call in calls]
    windows: dict[Key, float] = {}
    for expr in exprs:
        for key, seconds in expr.windows.items():
            windows[key] = max(windows.get(key, 0.0), seconds)
    state = ConditionState(windows)
    reference = Reference()
    for event in evs:
        reference.feed(state, event)
        for expr in exprs:
            check(expr, state, reference)


# -- 2. refusals ---------------------------------------------------------------------------------


def outcome(text: str) -> ExpressionError | None:
    """Compile ``text``: None when it compiles (and then evaluates to a bool on an empty and a
    fed state), else its ExpressionError, whose column must be within the text (1 past its
    end for "the text ended too soon"). Any other exception fails the test."""
    with never_evaluated():
        try:
            expr = compile_(text)
        except ExpressionError as exc:
            assert isinstance(exc.column, int)
            # in characters (see test_columns_count_characters_not_utf8_bytes)
            assert 1 <= exc.column <= len(text) + 1, (exc.column, len(text), exc.reason)
            assert exc.reason and f"column {exc.column}" in str(exc)
            return exc
        state = ConditionState(expr.windows)
        assert expr.test(state) in (True, False, None)
        reference = Reference()
        for event in [(1.0, "ESC", {"speed": 3.0, "brake": 0.0}), (2.0, "TCM", {"gear": 1})]:
            reference.feed(state, event)
            assert expr.test(state) in (True, False, None)
            assert expr(state) in (True, False)
    return None


EXPRESSION_ALPHABET = st.sampled_from(
    [
        *"speedbrakgtmESCTM.,:;()[]{}'\"0123456789+-*/%<>=!~&|^@ \t\n\\#_xyé",
        *["and ", "or ", "not ", "lambda ", " for ", " in ", " if ", " else ", "f'", ":=", "**"],
        *["min(", "prev(", "stale(", "changed(", "abs(", "__import__", "__class__", "1e999"],
    ]
)


@FAST
@given(
    text=st.one_of(st.text(max_size=60), st.lists(EXPRESSION_ALPHABET, max_size=25).map("".join))
)
def test_random_text_compiles_or_is_refused_with_a_column(text: str) -> None:
    outcome(text)


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A valid condition with a few characters or tokens inserted, deleted or replaced."""
    text = draw(CONDITIONS["exact"])
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 3)))
        piece = draw(st.one_of(st.just(""), EXPRESSION_ALPHABET, st.text(max_size=2)))
        text = text[:i] + piece + text[j:]
    return text


@FAST
@given(text=mutated())
def test_mutated_conditions_compile_or_are_refused_with_a_column(text: str) -> None:
    outcome(text)


#: forbidden constructs around a valid sub-expression ``{e}``
FORBIDDEN = [
    "({e}).real",
    "({e}).__class__.__bases__",
    "foo({e})",
    "__import__('os').system({e})",
    "open({e})",
    "eval('{e}')",
    "speed({e})",
    "ESC.speed({e})",
    "min({e}, 1)(2)",
    "min(({e}) + 1, 1)",
    "min(speed, ({e}) * 1)",
    "min(speed, 1, {e})",
    "changed(speed, {e})",
    "prev({e})",
    "abs()",
    "min(speed, seconds={e})",
    "abs(*[{e}])",
    "(lambda: {e})()",
    "(lambda x: x)({e})",
    "[x for x in [{e}]]",
    "any(x > 0 for x in [{e}])",
    "{{x for x in [{e}]}}",
    "{{x: 1 for x in [{e}]}}",
    "({e})[0]",
    "speed[{e}]",
    "({e})[1:2]",
    "f'{{{e}}}'",
    "f'{{{e}}}' == gear",
    "(x := {e})",
    "(speed := {e}) > 1",
    "({e}) if speed else 1",
    "({e}), 1",
    "[{e}]",
    "{{'a': {e}}}",
    "await ({e})",
    "b'x' == ({e})",
    "None == ({e})",
    "1j > ({e})",
    "... > ({e})",
    "'R' + ({e})",
    "speed == 'R' or ({e})",
    "'R' > ({e}) + 1",
    "changed(({e}) + 0)",
    "stale(speed, 1) or ({e})",
    "stale(ESC.speed, 1) or ({e})",
    "min(True, 1) or ({e})",
    "prev(speed, 0) or ({e})",
    "prev(speed, 600.5) or ({e})",
    "avg(speed, 1e999) or ({e})",
    "max(speed, -1) or ({e})",
    "can0.ESC.speed > ({e})",
    "TCM.speed > ({e})",
    "nope > ({e})",
]
#: forbidden operators: ``ast.walk`` meets the operator node, which has no position
OPERATORS = [
    "({e}) ** 2",
    "({e}) // 2",
    "({e}) << 1",
    "({e}) >> 1",
    "({e}) | 1",
    "({e}) ^ 1",
    "~({e})",
    "({e}) & 1",
    "({e}) @ speed",
    "({e}) in [1]",
    "({e}) not in [1]",
    "({e}) is None",
    "({e}) is not None",
]


@settings(max_examples=150, deadline=None)
@given(
    template=st.sampled_from(FORBIDDEN + OPERATORS),
    inner=arithmetic(PROFILES[0]),
    before=st.one_of(st.just(""), CONDITIONS["exact"]),
    joint=st.sampled_from([" and ", " or ", " and not "]),
)
def test_forbidden_constructs_are_refused_where_they_are(
    template: str, inner: str, before: str, joint: str
) -> None:
    """Attribute access on values, calls of other names or with other arguments, lambdas,
    comprehensions, subscripts, f-strings, walrus, other operators and constants: refused,
    with a column inside the forbidden part, never evaluated."""
    forbidden = template.format(e=inner)
    if before:
        forbidden = f"({forbidden})"  # so that it stays one operand of the and/or
        text = f"{before}{joint}{forbidden}"
    else:
        text = forbidden
    assume(len(text) <= MAX_LENGTH)
    error = outcome(text)
    assert error is not None, f"{text!r} compiled"
    if template not in OPERATORS:  # see test_forbidden_operators_are_refused_where_they_are
        start = text.index(forbidden) + 1
        assert start <= error.column <= start + len(forbidden), (error.column, start, error.reason)


IDENTIFIERS = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True).filter(
    lambda n: not keyword.iskeyword(n) and n not in SIGNALS and n not in MESSAGES
)


@FAST
@given(
    name=st.one_of(
        IDENTIFIERS,
        st.builds(lambda m, n: f"{m}.{n}", st.sampled_from(list(MESSAGES)), IDENTIFIERS),
        st.sampled_from(["TCM.speed", "ECM.gear", "ESC.temp", "can0.ESC.speed", "ESC.ESC.speed"]),
    ),
    where=st.sampled_from(
        [
            *["{n} > 1", "1 < {n}", "min({n}, 2) > 0", "changed({n})", "prev({n}, 1) != 0"],
            *["-{n}", "abs({n}) >= 0", "{n} == 'R'", "stale({n}, 1)", "0 < speed < {n}"],
        ]
    ),
    before=st.one_of(st.just(""), CONDITIONS["exact"]),
)
def test_unknown_names_are_refused_at_their_column(name: str, where: str, before: str) -> None:
    part = where.format(n=name)
    text = f"{before} or {part}" if before else part
    assume(len(text) <= MAX_LENGTH)
    error = outcome(text)
    assert error is not None, f"{text!r} compiled"
    offset = where.index("{n}")
    assert error.column == len(text) - len(part) + offset + 1, error.reason
    assert repr(name) in error.reason


@FAST
@given(
    bad=st.text(
        st.characters(min_codepoint=32, max_codepoint=126, exclude_characters="'\\"), max_size=6
    ).filter(lambda c: c not in CHOICES),
    where=st.sampled_from(["gear == '{c}'", "'{c}' != TCM.gear", "speed > '{c}'", "'{c}' < brake"]),
    before=st.one_of(st.just(""), CONDITIONS["exact"]),
)
def test_unknown_choice_names_are_refused_at_their_column(
    bad: str, where: str, before: str
) -> None:
    part = where.format(c=bad)
    text = f"{before} and {part}" if before else part
    assume(len(text) <= MAX_LENGTH)
    error = outcome(text)
    assert error is not None
    assert error.column == len(text) - len(part) + where.index("'") + 1, error.reason


@FAST
@given(
    seconds=st.one_of(st.floats(600.0001, 1e12), st.just(0.0), st.just(1e-400), st.just(1e999)),
    function=st.sampled_from(["min", "max", "avg", "prev", "stale"]),
)
def test_windows_out_of_range_are_refused_at_the_number(seconds: float, function: str) -> None:
    subject = "ESC" if function == "stale" else "speed"
    number = "1e-400" if seconds == 1e-400 else literal(seconds)
    text = f"speed > 1 and {function}({subject}, {number}) > 0"
    error = outcome(text)
    assert error is not None
    assert error.column == text.index(number) + 1
    assert "seconds must be in (0, 600]" in error.reason


SHAPES: list[Callable[[int], str]] = [
    lambda n: "-" * n + "speed > 0",
    lambda n: "+-" * (n // 2) + "1 < speed",
    lambda n: "not " * n + "speed",
    lambda n: "(" * n + "speed" + ")" * n + " > 1",
    lambda n: "abs(" * n + "speed" + ")" * n + " > 1",
    lambda n: " + ".join(["speed"] * n) + " > 1",
    lambda n: " < ".join(["speed"] * n),
    lambda n: " and ".join(["speed > 1"] * n),
    lambda n: "-(" * n + "speed" + ")" * n + " > 1",
]


@FAST
@given(shape=st.sampled_from(SHAPES), depth=st.integers(1, 300), value=st.integers(-3, 3))
def test_deep_nesting_is_compiled_or_refused(
    shape: Callable[[int], str], depth: int, value: int
) -> None:
    """Deep nesting (up to 300 levels): refused with a column (Python's parser stops at 200
    parentheses) or compiled, and then evaluated as the reference says."""
    text = shape(depth)
    assume(len(text) <= MAX_LENGTH)
    if outcome(text) is None:
        expr = compile_(text)
        state = ConditionState(expr.windows)
        reference = Reference()
        reference.feed(state, (1.0, "ESC", {"speed": value}))
        check(expr, state, reference)


# -- 3. the state's history ----------------------------------------------------------------------

KEY = SIGNALS["speed"].key


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(st.one_of(STEPS, st.floats(0, 5)), min_size=1, max_size=60),
    values=st.lists(st.integers(0, 1000), min_size=60, max_size=60),
    factor=st.one_of(
        st.sampled_from([0.01, 0.5, 0.999, 1.0, 1.001, 2.0, 50.0]), st.floats(0.001, 10)
    ),
    fractions=st.lists(st.floats(0.001, 1.0), min_size=1, max_size=3),
    later=st.lists(st.sampled_from([0.0, 0.001, 0.5, 1.0, 3.0, 100.0]), min_size=1, max_size=3),
)
def test_state_keeps_enough_history_for_every_window(
    steps: list[float],
    values: list[int],
    factor: float,
    fractions: list[float],
    later: list[float],
) -> None:
    """Fed in time order (equal times included), the history the state keeps for a window W
    answers window() and previous() for every N <= W exactly as the full list of updates does,
    at the time of each update and later; it keeps no more than one value older than W."""
    times = [sum(steps[: i + 1]) for i in range(len(steps))]
    span = times[-1] - times[0]
    window = min(600.0, max(0.001, span * factor))
    note(f"span {span}, window {window}")
    state = ConditionState({KEY: window})
    reference = Reference()
    for i, t in enumerate(times):
        before = state.values.get(KEY)
        state.changed.clear()
        assert state.update(KEY, t, values[i]) is (before != values[i])
        assert (KEY in state.changed) is (before != values[i])
        reference.updates.setdefault(KEY, []).append((t, values[i]))
        fed = reference.updates[KEY]
        kept = list(state.history[KEY])
        assert kept == fed[len(fed) - len(kept) :]  # the newest updates, in order
        assert len(kept) <= 1 + sum(1 for u, _ in fed if u > t - window)
        for delay in later:
            reference.now = state.now = t + delay
            for seconds in [window, *(window * f for f in fractions)]:
                assert sorted(state.window(KEY, seconds)) == sorted(reference.held(KEY, seconds))
                assert state.previous(KEY, seconds) == reference.at(KEY, reference.now - seconds)


# -- discrepancies (see the report) --------------------------------------------------------------


def test_columns_count_leading_whitespace() -> None:
    with pytest.raises(ExpressionError) as info:
        compile_("  nope > 1")
    assert info.value.column == 3


def test_columns_count_characters_not_utf8_bytes() -> None:
    text = "gear == 'Rückwärts' and spede > 1"
    with pytest.raises(ExpressionError) as info:
        compile_(text)
    assert info.value.column == text.index("spede") + 1  # 25; it says 27


def test_lone_surrogates_are_refused() -> None:
    with pytest.raises(ExpressionError):
        compile_("gear == '\ud800'")  # what json.loads('"gear == \'\\ud800\'"') gives


@pytest.mark.parametrize("template", ["({e}) ** 2", "~({e})", "({e}) in [1]"])
def test_forbidden_operators_are_refused_where_they_are(template: str) -> None:
    forbidden = template.format(e="brake")
    text = f"speed > 1 and {forbidden}"
    with pytest.raises(ExpressionError) as info:
        compile_(text)
    start = text.index(forbidden) + 1  # 15
    assert start <= info.value.column < start + len(forbidden), info.value


def test_very_deep_nesting_is_refused_not_a_recursion_error() -> None:
    """Refused with a column, or compiled and then evaluated: a RecursionError is neither."""
    text = "-" * 1990 + "speed > 0"  # 1999 characters, under MAX_LENGTH
    try:
        expr = compile_(text)
    except ExpressionError as exc:
        assert 1 <= exc.column <= len(text)
        return
    state = ConditionState(expr.windows)
    state.update(KEY, 1.0, 5.0)
    assert expr.test(state) is True


@pytest.mark.parametrize(
    ("text", "once_speed_is_5"),
    [
        ("not speed > 20", True),
        ("not (speed > 20 and brake > 1)", True),  # speed decides it
        ("not not speed > 20", False),
        ("(speed > 20) == (brake > 1)", False),  # brake unknown: unknown
        ("(speed > 20) + 1 > 0", True),
        ("not speed < 1 < 2", True),
        ("speed > 20 or not brake > 1", False),  # false or unknown: unknown
    ],
)
def test_nothing_fires_on_data_not_seen(text: str, once_speed_is_5: bool) -> None:
    """The docs: nothing fires on data not seen, negated or not (Kleene's logic): unknown
    until what is known decides it."""
    expr = compile_(text)
    state = ConditionState(expr.windows)
    assert not expr.test(state) and expr(state) is False
    state.update(KEY, 0.0, 5.0)
    assert expr(state) is once_speed_is_5
    assert (expr.test(state) is True) is once_speed_is_5


def test_min_max_nan_do_not_depend_on_the_order() -> None:
    """The same two values held in the window, {1.0, NaN}, in either order."""
    results = []
    for first, second in ((1.0, math.nan), (math.nan, 1.0)):
        expr = compile_("min(speed, 1) > 0")
        state = ConditionState(expr.windows)
        state.update(KEY, 0.0, first)
        state.update(KEY, 1.0, second)
        state.now = 1.5
        results.append(expr.test(state))
    assert results[0] == results[1]  # [False, True]


def test_avg_of_huge_values() -> None:
    expr = compile_("avg(speed, 5) == speed")
    state = ConditionState(expr.windows)
    for t in (0.0, 1.0):
        state.now = t
        state.update(KEY, t, 1e308)
    assert expr.test(state)  # avg is inf
