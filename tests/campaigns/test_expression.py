"""Campaign conditions: the whitelist, positions in errors, and the meaning of each function."""

from __future__ import annotations

import pytest

from edge.campaigns.expression import (
    ConditionState,
    Expression,
    ExpressionError,
    SignalRef,
    compile_expression,
)

SIGNALS = {
    "speed": SignalRef("can0", "ESC", "speed"),
    "brake": SignalRef("can0", "ESC", "brake"),
    "gear": SignalRef("can0", "TCM", "gear", {"P": 0.0, "R": 1.0, "D": 3.0}),
}


def resolve(name: str) -> SignalRef:
    bare = name.rpartition(".")[2]
    if bare not in SIGNALS:
        raise LookupError(f"no signal {name!r}")
    return SIGNALS[bare]


def resolve_message(name: str) -> tuple[str, str]:
    if name not in ("ESC", "TCM"):
        raise LookupError(f"no message {name!r}")
    return ("can0", name)


def compile_(text: str) -> Expression:
    return compile_expression(text, resolve, resolve_message)


def state_for(expression: Expression) -> ConditionState:
    return ConditionState(expression.windows)


def feed(state: ConditionState, t: float, **values: float) -> None:
    state.now = t
    state.changed.clear()
    for name, value in values.items():
        state.update(SIGNALS[name].key, t, value)


def test_arithmetic_comparisons_and_logic() -> None:
    expr = compile_("speed > 20 and not (brake - 2 * 3 <= 0) or speed == -1")
    state = state_for(expr)
    assert expr.inputs == {SIGNALS["speed"].key, SIGNALS["brake"].key}
    assert not expr(state)  # nothing seen yet: unknown, never true
    feed(state, 1.0, speed=25, brake=7)
    assert expr(state)
    feed(state, 2.0, brake=6)
    assert not expr(state)
    feed(state, 3.0, speed=-1)
    assert expr(state)
    assert compile_("1 < speed < 5")(state) is False
    feed(state, 4.0, speed=3)
    assert compile_("1 < speed < 5")(state)
    assert compile_("speed / 0 > 1")(state) is False  # an arithmetic error is unknown


def test_choice_names_by_string_and_qualified_names() -> None:
    expr = compile_("TCM.gear == 'R'")
    state = state_for(expr)
    feed(state, 1.0, gear=1)
    assert expr(state)
    feed(state, 2.0, gear=3)
    assert not expr(state)
    assert compile_("'D' == gear")(state)


def test_window_functions_prev_changed_and_stale() -> None:
    expr = compile_("brake - prev(brake, 0.5) > 40")
    state = state_for(expr)
    assert expr.windows == {SIGNALS["brake"].key: 0.5}
    feed(state, 0.0, brake=0)
    feed(state, 0.3, brake=30)
    assert not expr(state)  # no value 0.5 s before 0.3: unknown
    feed(state, 0.6, brake=50)
    assert expr(state)  # 50 - value at 0.1 (0) > 40
    feed(state, 1.2, brake=60)
    assert not expr(state)  # 60 - value at 0.7 (50)

    avg = compile_("avg(speed, 2) >= 15 and min(speed, 2) == 10 and max(speed, 2) == 20")
    state = state_for(avg)
    for t, v in ((0.0, 10), (1.0, 20), (2.5, 20)):
        feed(state, t, speed=v)
    assert avg(state)  # window [0.5, 2.5]: 10 in force at its start, then 20 (twice)
    feed(state, 3.5, speed=20)
    assert not avg(state)  # 10 left the window

    changed = compile_("changed(speed)")
    state = state_for(changed)
    feed(state, 0.0, speed=1)
    assert changed(state)
    feed(state, 0.1, speed=1)
    assert not changed(state)

    stale = compile_("stale(ESC, 1.5)")
    assert stale.messages == {("can0", "ESC")}
    state = state_for(stale)
    state.now = 10.0
    assert stale(state)  # never seen
    state.seen[("can0", "ESC")] = 9.0
    assert not stale(state)
    state.now = 10.6
    assert stale(state)


@pytest.mark.parametrize(
    ("text", "column", "reason"),
    [
        ("speed >", 8, "syntax error"),
        ("speed.__class__ > 1", 1, "no signal"),
        ("[speed][0] > 1", 1, "Subscript is not allowed"),
        ("(lambda: 1)() > 0", 2, "Lambda is not allowed"),
        ("__import__('os').system('x')", 1, "unknown function"),
        ("open('x')", 1, "unknown function"),
        ("speed ** 2 > 1", 1, "Pow is not allowed"),
        ("gear == 'X'", 9, "no choice 'X'"),
        ("speed == 'R'", 10, "no choice 'R'"),
        ("prev(speed, 0)", 13, "seconds must be in"),
        ("prev(speed, brake)", 13, "expected a number of seconds"),
        ("min(speed)", 1, "takes 2 argument"),
        ("stale(Nope, 1)", 7, "no message 'Nope'"),
        ("speed if brake else 1", 1, "IfExp is not allowed"),
        ("", 1, "empty condition"),
        ("speed > 1 and x.y > 2", 15, "no signal 'x.y'"),
    ],
)
def test_refused_with_the_position_and_the_reason(text: str, column: int, reason: str) -> None:
    with pytest.raises(ExpressionError) as info:
        compile_(text)
    assert reason in info.value.reason
    assert info.value.column == column, info.value


@pytest.mark.parametrize(
    "text",
    ["speed > 20", "20 < speed", "speed <= 20.5", "-3 >= speed", "gear == 'R'", "1 != speed"],
)
@pytest.mark.parametrize("value", [-5, 0, 1, 3, 20, 20.5, 21, float("nan"), float("inf")])
def test_threshold_holds_exactly_when_the_condition_does(text: str, value: float) -> None:
    """One signal against a number: the engine tests ``fn(value, constant)`` inline instead of
    evaluating the condition (the signal on the left, whichever side it was written on)."""
    expr = compile_(text)
    assert expr.threshold is not None
    key, fn, constant = expr.threshold
    assert key in expr.inputs
    state = state_for(expr)
    state.update(key, 1.0, value)
    assert fn(value, constant) is expr(state)


@pytest.mark.parametrize(
    "text", ["speed + 1 > 20", "speed > brake", "0 < speed < 5", "abs(speed) > 3", "not speed > 2"]
)
def test_anything_else_has_no_threshold(text: str) -> None:
    assert compile_(text).threshold is None
