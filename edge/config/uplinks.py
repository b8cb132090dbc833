"""Uplink options: each uplink's ``[uplink]`` table, declared once as an ``Options`` dataclass
and read into it when the configuration is loaded.

An uplink's settings are a frozen dataclass deriving from :class:`UplinkOptions` whose fields,
types and defaults *are* the options of its ``[uplink]`` table, so an uplink declares them once::

    @dataclass(frozen=True, slots=True)
    class Options(UplinkOptions):
        path: str  # no default: required
        fsync: bool = True
        max_files: Annotated[int | None, Rule(min=1)] = None

:meth:`UplinkOptions.parse` reads such a table with :class:`edge.config.table.Table`, so every
error names the field as the rest of the configuration does (``uplink.max_files: must be at
least 1, got 0``).

The built-in uplinks' options are here (:data:`BUILT_IN_OPTIONS`): the configuration reads them
without importing the delivery stage or an uplink's libraries (paho-mqtt, azure-iot-device);
each uplink class in :mod:`edge.delivery.uplinks` names its own as its ``Options``. An uplink
another package registers through the entry-point group :data:`ENTRY_POINT_GROUP` declares its
``Options`` on its class; :func:`parse_uplink_options` loads that class through the entry point
and reads the table with the class's ``parse_options``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import string
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Annotated, Any, Self, cast

from edge.config.files import is_file
from edge.config.table import Table
from edge.errors import ConfigError

__all__ = [
    "BUILT_IN_OPTIONS",
    "DEFAULT_TOPIC",
    "ENTRY_POINT_GROUP",
    "PROTOCOLS",
    "TOPIC_FIELDS",
    "AzureDeviceOptions",
    "AzureEdgeOptions",
    "FileOptions",
    "MqttOptions",
    "Rule",
    "UplinkOptions",
    "parse_uplink_options",
    "plugin_uplinks",
    "uplink_kinds",
]

#: Entry-point group through which other packages register uplinks.
ENTRY_POINT_GROUP = "can_telemetry.uplinks"

_FIELD = "uplink.type"


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
            if o.rule.file and path is not None and not is_file(path):
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


def _folder_problem(path: str) -> str | None:
    """Why ``path`` cannot be the file uplink's folder (an existing file on its way), or None."""
    if not path:
        return "expected a folder"
    for place in (Path(path), *Path(path).parents):
        try:
            if place.exists():
                return None if place.is_dir() else f"{place} exists and is not a folder"
        except OSError as exc:  # a name longer than the file system takes
            return f"not a usable folder ({exc.strerror})"
    return None


@dataclass(frozen=True, slots=True)
class FileOptions(UplinkOptions):
    """Validated options of the ``file`` uplink (:mod:`edge.delivery.uplinks.file`)."""

    path: Annotated[str, Rule(check=_folder_problem)]
    fsync: bool = True
    max_files: Annotated[int | None, Rule(min=1)] = None


#: Payload properties a topic template may use.
TOPIC_FIELDS = ("kind", "stream", "seq", "schema", "vehicle", "compression", "format")
PROTOCOLS = ("5", "3.1.1")
DEFAULT_TOPIC = "vehicles/{vehicle}/telemetry/{kind}"


