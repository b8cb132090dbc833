"""edge.config.uplinks: an uplink's options read from its ``Options`` dataclass, once for every
uplink (through ``Uplink.parse_options``, as an uplink another package registers is read), and the
built-in uplinks' options found by name without importing the delivery stage."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import pytest

from edge.config.table import Table
from edge.config.uplinks import (
    BUILT_IN_OPTIONS,
    Rule,
    UplinkOptions,
    parse_uplink_options,
    uplink_kinds,
)
from edge.delivery.uplinks import BACKENDS, uplink_class
from edge.delivery.uplinks.base import Uplink
from edge.errors import ConfigError
from edge.wire.payload import Payload

REPO = Path(__file__).resolve().parents[2]

SECRET = "s3cr3t-Key=="


def _no_spaces(value: str) -> str | None:
    return "must not contain spaces" if " " in value else None


def _token_problem(value: object) -> str | None:
    return None if isinstance(value, str) and value.startswith("tok-") else "not a token"


@dataclass(frozen=True, slots=True)
class SampleOptions(UplinkOptions):
    """One option of every kind the base class reads."""

    host: str
    port: Annotated[int, Rule(min=1, max=65535)] = 1883
    tls: bool = True
    ratio: Annotated[float, Rule(min=0.0, max=1.0)] = 0.5
    limit: Annotated[int | None, Rule(min=1)] = None
    mode: Annotated[str, Rule(choices=("fast", "safe"))] = "safe"
    name: Annotated[str, Rule(check=_no_spaces)] = "car"
    tags: tuple[str, ...] = ()
    ca_file: Annotated[str | None, Rule(file=True)] = None
    password: Annotated[str | None, Rule(secret=True)] = field(default=None, repr=False)
    token: Annotated[str | None, Rule(secret=True, check=_token_problem)] = field(
        default=None, repr=False
    )

    def cross_check(self, table: Table) -> SampleOptions:
        if self.ca_file is not None and not self.tls:
            raise table.error("ca_file", "only applies with tls = true")
        return self


class SampleUplink(Uplink):
    """An uplink that keeps what it is sent (to test the base class, not a stand-in)."""

    kind = "sample"
    Options = SampleOptions

    def __init__(self, options: SampleOptions) -> None:
        self.options = options
        self.sent: list[Payload] = []

    def send(self, payload: Payload, timeout: float) -> None:
        self.sent.append(payload)


def refused(table: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        SampleUplink.parse_options(table, "uplink")
    return info.value


def test_defaults_are_applied() -> None:
    options = SampleUplink.parse_options({"host": "h"}, "uplink")
    assert options == SampleOptions(host="h")
    assert (options.port, options.tls, options.ratio, options.limit) == (1883, True, 0.5, None)
    assert (options.mode, options.name, options.tags, options.password) == ("safe", "car", (), None)


def test_given_values_are_read_as_their_types(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    table = {
        "host": "h",
        "port": 8883,
        "tls": True,
        "ratio": 1,  # an integer is a number
        "limit": 3,
        "mode": "fast",
        "name": "van",
        "tags": "one",  # one string is a list of one
        "ca_file": str(ca),
        "password": "",
        "token": "tok-1",
    }
    options = SampleUplink.parse_options(table, "uplink")
    assert options == SampleOptions(
        "h", 8883, True, 1.0, 3, "fast", "van", ("one",), str(ca), "", "tok-1"
    )
    assert isinstance(options.ratio, float)


def test_a_required_option_is_named() -> None:
    error = refused({})
    assert (error.field, error.reason) == ("uplink.host", "is required")


def test_an_unknown_option_is_refused_and_named() -> None:
    error = refused({"host": "h", "prot": 1883})
    assert (error.field, error.reason) == ("uplink.prot", "unknown option")


@pytest.mark.parametrize(
    ("table", "field", "reason"),
    [
        ({"host": 3}, "uplink.host", "expected a non-empty string, got 3"),
        ({"host": "h", "port": "1883"}, "uplink.port", "expected an integer, got '1883'"),
        ({"host": "h", "port": True}, "uplink.port", "expected an integer, got True"),
        ({"host": "h", "tls": "yes"}, "uplink.tls", "expected true or false, got 'yes'"),
        ({"host": "h", "ratio": "half"}, "uplink.ratio", "expected a number, got 'half'"),
        ({"host": "h", "limit": 1.5}, "uplink.limit", "expected an integer, got 1.5"),
        ({"host": "h", "tags": [1]}, "uplink.tags", "expected a list of strings, got [1]"),
    ],
)
def test_a_wrong_type_is_named(table: dict[str, Any], field: str, reason: str) -> None:
    error = refused(table)
    assert (error.field, error.reason) == (field, reason)


@pytest.mark.parametrize(
    ("table", "field", "reason"),
    [
        ({"host": "h", "port": 0}, "uplink.port", "must be at least 1, got 0"),
        ({"host": "h", "ratio": 1.5}, "uplink.ratio", "must be at most 1.0, got 1.5"),
        ({"host": "h", "limit": 0}, "uplink.limit", "must be at least 1, got 0"),
        ({"host": "h", "mode": "slow"}, "uplink.mode", "must be one of fast, safe; got 'slow'"),
        ({"host": "h", "name": "a b"}, "uplink.name", "must not contain spaces"),
        ({"host": "h", "ca_file": "/nonexistent/ca.pem"}, "uplink.ca_file", "no such file"),
    ],
)
def test_rules_are_applied_and_named(table: dict[str, Any], field: str, reason: str) -> None:
    error = refused(table)
    assert error.field == field and reason in error.reason


def test_rules_between_options_speak_before_the_file_check() -> None:
    error = refused({"host": "h", "tls": False, "ca_file": "/nonexistent/ca.pem"})
    assert (error.field, error.reason) == ("uplink.ca_file", "only applies with tls = true")


def test_a_secret_is_never_quoted_nor_shown() -> None:
    error = refused({"host": "h", "password": 12345678})
    assert (error.field, error.reason) == ("uplink.password", "expected a string")
    error = refused({"host": "h", "token": SECRET})  # its check sees the raw value
    assert (error.field, error.reason) == ("uplink.token", "not a token")
    error = refused({"host": "h", "token": 42})
    assert "42" not in str(error)
    options = SampleUplink.parse_options({"host": "h", "password": SECRET}, "uplink")
    assert options.password == SECRET and SECRET not in repr(options)


def test_null_from_a_twin_is_an_absent_option() -> None:
    table = {"host": "h", "limit": None, "password": None, "token": None}
    assert SampleUplink.parse_options(table, "uplink") == SampleOptions(host="h")


@dataclass(frozen=True)
class ListOption(UplinkOptions):
    hosts: list[str]


@dataclass(frozen=True)
class OptionalWithDefault(UplinkOptions):
    limit: int | None = 5


@dataclass(frozen=True)
class ShownSecret(UplinkOptions):
    password: Annotated[str, Rule(secret=True)] = ""


@dataclass
class Mutable(UplinkOptions):
    host: str = "h"


@pytest.mark.parametrize(
    ("options_class", "message"),
    [
        (ListOption, "ListOption.hosts: an option cannot be of type list[str]"),
        (OptionalWithDefault, "OptionalWithDefault.limit: an optional option defaults to None"),
        (ShownSecret, "ShownSecret.password: a secret is a string declared with field(repr=False)"),
        (Mutable, "Mutable must be a frozen dataclass"),
    ],
)
def test_a_wrong_declaration_is_a_type_error_naming_it(
    options_class: type[UplinkOptions], message: str
) -> None:
    with pytest.raises(TypeError) as info:
        options_class.parse({}, "uplink")
    assert str(info.value) == message


def test_the_built_ins_options_are_their_uplinks_options() -> None:
    assert set(BUILT_IN_OPTIONS) == set(BACKENDS)
    for kind, options_class in BUILT_IN_OPTIONS.items():
        if importlib.util.find_spec(BACKENDS[kind][0].rpartition(".")[0]) is None:
            continue
        assert uplink_class(kind).Options is options_class


def test_a_built_in_is_read_into_its_options() -> None:
    options = parse_uplink_options("file", {"path": "o", "max_files": 3}, "uplink")
    assert options == BUILT_IN_OPTIONS["file"](path="o", fsync=True, max_files=3)
    with pytest.raises(ConfigError) as info:
        parse_uplink_options("mqtt", {"host": "h", "qos": 2}, "uplink")
    assert (info.value.field, info.value.reason) == ("uplink.qos", "must be at most 1, got 2")


def test_an_unknown_uplink_names_the_field_and_the_known_ones() -> None:
    with pytest.raises(ConfigError) as info:
        parse_uplink_options("carrier-pigeon", {}, "uplink")
    assert info.value.field == "uplink.type"
    assert f"unknown uplink 'carrier-pigeon'; known: {', '.join(uplink_kinds())}" == (
        info.value.reason
    )
    assert {"azure-device", "azure-edge", "file", "mqtt"} <= set(uplink_kinds())


def test_reading_a_configuration_imports_no_uplink() -> None:
    """The configuration sits below the stages: reading an MQTT or Azure uplink's options
    imports neither the delivery stage nor paho-mqtt or the Azure SDK."""
    code = (
        "import sys; from edge.config.model import parse_config;"
        f" bus = {{'name': 'can0', 'dbc': {str(REPO / 'dbc' / 'demo_vehicle.dbc')!r}}};"
        " [parse_config({'buses': [bus], 'uplink': u}) for u in"
        " ({'type': 'mqtt', 'host': 'h'}, {'type': 'azure-edge'})];"
        " print(sorted(m for m in sys.modules if m.split('.')[0] in ('paho', 'azure')"
        " or m.startswith('edge.delivery')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"
