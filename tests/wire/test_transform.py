"""Kuksa transforms: math parsed once into closures (never eval), mapping tables, unit
conversions; errors with their column."""

from __future__ import annotations

import math

import pytest

from edge.wire.transform import TransformError, compile_spec, linear, parse_math


@pytest.mark.parametrize(
    ("text", "x", "expected"),
    [
        ("floor(x+0.5)", 12.5, 13),
        ("floor((x*40)-100)", 2.5, 0),
        ("floor(abs(x/5))", -12.0, 2),
        ("x^2", 3, 9),  # py_expression_eval's power operator
        ("x**2 - 1", 3, 8),
        ("-x + PI", 1.0, math.pi - 1.0),
        ("max(x, 10) % 7", 3, 3),
        ("x >= 100", 120, True),
        ("round(x / 3.6, 2)", 100.0, 27.78),
    ],
)
def test_math_is_evaluated_like_python(text: str, x: float, expected: object) -> None:
    assert parse_math(text)(x) == expected


def test_floor_gives_an_integer_as_kuksa_evaluator_does() -> None:
    assert type(parse_math("floor(x+0.5)")(1.4)) is int


@pytest.mark.parametrize(
    ("text", "reason", "column"),
    [
        ("floor(x+", "was never closed", 6),
        ('__import__("os").system("true")', "unknown function", 1),
        ("open('/etc/passwd')", "unknown function 'open'", 1),
        ("x + y", "unknown name 'y'", 5),
        ("x.real", "Attribute is not allowed", 1),
        ("[x for x in (1,)]", "ListComp is not allowed", 1),
        ("'km' + x", "'km' is not a number", 1),
        ("lambda: 1", "Lambda is not allowed", 1),
        ("floor(x=1)", "takes positional arguments", 1),
        ("", "non-empty", None),
        ("1 < x < 2", "Compare is not allowed", 1),
    ],
)
def test_bad_math_is_refused_with_its_column(text: str, reason: str, column: int | None) -> None:
    with pytest.raises(TransformError, match=reason) as info:
        parse_math(text)
    assert info.value.column == column


def test_a_math_error_at_run_time_gives_no_value() -> None:
    transform = compile_spec({"math": "sqrt(x)"}, "float")
    assert transform.apply(4.0, None) == 2.0
    assert transform.apply(-1.0, None) is None  # Kuksa logs and sends nothing
    assert transform.apply(4, "SNA") is None  # a choice name is no number for math


def test_mapping_matches_choice_names_then_numbers_first_match_wins() -> None:
    spec = {
        "mapping": [
            {"from": "DI_GEAR_D", "to": 1},
            {"from": "DI_GEAR_D", "to": 99},
            {"from": 3, "to": -1},
        ]
    }
    transform = compile_spec(spec, "int8")
    assert transform.apply(4, "DI_GEAR_D") == 1
    assert transform.apply(3, None) == -1
    assert transform.apply(3, "DI_GEAR_N") is None  # a named value never equals a number
    assert transform.apply(7, None) is None
    assert transform.spec == {"mapping": [["DI_GEAR_D", 1], ["DI_GEAR_D", 99], [3, -1]]}
    assert compile_spec(transform.spec, "int8").apply(4, "DI_GEAR_D") == 1  # the wire form


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ({"mapping": []}, "non-empty list"),
        ({"mapping": [{"from": 1}]}, "exactly 'from' and 'to'"),
        ({"mapping": [{"from": [1], "to": 2}]}, "not a number or string"),
        ({"math": "x", "mapping": [{"from": 1, "to": 2}]}, "not both"),
        ({"scale": 2}, "unknown transform key"),
        ({"math": 3}, "non-empty string"),
    ],
)
def test_bad_transform_specs_are_refused(spec: dict[str, object], reason: str) -> None:
    with pytest.raises(TransformError, match=reason):
        compile_spec(spec, "float")


def test_no_transform_follows_the_datatype() -> None:
    assert compile_spec({}, "float").apply(12.5, None) == 12.5
    assert compile_spec({}, "uint8").apply(3, "DI_SPEED_KPH") == 3
    assert compile_spec({}, "string").apply(1, "DI_SPEED_KPH") == "DI_SPEED_KPH"
    assert compile_spec({}, "string").apply(2.5, None) == "2.5"
    assert compile_spec({}, "boolean").apply(1, None) is True
    assert compile_spec({}, "float").lossless


def test_linear_conversion_travels_as_exact_math() -> None:
    kmh_to_ms = linear(1 / 3.6, 0.0)
    assert kmh_to_ms.lossless
    assert kmh_to_ms.spec == {"math": f"x * {1 / 3.6!r}"}
    assert compile_spec(kmh_to_ms.spec, "float").apply(36.0, None) == 36.0 * (1 / 3.6)
    c_to_f = linear(1.8, 32.0)
    assert c_to_f.apply(100, None) == 212.0
