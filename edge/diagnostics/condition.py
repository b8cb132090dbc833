"""Gating conditions for diagnostic requests: a small expression on signals, such as
``ECM_EngineStatus.ECM_EngineSpeed > 400 and not BCM_Status.BCM_DoorOpen``.

Parsed once with Python's own parser (``ast`` in ``eval`` mode) against a whitelist of node
types, compiled into closures, evaluated against the latest values. A name is
``Message.Signal`` or a bare signal name; a signal not seen yet makes the condition false (no
request before we know the ignition is on).
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping

__all__ = ["Condition", "ConditionError"]

_Values = Mapping[str, float]
_Node = Callable[[_Values], float | bool | None]

_COMPARE: dict[type[ast.cmpop], Callable[[float, float], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}
_ARITH: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


class ConditionError(ValueError):
    """A condition that does not parse, with the column of the offending part."""


class Condition:
    """A compiled condition; ``names`` are the signals it reads."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.names: set[str] = set()
        try:
            tree = ast.parse(text, mode="eval")
        except SyntaxError as exc:
            raise ConditionError(f"syntax error at column {exc.offset}: {exc.msg}") from None
        self._root = self._compile(tree.body)

    def __call__(self, values: _Values) -> bool:
        """Whether the condition holds for ``values`` (``Message.Signal`` -> value)."""
        try:
            return bool(self._root(values))
        except (TypeError, ZeroDivisionError):  # a signal not seen yet, or x / 0
            return False

    def _compile(self, node: ast.expr) -> _Node:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float, bool):
            value = float(node.value)  # type: ignore[arg-type]  # int, float or bool
            return lambda _v: value
        if isinstance(node, ast.Name | ast.Attribute):
            name = _dotted(node)
            self.names.add(name)
            return lambda v: v.get(name)
        if isinstance(node, ast.BoolOp):
            parts = [self._compile(n) for n in node.values]
            if isinstance(node.op, ast.And):
                return lambda v: all(p(v) for p in parts)
            return lambda v: any(p(v) for p in parts)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not | ast.USub):
            inner = self._compile(node.operand)
            if isinstance(node.op, ast.Not):
                return lambda v: not inner(v)
            return lambda v: -inner(v)  # type: ignore[operator]
        if isinstance(node, ast.BinOp) and type(node.op) in _ARITH:
            op = _ARITH[type(node.op)]
            left, right = self._compile(node.left), self._compile(node.right)
            return lambda v: op(left(v), right(v))  # type: ignore[arg-type]
        if isinstance(node, ast.Compare) and all(type(o) in _COMPARE for o in node.ops):
            first = self._compile(node.left)
            rest = [
                (_COMPARE[type(o)], self._compile(c))
                for o, c in zip(node.ops, node.comparators, strict=True)
            ]

            def compare(v: _Values) -> bool:
                left = first(v)
                for op, right_node in rest:
                    right = right_node(v)
                    if left is None or right is None or not op(left, right):
                        return False
                    left = right
                return True

            return compare
        raise ConditionError(
            f"column {node.col_offset + 1}: {type(node).__name__} is not allowed "
            "(use signals, numbers, comparisons, and/or/not, + - * /)"
        )


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    raise ConditionError(f"column {node.col_offset + 1}: expected a signal name")
