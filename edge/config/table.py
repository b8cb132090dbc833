"""Reading untrusted tables (TOML, twin JSON) into typed values, naming the field on every error.

Every configuration reader in the package (the main config, each uplink's options, twin patches)
goes through :class:`Table`, so error messages look the same everywhere:
``buses[0].bitrate: expected an integer, got 'fast'``.
"""

from __future__ import annotations

import builtins
import math
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from edge.errors import ConfigError

__all__ = ["Table"]

_T = TypeVar("_T")
_MISSING: Any = object()


def _describe(value: object) -> builtins.str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Table:
    """A view of one mapping in the configuration, with its dotted path for error messages.

    Read each key with a typed getter; call :meth:`finish` last to refuse unknown keys (typos
    must not pass silently).
    """

    def __init__(self, data: object, path: builtins.str = "") -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(path or "<root>", f"expected a table, got {_describe(data)}")
        self._data: Mapping[builtins.str, Any] = data
        self._path = path
        self._seen: set[builtins.str] = set()

    @property
    def path(self) -> builtins.str:
        """Dotted path of this table (empty at the root)."""
        return self._path

    def field(self, key: builtins.str) -> builtins.str:
        """The dotted path of ``key`` in this table."""
        if not key:  # an empty key: quoted, as TOML writes it
            key = '""'
        return f"{self._path}.{key}" if self._path else key

    def has(self, key: builtins.str) -> builtins.bool:
        """Whether ``key`` is present (marks it as known)."""
        self._seen.add(key)
        return key in self._data

    def raw(self, key: builtins.str, default: Any = _MISSING) -> Any:
        """The value of ``key`` untouched; ``default`` when absent, or an error if required."""
        self._seen.add(key)
        if key in self._data:
            return self._data[key]
        if default is _MISSING:
            raise ConfigError(self.field(key), "is required")
        return default

    def error(self, key: builtins.str, reason: builtins.str) -> ConfigError:
        """A ConfigError for ``key``."""
        return ConfigError(self.field(key), reason)

    def str(
        self, key: builtins.str, default: Any = _MISSING, *, choices: Iterable[builtins.str] = ()
    ) -> Any:
        """A non-empty string (or ``default``), optionally one of ``choices``."""
        value = self.raw(key, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, builtins.str) or not value:
            raise self.error(key, f"expected a non-empty string, got {_describe(value)}")
        allowed = list(choices)
        if allowed and value not in allowed:
            raise self.error(key, f"must be one of {', '.join(allowed)}; got {value!r}")
        return value

    def bool(self, key: builtins.str, default: Any = _MISSING) -> Any:
        """A boolean (or ``default``)."""
        value = self.raw(key, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, builtins.bool):
            raise self.error(key, f"expected true or false, got {_describe(value)}")
        return value

    def int(
        self,
        key: builtins.str,
        default: Any = _MISSING,
        *,
        min: int | None = None,
        max: int | None = None,
    ) -> Any:
        """An integer in ``[min, max]`` (or ``default``)."""
        value = self.raw(key, default)
        if value is default and default is not _MISSING:
            return value
        if isinstance(value, builtins.bool) or not isinstance(value, int):
            raise self.error(key, f"expected an integer, got {_describe(value)}")
        _check_range(self, key, value, min, max)
        return value

    def float(
        self,
        key: builtins.str,
        default: Any = _MISSING,
        *,
        min: float | None = None,
        max: float | None = None,
        min_exclusive: builtins.bool = False,
    ) -> Any:
        """A finite number in range (or ``default``); integers are accepted."""
        value = self.raw(key, default)
        if value is default and default is not _MISSING:
            return value
        if isinstance(value, builtins.bool) or not isinstance(value, int | float):
            raise self.error(key, f"expected a number, got {_describe(value)}")
        try:
            number = float(value)
        except OverflowError:
            raise self.error(key, "must be a finite number, got a huge integer") from None
        if not math.isfinite(number):
            raise self.error(key, f"must be a finite number, got {value}")
        if min_exclusive and min is not None and number <= min:
            raise self.error(key, f"must be greater than {min}, got {value}")
        _check_range(self, key, value, min, max)
        return number

    def str_list(self, key: builtins.str, default: Any = _MISSING) -> Any:
        """A list of non-empty strings; a single string is accepted as a list of one."""
        value = self.raw(key, default)
        if value is default and default is not _MISSING:
            return value
        if isinstance(value, builtins.str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, builtins.str) and v for v in value):
            raise self.error(key, f"expected a list of strings, got {_describe(value)}")
        return tuple(value)

    def table(self, key: builtins.str, *, required: builtins.bool = False) -> Table:
        """A nested table (an empty one when absent and not required)."""
        value = self.raw(key, _MISSING if required else {})
        return Table(value, self.field(key))

    def tables(self, key: builtins.str) -> list[Table]:
        """An array of tables (``[[key]]`` in TOML); empty when absent."""
        value = self.raw(key, [])
        if not isinstance(value, list):
            raise self.error(key, f"expected an array of tables, got {_describe(value)}")
        return [Table(item, f"{self.field(key)}[{i}]") for i, item in enumerate(value)]

    def rest(self) -> dict[builtins.str, Any]:
        """All keys not read yet (marks them as known): for pass-through option tables."""
        extra = {k: v for k, v in self._data.items() if k not in self._seen}
        self._seen.update(extra)
        return extra

    def finish(self) -> None:
        """Refuse keys that no getter asked for."""
        unknown = sorted(set(self._data) - self._seen)
        if unknown:
            raise ConfigError(self.field(unknown[0]), "unknown option")


def _check_range(
    table: Table, key: str, value: float, low: float | None, high: float | None
) -> None:
    if low is not None and value < low:
        raise table.error(key, f"must be at least {low}, got {value}")
    if high is not None and value > high:
        raise table.error(key, f"must be at most {high}, got {value}")
