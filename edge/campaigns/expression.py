"""Campaign conditions: a small expression language over signals, parsed once, never ``eval``-ed.

A condition comes from the cloud, so it is parsed with Python's :mod:`ast` in ``eval`` mode and
only a whitelist of node types is accepted (anything else -- attribute access on values,
subscripts, lambdas, comprehensions, calls of unknown functions -- is refused with its position).
The tree is then compiled into small closures; evaluating a condition calls them, nothing more.

Vocabulary (FleetWise's and Kuksa's, which fleet engineers know)::

    ESC_VehicleSpeed > 20 and (ESC_BrakePressure - prev(ESC_BrakePressure, 0.5)) > 40
    TCM_GearLever == 'R'                    # a choice name, by string
    ESC_1.ESC_VehicleSpeed                  # Message.Signal, or a bare signal name
    Vehicle.Speed                           # a VSS path the configuration maps (edge/vss/)
    min(x, 2) / max(x, 2) / avg(x, 2)       # over the last 2 s of values (frame time)
    prev(x, 0.5)                            # the value x had 0.5 s ago
    changed(x)                              # x changed with the frame being evaluated
    stale(ESC_1, 1.5)                       # message ESC_1 has not arrived for 1.5 s
    abs(x), + - * / %, comparisons (chained), and / or / not, True / False

A signal without a value yet (or an arithmetic error such as a division by zero) makes its
sub-expression *unknown*, and logic is three-valued (Kleene's, as SQL's ``NULL``): a comparison
with unknown is unknown, ``not`` unknown is unknown, ``unknown and false`` is false, ``unknown or
true`` is true. A condition holds only when it is true, so it never fires on data it has not seen,
negated or not.
"""

from __future__ import annotations

import ast
import math
import operator
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edge.errors import TelemetryError

__all__ = [
    "ConditionState",
    "Expression",
    "ExpressionError",
    "SignalRef",
    "compile_expression",
]

#: Longest window a function may ask for (seconds): history costs memory.
MAX_WINDOW = 600.0
#: Longest expression text accepted.
MAX_LENGTH = 2000
#: Deepest nesting of the expression's tree accepted (compiling and evaluating recurse once per
#: level; a condition written by a person is a few levels deep).
MAX_DEPTH = 100


class ExpressionError(TelemetryError):
    """A condition that cannot be compiled: ``column`` is 1-based in the expression text."""

    def __init__(self, reason: str, column: int) -> None:
        super().__init__(f"column {column}: {reason}")
        self.reason = reason
        self.column = column


@dataclass(frozen=True, slots=True)
class SignalRef:
    """A signal a condition reads: its message, its name and its choices (name -> value)."""

    bus: str
    message: str
    signal: str
    choices: Mapping[str, float] = field(default_factory=dict)
    #: a VSS path's transform of the signal's physical value (None: the value itself)
    convert: Callable[[float], Any] | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        """The identity of the signal in :class:`ConditionState`."""
        return (self.bus, self.message, self.signal)


Key = tuple[str, str, str]
#: ``resolve(name)`` -> the signal a name means; raises LookupError with the reason.
SignalResolver = Callable[[str], SignalRef]
#: ``resolve(name)`` -> (bus, message) of a message name; raises LookupError with the reason.
MessageResolver = Callable[[str], tuple[str, str]]


class ConditionState:
    """What conditions read: latest values, their recent history and when messages arrived.

    ``windows`` says how many seconds of history each signal must keep (from the compiled
    expressions); others keep only their latest value. ``changed`` holds the signals whose value
    changed with the frame being evaluated; ``now`` is that frame's time.
    """

    def __init__(self, windows: Mapping[Key, float]) -> None:
        self.values: dict[Key, float] = {}
        self.windows = dict(windows)
        self.history: dict[Key, deque[tuple[float, float]]] = {k: deque() for k in windows}
        self.seen: dict[tuple[str, str], float] = {}
        self.changed: set[Key] = set()
        self.now = 0.0

    def update(self, key: Key, t: float, value: float) -> bool:
        """Record ``value`` of ``key`` at ``t``; True when it differs from the previous one."""
        previous = self.values.get(key)
        self.values[key] = value
        history = self.history.get(key)
        if history is not None:
            history.append((t, value))
            # Keep one value older than the window: prev() and the window's first value need it.
            horizon = t - self.windows[key]
            while len(history) > 1 and history[1][0] <= horizon:
                history.popleft()
        if previous != value:
            self.changed.add(key)
            return True
        return False

    def window(self, key: Key, seconds: float) -> list[float]:
        """The values of ``key`` that held during the last ``seconds`` (the one in force at the
        start of the window included)."""
        history = self.history.get(key)
        if not history:
            return []
        start = self.now - seconds
        out: list[float] = []
        in_force = None  # the value that held when the window started
        for t, value in history:
            if t <= start:
                in_force = value
            else:
                out.append(value)
        if in_force is not None:
            out.append(in_force)
        return out

    def previous(self, key: Key, seconds: float) -> float | None:
        """The value ``key`` had ``seconds`` ago (None if it had none)."""
        history = self.history.get(key)
        if not history:
            return None
        start = self.now - seconds
        found = None
        for t, value in history:
            if t > start:
                break
            found = value
        return found


