"""edge.diagnostics.condition: gating expressions parsed once with ``ast``, a whitelist."""

from __future__ import annotations

import pytest

from edge.diagnostics.condition import Condition, ConditionError


def test_comparisons_and_boolean_logic() -> None:
    condition = Condition("ECM.Speed > 400 and not BCM.Door or Gear == 3")
    assert condition.names == {"ECM.Speed", "BCM.Door", "Gear"}
    assert condition({"ECM.Speed": 800, "BCM.Door": 0})
    assert not condition({"ECM.Speed": 800, "BCM.Door": 1, "Gear": 2})
    assert condition({"Gear": 3})


def test_arithmetic_and_chained_comparison() -> None:
    condition = Condition("0 < Speed * 3.6 - 1 <= 100")
    assert condition({"Speed": 10})
    assert not condition({"Speed": 100})


def test_a_signal_not_seen_yet_makes_it_false() -> None:
    assert not Condition("Speed > 0")({})
    assert not Condition("-Speed < 0")({})
    assert not Condition("Speed / Zero > 1")({"Speed": 1, "Zero": 0})


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("Speed >", "syntax error at column"),
        ("__import__('os')", "column 1: Call is not allowed"),
        ("Speed > 'fast'", "column 9: Constant is not allowed"),
        ("Speed[0] > 1", "Subscript is not allowed"),
        ("Speed ** 2 > 1", "BinOp is not allowed"),
    ],
)
def test_anything_else_is_refused_with_its_position(text: str, error: str) -> None:
    with pytest.raises(ConditionError, match=error.replace("(", r"\(").replace(")", r"\)")):
        Condition(text)