def _topic_problem(template: str) -> str | None:
    """Why ``template`` is not a usable topic template, or None."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        return f"bad placeholder syntax: {exc}"
    for literal, name, spec, conversion in parts:
        if "+" in literal or "#" in literal or "\0" in literal:
            return "must not contain the wildcards + and # (nor NUL)"
        if name is not None and (name not in TOPIC_FIELDS or spec or conversion):
            return f"unknown placeholder {{{name}}}; known: {', '.join(TOPIC_FIELDS)}"
    return None


@dataclass(frozen=True, slots=True)
class MqttOptions(UplinkOptions):
    """Validated options of the ``mqtt`` uplink (:mod:`edge.delivery.uplinks.mqtt`). The
    password is not shown in the repr, nor quoted in an error."""

    host: str
    port: Annotated[int, Rule(min=1, max=65535)] = 8883  # 1883 without TLS (cross_check)
    tls: bool = True
    ca_file: Annotated[str | None, Rule(file=True)] = None
    cert_file: Annotated[str | None, Rule(file=True)] = None
    key_file: Annotated[str | None, Rule(file=True)] = None
    username: str | None = None
    password: Annotated[str | None, Rule(secret=True)] = field(default=None, repr=False)
    client_id: str = ""
    topic: Annotated[str, Rule(check=_topic_problem)] = DEFAULT_TOPIC
    qos: Annotated[int, Rule(min=0, max=1)] = 1
    keepalive: Annotated[int, Rule(min=5, max=65535)] = 60
    protocol: Annotated[str, Rule(choices=PROTOCOLS)] = "5"

    def cross_check(self, table: Table) -> MqttOptions:
        """TLS files only with TLS, a client certificate with its key, a password with a
        username; port 1883 without TLS unless given."""
        for key in ("ca_file", "cert_file", "key_file"):
            if getattr(self, key) is not None and not self.tls:
                raise table.error(key, "only applies with tls = true")
        if (self.cert_file is None) != (self.key_file is None):
            raise table.error("cert_file", "cert_file and key_file go together")
        if self.password is not None and self.username is None:
            raise table.error("password", "needs a username")
        if not self.tls and not table.has("port"):
            return replace(self, port=1883)
        return self


_KEEP_ALIVE = Rule(min=5, max=1740)  # the SDK refuses more than 29 minutes


def _connection_string_problem(value: object) -> str | None:
    """Why ``value`` is not a device connection string with a shared access key, or None.
    The reason never contains the value."""
    if not isinstance(value, str) or not value:
        return "expected a non-empty string (HostName=...;DeviceId=...;SharedAccessKey=...)"
    parts: dict[str, str] = {}
    known = ("HostName", "DeviceId", "SharedAccessKey", "GatewayHostName", "ModuleId")
    for number, item in enumerate(value.split(";"), 1):
        key, sep, val = item.partition("=")
        if not sep or not val or key in parts:
            return "not a connection string: expected Key=value pairs separated by ';'"
        if key not in known:
            # Never quote it: a key pasted after a stray ';' ("...==") parses as a Key=value.
            return (
                f"part {number} has an unsupported key (expected {', '.join(known[:4])};"
                " a device connection string with SharedAccessKey)"
            )
        parts[key] = val
    missing = [k for k in ("HostName", "DeviceId", "SharedAccessKey") if k not in parts]
    if missing:
        return f"missing {missing[0]}"
    if "ModuleId" in parts:
        return "is a module connection string; azure-device needs a device's"
    try:
        base64.b64decode(parts["SharedAccessKey"], validate=True)
    except (binascii.Error, ValueError):  # ValueError: a character that is not ASCII
        return "SharedAccessKey is not valid base64"
    return None


_CONNECTION_STRING = Rule(secret=True, check=_connection_string_problem)


@dataclass(frozen=True, slots=True)
class AzureEdgeOptions(UplinkOptions):
    """Validated options of the ``azure-edge`` uplink (:mod:`edge.delivery.uplinks.azure`)."""

    output: str = "telemetry"
    keep_alive: Annotated[int, _KEEP_ALIVE] = 60


@dataclass(frozen=True, slots=True)
class AzureDeviceOptions(UplinkOptions):
    """Validated options of the ``azure-device`` uplink. The connection string is not shown in
    the repr, nor quoted in an error."""

    connection_string: Annotated[str, _CONNECTION_STRING] = field(repr=False)
    ca_file: Annotated[str | None, Rule(file=True)] = None
    keep_alive: Annotated[int, _KEEP_ALIVE] = 60


#: The options of each built-in uplink, by its name in the configuration (``uplink.type``); the
#: registry (:data:`edge.delivery.uplinks.BACKENDS`) has the same names.
BUILT_IN_OPTIONS: dict[str, type[UplinkOptions]] = {
    "file": FileOptions,
    "mqtt": MqttOptions,
    "azure-edge": AzureEdgeOptions,
    "azure-device": AzureDeviceOptions,
}


def plugin_uplinks() -> dict[str, EntryPoint]:
    """The uplinks other packages register, by name; a built-in name wins over a plugin's."""
    group = entry_points(group=ENTRY_POINT_GROUP)
    return {ep.name: ep for ep in group if ep.name not in BUILT_IN_OPTIONS}


def uplink_kinds() -> list[str]:
    """Names of every uplink that can be configured: built-ins and entry points, sorted."""
    return sorted({*BUILT_IN_OPTIONS, *plugin_uplinks()})


def parse_uplink_options(kind: str, table: Mapping[str, object], field: str) -> Any:
    """Validate the ``[uplink]`` table (without ``type``) of the uplink named ``kind`` into its
    options, raising ConfigError naming ``{field}.{key}``.

    A built-in's table is read into its :data:`BUILT_IN_OPTIONS` class; a plugin's by its
    class's ``parse_options`` (:meth:`edge.delivery.uplinks.base.Uplink.parse_options`). An
    unknown name (listing the known ones), a plugin whose module cannot be imported, or one that
    is no uplink class is a ConfigError on ``uplink.type``.
    """
    if kind in BUILT_IN_OPTIONS:
        return BUILT_IN_OPTIONS[kind].parse(table, field)
    plugin = plugin_uplinks().get(kind)
    if plugin is None:
        raise ConfigError(_FIELD, f"unknown uplink {kind!r}; known: {', '.join(uplink_kinds())}")
    try:
        loaded = plugin.load()
    except Exception as exc:  # an uplink module failing to import must not start the module
        raise ConfigError(_FIELD, f"uplink {kind!r} cannot be loaded: {exc}") from exc
    parse = getattr(loaded, "parse_options", None)
    if not isinstance(loaded, type) or not callable(parse):
        raise ConfigError(_FIELD, f"uplink {kind!r} is {loaded!r}, not an Uplink subclass")
    return parse(table, field)