Node = Callable[[ConditionState], Any]


@dataclass(frozen=True, slots=True)
class Expression:
    """A compiled condition. ``inputs`` are the signals it reads (evaluate when one changes),
    ``messages`` the messages ``stale()`` watches (evaluate as time passes), ``windows`` the
    history each signal needs (seconds)."""

    text: str
    inputs: frozenset[Key]
    messages: frozenset[tuple[str, str]]
    windows: Mapping[Key, float]
    _root: Node
    #: ``test(state)``: True when the condition holds; False or None (unknown) when it does not.
    #: :meth:`__call__` in one call less (the root itself when it gives a truth value: a
    #: comparison, and/or/not); ``test(state) is True`` is what :meth:`__call__` says.
    test: Callable[[ConditionState], bool | None]
    #: ``(key, fn, constant)`` when the condition is one signal compared with a number: it holds
    #: exactly when the signal's value ``v`` is known and ``fn(v, constant)`` (the engine tests
    #: that inline); None otherwise
    threshold: tuple[Key, Callable[[Any, Any], bool], Any] | None = None

    def __call__(self, state: ConditionState) -> bool:
        """Whether the condition holds in ``state`` (true: not false, not unknown)."""
        return _truth(self._root(state))


_ALLOWED = (
    ast.Expression,
    ast.BoolOp,
    ast.UnaryOp,
    ast.BinOp,
    ast.Compare,
    ast.Name,
    ast.Attribute,
    ast.Constant,
    ast.Call,
    ast.Load,
    ast.And,
    ast.Or,
    ast.Not,
    ast.USub,
    ast.UAdd,
    ast.Add,
    ast.Sub,
    ast.Mult,
    ast.Div,
    ast.Mod,
    ast.Eq,
    ast.NotEq,
    ast.Lt,
    ast.LtE,
    ast.Gt,
    ast.GtE,
)

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Mod: operator.mod,
}
_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}
#: ``fn(a, b) == _REFLECTED[fn](b, a)``
_REFLECTED: dict[Callable[[Any, Any], bool], Callable[[Any, Any], bool]] = {
    operator.eq: operator.eq,
    operator.ne: operator.ne,
    operator.lt: operator.gt,
    operator.le: operator.ge,
    operator.gt: operator.lt,
    operator.ge: operator.le,
}
_FUNCTIONS = ("min", "max", "avg", "prev", "changed", "stale", "abs")


def _truth(value: Any) -> bool:
    """Whether a value holds: known and true."""
    return value is not None and bool(value)


def _kleene(value: Any) -> bool | None:
    """A value as a truth value of three: None (unknown), True or False."""
    return None if value is None else bool(value)


def compile_expression(
    text: str, resolve_signal: SignalResolver, resolve_message: MessageResolver
) -> Expression:
    """Parse and compile ``text``; raises :class:`ExpressionError` (with the column) for
    anything that is not a valid condition over known signals."""
    if not isinstance(text, str) or not text.strip():
        raise ExpressionError("empty condition", 1)
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"longer than {MAX_LENGTH} characters", MAX_LENGTH)
    for i, char in enumerate(text):
        if "\ud800" <= char <= "\udfff":  # a lone surrogate (JSON lets one through)
            raise ExpressionError(f"not a character: {char!r}", i + 1)
    # Parsed without its leading blanks ("unexpected indent"); columns count them back in.
    source = text.lstrip()
    columns = _Columns(text, len(text) - len(source))
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        line, offset = exc.lineno or 1, exc.offset or len(source.splitlines()[-1]) + 1
        raise ExpressionError(
            f"syntax error: {exc.msg}", columns.of_characters(line, offset - 1)
        ) from None
    except (RecursionError, MemoryError):  # nesting past what the parser itself takes
        raise ExpressionError(f"nested deeper than {MAX_DEPTH} levels", 1) from None
    try:
        _check_tree(tree)
        compiler = _Compiler(resolve_signal, resolve_message)
        root = compiler.node(tree.body)
    except _Refused as exc:
        raise ExpressionError(exc.reason, columns.of(exc.node)) from None
    body = tree.body
    boolean = isinstance(body, ast.Compare | ast.BoolOp) or (
        isinstance(body, ast.UnaryOp) and isinstance(body.op, ast.Not)
    )

    def test(state: ConditionState) -> bool | None:
        return _truth(root(state))

    return Expression(
        text,
        frozenset(compiler.inputs),
        frozenset(compiler.messages),
        dict(compiler.windows),
        root,
        root if boolean else test,
        compiler.thresholds.get(root),
    )


