"""The uplink interface: one method to implement, and options declared once.

An uplink takes one payload and either returns once the far side has *confirmed* it (edgeHub /
IoT Hub acknowledged the message, the MQTT broker sent PUBACK, the file is renamed into place),
or raises :class:`~edge.errors.TransientUplinkError` (try again later) or
:class:`~edge.errors.PermanentUplinkError` (this payload or these credentials will never work).
It must never block longer than ``timeout`` seconds.

Its settings are its ``Options`` class: a frozen dataclass deriving from :class:`UplinkOptions`
whose fields, types and defaults *are* the options of its ``[uplink]`` table, so an uplink
declares them once::

    @dataclass(frozen=True, slots=True)
    class Options(UplinkOptions):
        path: str  # no default: required
        fsync: bool = True
        max_files: Annotated[int | None, Rule(min=1)] = None

:meth:`UplinkOptions.parse` reads such a table with :class:`edge.config.table.Table`, so every
error names the field as the rest of the configuration does (``uplink.max_files: must be at
least 1, got 0``); :meth:`Uplink.parse_options` and :meth:`Uplink.from_options` use it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Self, cast

from edge.config.table import Table
from edge.errors import ConfigError
from edge.wire.payload import Payload

__all__ = ["Rule", "Uplink", "UplinkOptions"]


@dataclasses.dataclass(frozen=True, slots=True)
class Rule:
    """What an option's value must be beyond its type: ``Annotated[int, Rule(min=1)]``.

    ``min``/``max`` bound a number; ``choices`` lists the strings allowed; ``file``: the string
    names an existing file (checked after :meth:`UplinkOptions.cross_check`, so a rule between
    options such as "only with TLS" speaks first); ``check`` returns why a value is refused, or
    None. A ``secret`` is never quoted in an error: it must be a string, or pass its ``check``,
    which then sees the raw value (and must not quote it either); declare its field with
    ``field(repr=False)`` too.
    """

    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()
    file: bool = False
    secret: bool = False
    check: Callable[[Any], str | None] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class _Option:
    """One field of an Options class, as :meth:`UplinkOptions.parse` reads it."""

    name: str
    kind: type  # str, bool, int, float or tuple (of strings)
    default: Any  # dataclasses.MISSING: required
    rule: Rule


_NO_RULE = Rule()


class UplinkOptions:
    """Base of an uplink's ``Options``: a frozen dataclass whose fields are the options.

    A field's type is ``str``, ``bool``, ``int``, ``float`` or ``tuple[str, ...]`` (a list of
    strings, or one string), or one of them ``| None`` with the default None; ``Annotated`` adds
    a :class:`Rule`. A field without a default is required. The annotations are read when the
    first table is parsed, in the module's namespace: a Rule names module-level functions (a
    lambda there would not see the module's names).
    """

    __slots__ = ()

    @classmethod
    def parse(cls, table: Mapping[str, object], field: str) -> Self:
        """Validate the raw ``[uplink]`` table (without ``type``) into options: every error is
        a ConfigError naming ``{field}.{key}``, an unknown key included (typos must not pass),
        and never quotes a secret. Called once, at configuration load, so a bad option stops
        start-up instead of the first send."""
        t = Table(table, field)
        fields = _options_of(cls)
        values = {o.name: _read(t, o) for o in fields}
        options = cast(Callable[..., Self], cls)(**values).cross_check(t)
        for o in fields:
            path = getattr(options, o.name)
            if o.rule.file and path is not None and not Path(path).is_file():
                raise t.error(o.name, f"no such file: {path}")
        t.finish()
        return options

    def cross_check(self, table: Table) -> Self:
        """Rules between options, and defaults that depend on another option; returns the
        options to use (``dataclasses.replace`` them to change one). ``table`` names the field
        of an error (``table.error(key, reason)``) and tells which keys were given
        (``table.has(key)``). Default: none."""
        return self


#: Options class -> its fields, read once per class.
_FIELDS: dict[type[UplinkOptions], tuple[_Option, ...]] = {}


def _options_of(cls: type[UplinkOptions]) -> tuple[_Option, ...]:
    """The fields of an Options class, checked once: a wrong declaration is a TypeError that
    names it, raised by the first parse (the tests of each uplink parse its options)."""
    if cls not in _FIELDS:
        _FIELDS[cls] = _declared_options(cls)
    return _FIELDS[cls]


def _declared_options(cls: type[UplinkOptions]) -> tuple[_Option, ...]:
    """The fields of ``cls`` as options, or a TypeError naming the one declared wrong."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__dataclass_fields__" not in vars(cls):
        raise TypeError(f"{cls.__qualname__} must be a frozen dataclass")
    hints = typing.get_type_hints(cls, include_extras=True)
    options = []
    for spec in dataclasses.fields(cast(Any, cls)):
        hint, rule = hints[spec.name], _NO_RULE
        if typing.get_origin(hint) is typing.Annotated:
            hint, *extras = typing.get_args(hint)
            rule = next((e for e in extras if isinstance(e, Rule)), _NO_RULE)
        kind, optional = _kind(hint)
        where = f"{cls.__qualname__}.{spec.name}"
        if kind is None:
            raise TypeError(f"{where}: an option cannot be of type {hint}")
        if spec.default_factory is not dataclasses.MISSING:
            raise TypeError(f"{where}: an option's default is a value, not a factory")
        if optional and spec.default is not None:
            raise TypeError(f"{where}: an optional option defaults to None")
        if rule.secret and (kind is not str or spec.repr):
            raise TypeError(f"{where}: a secret is a string declared with field(repr=False)")
        options.append(_Option(spec.name, kind, spec.default, rule))
    return tuple(options)


