"""Kuksa ``dbc2vss`` transforms: ``math`` expressions and value ``mapping`` tables, plus the
unit conversions VSS's units call for.

A ``math`` text is parsed once with Python's :mod:`ast` (``eval`` mode) and compiled into nested
closures; only whitelisted nodes get through (numbers, the variable ``x``, arithmetic,
comparisons, a few functions of :mod:`math`), so nothing is ever ``eval``-ed. The syntax is that
of Kuksa's evaluator (py_expression_eval) where the two meet: ``^`` is a power, as there.
Errors name the column: ``math 'floor(x+': invalid syntax at column 9``.

A transform's *spec* is what travels in the schema (docs/format.md): ``{}`` (the value as it
is), ``{"math": text}`` or ``{"mapping": [[from, to], ...]}``. Every reader rebuilds the same
function from it with :func:`compile_spec`.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MATH_FUNCTIONS",
    "Transform",
    "TransformError",
    "compile_spec",
    "linear",
    "parse_math",
]

Number = int | float
Value = int | float | str | bool

#: Functions a ``math`` transform may call (Kuksa's evaluator knows these names too).
MATH_FUNCTIONS: Mapping[str, Callable[..., Any]] = {
    "abs": abs,
    "ceil": math.ceil,
    "floor": math.floor,
    "round": round,
    "sqrt": math.sqrt,
    "exp": math.exp,
    "log": math.log,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "asin": math.asin,
    "acos": math.acos,
    "atan": math.atan,
    "atan2": math.atan2,
    "min": min,
    "max": max,
    "pow": pow,
}
_CONSTANTS: Mapping[str, float] = {"PI": math.pi, "E": math.e}
_BINARY: Mapping[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.BitXor: operator.pow,  # py_expression_eval's power operator
}
_UNARY: Mapping[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}
_COMPARE: Mapping[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}

_Fn = Callable[[Number], Any]


class TransformError(ValueError):
    """A transform that cannot be used: what is wrong, and where (1-based column)."""

    def __init__(self, reason: str, column: int | None = None) -> None:
        where = f" at column {column}" if column is not None else ""
        super().__init__(f"{reason}{where}")
        self.reason = reason
        self.column = column


def parse_math(text: str) -> _Fn:
    """Compile a Kuksa ``math`` expression of ``x`` into a function. Raises TransformError."""
    if not isinstance(text, str) or not text.strip():
        raise TransformError("math must be a non-empty string")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise TransformError(f"math {text!r}: {exc.msg}", exc.offset) from None
    try:
        return _compile(tree.body, text)
    except RecursionError:
        raise TransformError(f"math {text!r}: nested too deeply") from None


def _compile(node: ast.expr, text: str) -> _Fn:
    column = getattr(node, "col_offset", 0) + 1
    if isinstance(node, ast.Constant):
        value = node.value
        if type(value) not in (int, float):
            raise TransformError(f"math {text!r}: {value!r} is not a number", column)
        return lambda x: value
    if isinstance(node, ast.Name):
        if node.id == "x":
            return lambda x: x
        if node.id in _CONSTANTS:
            constant = _CONSTANTS[node.id]
            return lambda x: constant
        raise TransformError(f"math {text!r}: unknown name {node.id!r} (only x)", column)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        op = _BINARY[type(node.op)]
        left, right = _compile(node.left, text), _compile(node.right, text)
        return lambda x: op(left(x), right(x))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        unary = _UNARY[type(node.op)]
        operand = _compile(node.operand, text)
        return lambda x: unary(operand(x))
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _COMPARE:
        compare = _COMPARE[type(node.ops[0])]
        left, right = _compile(node.left, text), _compile(node.comparators[0], text)
        return lambda x: compare(left(x), right(x))
    if isinstance(node, ast.Call):
        func = node.func
        if not isinstance(func, ast.Name) or func.id not in MATH_FUNCTIONS:
            name = func.id if isinstance(func, ast.Name) else ast.unparse(func)
            known = ", ".join(sorted(MATH_FUNCTIONS))
            raise TransformError(f"math {text!r}: unknown function {name!r} ({known})", column)
        if node.keywords or not node.args:
            raise TransformError(f"math {text!r}: {func.id}() takes positional arguments", column)
        function = MATH_FUNCTIONS[func.id]
        args = [_compile(a, text) for a in node.args]
        if len(args) == 1:
            (only,) = args
            return lambda x: function(only(x))
        return lambda x: function(*(a(x) for a in args))
    what = type(node).__name__
    raise TransformError(f"math {text!r}: {what} is not allowed", column)


@dataclass(frozen=True, slots=True)
class Transform:
    """A DBC value to a VSS value: ``apply(physical, choice)`` gives the VSS value, or None when
    the transform defines none for it (an unmapped value, a math error: Kuksa sends nothing
    then either). ``spec`` is its wire form; ``lossless`` says the DBC value can be recovered
    from the VSS value (no transform, or a linear unit conversion)."""

    spec: Mapping[str, Any]
    apply: Callable[[Number, str | None], Value | None]
    lossless: bool


def compile_spec(spec: Mapping[str, Any], datatype: str) -> Transform:
    """The transform a spec describes, producing VSS values of ``datatype`` (a VSS datatype name:
    without a math or mapping, numbers pass as they are, a string target takes the value's choice
    name, a boolean target its truth). Raises TransformError."""
    if not isinstance(spec, Mapping):
        raise TransformError("transform must be a map with 'math' or 'mapping'")
    keys = set(spec)
    if keys - {"math", "mapping"}:
        extra = ", ".join(sorted(str(k) for k in keys - {"math", "mapping"}))
        raise TransformError(f"unknown transform key(s): {extra} (math or mapping)")
    if len(keys) > 1:
        raise TransformError("a transform has math or mapping, not both")
    if "math" in spec:
        return _math(spec["math"])
    if "mapping" in spec:
        return _mapping(spec["mapping"])
    return Transform({}, _identity(datatype), True)


def _math(text: Any) -> Transform:
    function = parse_math(text)

    def apply(value: Number, choice: str | None) -> Value | None:
        if choice is not None:  # Kuksa hands math a choice name, which fails: nothing is sent
            return None
        try:
            result: Value = function(value)
        except (ArithmeticError, ValueError, TypeError):
            return None
        return result

    return Transform({"math": text}, apply, False)


def _mapping(items: Any) -> Transform:
    if not isinstance(items, Sequence) or isinstance(items, str) or not items:
        raise TransformError("mapping must be a non-empty list of {from, to} items")
    by_name: dict[str, Value] = {}
    by_number: dict[Number, Value] = {}
    pairs: list[list[Value]] = []
    for i, item in enumerate(items):
        if isinstance(item, Mapping):
            if set(item) != {"from", "to"}:
                raise TransformError(f"mapping[{i}] must have exactly 'from' and 'to'")
            source, target = item["from"], item["to"]
        elif isinstance(item, Sequence) and not isinstance(item, str) and len(item) == 2:
            source, target = item  # the wire form
        else:
            raise TransformError(f"mapping[{i}] must be a {{from, to}} map")
        for what, value in (("from", source), ("to", target)):
            if type(value) not in (int, float, str, bool):
                raise TransformError(f"mapping[{i}].{what} {value!r} is not a number or string")
        # The first match wins, as in Kuksa: later duplicates never apply.
        if isinstance(source, str):
            by_name.setdefault(source, target)
        else:
            by_number.setdefault(source, target)
        pairs.append([source, target])

    def apply(value: Number, choice: str | None) -> Value | None:
        # cantools gives a value with a choice as its name, which equals only a string.
        if choice is not None:
            return by_name.get(choice)
        return by_number.get(value)

    return Transform({"mapping": pairs}, apply, False)


def _identity(datatype: str) -> Callable[[Number, str | None], Value | None]:
    if datatype == "string":
        return lambda value, choice: choice if choice is not None else str(value)
    if datatype == "boolean":
        return lambda value, choice: bool(value)
    return lambda value, choice: value


def linear(factor: float, offset: float) -> Transform:
    """A unit conversion ``x * factor + offset`` as a math transform (its text carries each
    number's shortest exact repr, so every reader computes the same floats)."""
    text = f"x * {factor!r}" if offset == 0 else f"x * {factor!r} + {offset!r}"
    converted = _math(text)
    return Transform(converted.spec, converted.apply, True)