class _Refused(Exception):
    """Why the compiler refuses ``node``: an :class:`ExpressionError` once its column is known."""

    def __init__(self, reason: str, node: ast.AST) -> None:
        super().__init__(reason)
        self.reason = reason
        self.node = node


class _Columns:
    """1-based character columns in the whole expression text, from the parser's positions
    (a line number, and an offset in the UTF-8 bytes of that line of the text parsed)."""

    def __init__(self, text: str, skipped: int) -> None:
        self._skipped = skipped  # leading blanks not parsed
        self._lines = text[skipped:].split("\n")

    def of_characters(self, line: int, characters: int) -> int:
        """The column of the ``characters``-th character (0-based) of line ``line``."""
        line = min(max(line, 1), len(self._lines))
        before = sum(len(text) + 1 for text in self._lines[: line - 1])
        return self._skipped + before + max(characters, 0) + 1

    def of(self, node: ast.AST) -> int:
        """The column where ``node`` starts."""
        line = int(getattr(node, "lineno", 1))
        offset = int(getattr(node, "col_offset", 0))
        text = self._lines[min(max(line, 1), len(self._lines)) - 1]
        characters = len(text.encode()[:offset].decode(errors="ignore"))
        return self.of_characters(line, characters)


def _check_tree(tree: ast.Expression) -> None:
    """Refuse node types outside the whitelist (an operator, which has no position, at its
    expression's) and trees deeper than :data:`MAX_DEPTH`, without recursing."""
    stack: list[tuple[ast.AST, ast.AST, int]] = [(tree.body, tree.body, 1)]
    while stack:
        node, where, depth = stack.pop()
        if hasattr(node, "col_offset"):
            where = node
        if not isinstance(node, _ALLOWED):
            raise _Refused(f"{type(node).__name__} is not allowed", where)
        if depth > MAX_DEPTH:
            raise _Refused(f"nested deeper than {MAX_DEPTH} levels", where)
        stack.extend((child, where, depth + 1) for child in ast.iter_child_nodes(node))