def _kind(hint: Any) -> tuple[type | None, bool]:
    """The option kind of a type hint, and whether it is ``| None``."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (types.UnionType, typing.Union) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        kind, _ = _kind(rest[0]) if len(rest) == 1 else (None, False)
        return kind, True
    if hint in (str, bool, int, float):
        return hint, False
    if typing.get_origin(hint) is tuple and args == (str, ...):
        return tuple, False
    return None, False


def _read(t: Table, option: _Option) -> Any:
    """One option's value from ``t``; its default when absent (or null in a twin's JSON, as
    :class:`Table` reads every optional key)."""
    name, rule = option.name, option.rule
    default = () if option.default is dataclasses.MISSING else (option.default,)
    if rule.secret:
        value = t.raw(name, *default)
        if value is option.default:
            return value
        if rule.check is not None:
            problem = rule.check(value)
        else:
            problem = None if isinstance(value, str) else "expected a string"
    else:
        if option.kind is str:
            value = t.str(name, *default, choices=rule.choices)
        elif option.kind is bool:
            value = t.bool(name, *default)
        elif option.kind is tuple:
            value = t.str_list(name, *default)
        else:
            bounds: dict[str, Any] = {"min": rule.min, "max": rule.max}
            reader = t.int if option.kind is int else t.float
            value = reader(name, *default, **bounds)
        problem = rule.check(value) if rule.check is not None and value is not None else None
    if problem:
        raise t.error(name, problem)
    return value


class Uplink(ABC):
    """Sends payloads to one destination."""

    #: Registry name, e.g. ``"file"``, ``"mqtt"``, ``"azure-edge"``.
    kind: ClassVar[str] = ""
    #: Its options: a frozen dataclass deriving from :class:`UplinkOptions`.
    Options: ClassVar[type[UplinkOptions]]

    @classmethod
    def parse_options(cls, table: Mapping[str, object], field: str) -> Any:
        """Validate this uplink's ``[uplink]`` table (without ``type``) into its ``Options``
        (:meth:`UplinkOptions.parse`), raising ConfigError naming ``{field}.{key}``; an uplink
        that declares no ``Options`` is a ConfigError on ``{field}.type``."""
        options_class: type[UplinkOptions] | None = getattr(cls, "Options", None)
        if options_class is None:
            raise ConfigError(
                f"{field}.type", f"uplink {cls.kind!r} ({cls.__qualname__}) declares no Options"
            )
        return options_class.parse(table, field)

    @classmethod
    def from_options(cls, options: Any) -> Uplink:
        """Build the uplink from its parsed options; cheap, no network I/O. Default:
        ``cls(options)``, for an uplink whose constructor takes its Options."""
        return cast(Callable[[Any], Uplink], cls)(options)

    @abstractmethod
    def send(self, payload: Payload, timeout: float) -> None:
        """Deliver ``payload`` and return only after the destination confirmed it.

        Raises TransientUplinkError or PermanentUplinkError; never blocks past ``timeout``.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections. Default: nothing to do."""