def _dotted(node: ast.AST) -> str | None:
    """``a.b.c`` as a string, or None when the node is not a dotted name."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


class _Compiler:
    """Turns a whitelisted tree into closures, collecting what the expression reads."""

    def __init__(self, resolve_signal: SignalResolver, resolve_message: MessageResolver) -> None:
        self._signal = resolve_signal
        self._message = resolve_message
        self.inputs: set[Key] = set()
        self.messages: set[tuple[str, str]] = set()
        self.windows: dict[Key, float] = {}
        #: nodes that read a signal's latest value as it is, or a constant: ("signal", key) or
        #: ("constant", value), for comparisons that need no node calls (_compare_two)
        self.simple: dict[Node, tuple[str, Any]] = {}
        #: comparisons of one signal with a number: (key, fn, constant), the signal on the left
        self.thresholds: dict[Node, tuple[Key, Callable[[Any, Any], bool], Any]] = {}

    def _constant(self, value: Any) -> Node:
        def constant(_state: ConditionState) -> Any:
            return value

        self.simple[constant] = ("constant", value)
        return constant

    def ref(self, node: ast.AST) -> SignalRef:
        name = _dotted(node)
        if name is None:
            raise _Refused("expected a signal name", node)
        if name in ("True", "False"):
            raise _Refused(f"{name} is not a signal", node)
        try:
            ref = self._signal(name)
        except LookupError as exc:
            raise _Refused(str(exc.args[0] if exc.args else exc), node) from None
        self.inputs.add(ref.key)
        return ref

    def node(self, node: ast.AST) -> Node:
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, str):
                raise _Refused("a string only compares with a signal that has choices", node)
            if not isinstance(value, int | float):
                raise _Refused(f"constant {value!r} is not a number", node)
            return self._constant(value)
        if isinstance(node, ast.Name | ast.Attribute):
            ref = self.ref(node)
            key = ref.key

            def signal(state: ConditionState) -> Any:
                return state.values.get(key)

            if ref.convert is None:
                self.simple[signal] = ("signal", key)
            return _converted(signal, ref.convert)
        if isinstance(node, ast.BoolOp):
            parts = [self.node(v) for v in node.values]
            # Kleene: false decides an ``and`` (true an ``or``) whatever else is unknown
            decides = not isinstance(node.op, ast.And)

            def boolean(state: ConditionState) -> bool | None:
                result: bool | None = not decides
                for part in parts:
                    value = _kleene(part(state))
                    if value is decides:
                        return decides
                    if value is None:
                        result = None
                return result

            return boolean
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
                value = node.operand.value  # a negative number: a constant, not a negation
                if isinstance(value, int | float) and not isinstance(value, bool):
                    return self._constant(-value)
            operand = self.node(node.operand)
            if isinstance(node.op, ast.Not):

                def negation(state: ConditionState) -> bool | None:
                    value = _kleene(operand(state))
                    return None if value is None else not value

                return negation
            if isinstance(node.op, ast.USub):
                return lambda state: _neg(operand(state))
            return operand
        if isinstance(node, ast.BinOp):
            op = _BINARY.get(type(node.op))
            if op is None:
                raise _Refused(f"{type(node.op).__name__} is not allowed", node)
            left, right = self.node(node.left), self.node(node.right)

            def binary(state: ConditionState) -> Any:
                a, b = left(state), right(state)
                if a is None or b is None:
                    return None
                try:
                    return op(a, b)
                except (ZeroDivisionError, OverflowError):
                    return None

            return binary
        if isinstance(node, ast.Compare):
            return self.compare(node)
        if isinstance(node, ast.Call):
            return self.call(node)
        raise _Refused(f"{type(node).__name__} is not allowed", node)

    def compare(self, node: ast.Compare) -> Node:
        operands = [node.left, *node.comparators]
        compiled: list[Node] = []
        for i, operand in enumerate(operands):
            if isinstance(operand, ast.Constant) and isinstance(operand.value, str):
                compiled.append(self.choice(operand, operands, i))
            else:
                compiled.append(self.node(operand))
        ops = []
        for op in node.ops:
            fn = _COMPARE.get(type(op))
            if fn is None:
                raise _Refused(f"{type(op).__name__} is not allowed", node)
            ops.append(fn)

        if len(ops) == 1:  # the common case, in one call: a signal against a constant
            root = _compare_two(ops[0], compiled[0], compiled[1], self.simple)
            kinds = [self.simple.get(n, ("", None)) for n in compiled]
            if [k for k, _ in kinds] == ["signal", "constant"]:
                self.thresholds[root] = (kinds[0][1], ops[0], kinds[1][1])
            elif [k for k, _ in kinds] == ["constant", "signal"]:  # c < s: s > c
                self.thresholds[root] = (kinds[1][1], _REFLECTED[ops[0]], kinds[0][1])
            return root

        def compare(state: ConditionState) -> bool | None:
            # a < b < c is (a < b) and (b < c): false decides it, else unknown spreads
            result: bool | None = True
            left = compiled[0](state)
            for fn, right_node in zip(ops, compiled[1:], strict=True):
                right = right_node(state)
                if left is None or right is None:
                    result = None
                elif not fn(left, right):
                    return False
                left = right
            return result

        return compare

    def choice(self, constant: ast.Constant, operands: list[ast.expr], i: int) -> Node:
        """A choice name compared with a neighbouring signal: its value, checked now."""
        name = str(constant.value)
        neighbours = [operands[j] for j in (i - 1, i + 1) if 0 <= j < len(operands)]
        for other in neighbours:
            if _dotted(other) is not None:
                ref = self.ref(other)
                if name not in ref.choices:
                    known = ", ".join(sorted(ref.choices)) or "none"
                    raise _Refused(
                        f"{ref.message}.{ref.signal} has no choice {name!r} (choices: {known})",
                        constant,
                    )
                return self._constant(ref.choices[name])
        raise _Refused("a string only compares with a signal that has choices", constant)

    def call(self, node: ast.Call) -> Node:
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if name not in _FUNCTIONS:
            raise _Refused(f"unknown function (known: {', '.join(_FUNCTIONS)})", node)
        if node.keywords:
            raise _Refused(f"{name}() takes no keyword arguments", node)
        args = node.args
        expected = {"changed": 1, "abs": 1}.get(name, 2)
        if len(args) != expected:
            raise _Refused(f"{name}() takes {expected} argument(s)", node)
        if name == "abs":
            inner = self.node(args[0])
            return lambda state: _abs(inner(state))
        if name == "stale":
            return self.stale(args)
        ref = self.ref(args[0])
        key = ref.key
        if name == "changed":
            return lambda state: key in state.changed
        seconds = self.seconds(args[1])
        self.windows[key] = max(self.windows.get(key, 0.0), seconds)
        if name == "prev":
            return _converted(lambda state: state.previous(key, seconds), ref.convert)
        reducers: dict[str, Callable[[list[float]], float]] = {
            "min": _least,
            "max": _most,
            "avg": _mean,
        }
        reduce = reducers[name]

        def window(state: ConditionState) -> Any:
            values = state.window(key, seconds)
            try:
                return reduce(values) if values else None
            except OverflowError:  # an integer past any float: unknown, as arithmetic says
                return None

        # A VSS path's transform applies to the result (exact for the unit conversions it
        # carries, which are increasing linear functions).
        return _converted(window, ref.convert)

    def stale(self, args: list[ast.expr]) -> Node:
        name = _dotted(args[0])
        if name is None:
            raise _Refused("stale() takes a message name", args[0])
        try:
            message = self._message(name)
        except LookupError as exc:
            raise _Refused(str(exc.args[0] if exc.args else exc), args[0]) from None
        seconds = self.seconds(args[1])
        self.messages.add(message)

        def stale(state: ConditionState) -> bool:
            seen = state.seen.get(message)
            return seen is None or state.now - seen > seconds

        return stale

    def seconds(self, node: ast.expr) -> float:
        if (
            not isinstance(node, ast.Constant)
            or isinstance(node.value, bool)
            or not isinstance(node.value, int | float)
        ):
            raise _Refused("expected a number of seconds", node)
        seconds = float(node.value)
        if not 0 < seconds <= MAX_WINDOW:
            raise _Refused(f"seconds must be in (0, {MAX_WINDOW:g}], got {seconds:g}", node)
        return seconds


def _compare_two(
    fn: Callable[[Any, Any], bool],
    left: Node,
    right: Node,
    simple: Mapping[Node, tuple[str, Any]],
) -> Node:
    """``left fn right``, unknown (None) when either side is: in a single closure when one side
    is a signal read as it is and the other a constant (what most conditions are made of)."""
    kinds = (simple.get(left, ("", None)), simple.get(right, ("", None)))
    if kinds[0][0] == "signal" and kinds[1][0] == "constant":
        key, constant = kinds[0][1], kinds[1][1]

        def signal_constant(state: ConditionState) -> bool | None:
            value = state.values.get(key)
            return None if value is None else fn(value, constant)

        return signal_constant
    if kinds[0][0] == "constant" and kinds[1][0] == "signal":
        constant, key = kinds[0][1], kinds[1][1]

        def constant_signal(state: ConditionState) -> bool | None:
            value = state.values.get(key)
            return None if value is None else fn(constant, value)

        return constant_signal

    def compare_two(state: ConditionState) -> bool | None:
        a = left(state)
        if a is None:
            return None
        b = right(state)
        return None if b is None else fn(a, b)

    return compare_two


def _converted(node: Node, convert: Callable[[float], Any] | None) -> Node:
    """``node`` with a VSS transform applied to its (known) value."""
    if convert is None:
        return node

    def converted(state: ConditionState) -> Any:
        value = node(state)
        return None if value is None else convert(value)

    return converted


def _least(values: list[float]) -> float:
    """The least value; NaN when one is NaN (``min`` alone answers by their order)."""
    least = min(values)
    return math.nan if least == least and any(map(operator.ne, values, values)) else least


def _most(values: list[float]) -> float:
    """The greatest value; NaN when one is NaN."""
    most = max(values)
    return math.nan if most == most and any(map(operator.ne, values, values)) else most


def _mean(values: list[float]) -> float:
    """The mean, also of values whose sum is past the largest float (1e308 and 1e308)."""
    n = len(values)
    total = sum(values)
    if isinstance(total, float) and math.isinf(total) and not any(map(math.isinf, values)):
        return sum(value / n for value in values)
    return total / n


def _neg(value: Any) -> Any:
    return None if value is None else -value


def _abs(value: Any) -> Any:
    return None if value is None else abs(value)
