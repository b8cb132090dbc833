"""edge.config.table.Table: every getter accepts what it should, refuses the rest, and names the
dotted field of the offending value in the ConfigError."""

from __future__ import annotations

import math
from typing import Any

import pytest

from edge.config.table import Table
from edge.errors import ConfigError

PATH = "buses[1]"


def table(**data: Any) -> Table:
    """A table at ``buses[1]``, so every error must carry the full dotted path."""
    return Table(data, PATH)


def check_field(info: pytest.ExceptionInfo[ConfigError], field: str) -> None:
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")


# --- construction and paths ----------------------------------------------------------------------


@pytest.mark.parametrize("data", [[], "text", 3, None, 1.5, True])
def test_a_table_must_be_a_mapping(data: object) -> None:
    with pytest.raises(ConfigError, match="expected a table") as info:
        Table(data, "uplink")
    check_field(info, "uplink")


def test_a_root_that_is_not_a_mapping_is_named_root() -> None:
    with pytest.raises(ConfigError) as info:
        Table(["not", "a", "table"])
    assert info.value.field == "<root>"


def test_field_paths() -> None:
    assert Table({}).field("vehicle_id") == "vehicle_id"
    assert Table({}).path == ""
    assert table().field("bitrate") == "buses[1].bitrate"
    assert table().path == PATH


def test_error_builds_a_config_error_for_a_key() -> None:
    error = table().error("fd", "is odd")
    assert isinstance(error, ConfigError)
    assert (error.field, error.reason) == ("buses[1].fd", "is odd")
    assert str(error) == "buses[1].fd: is odd"


def test_long_values_are_shortened_in_messages() -> None:
    with pytest.raises(ConfigError) as info:
        table(x="a" * 500).int("x")
    assert len(str(info.value)) < 120
    assert "..." in str(info.value)


# --- raw / has -----------------------------------------------------------------------------------


def test_raw_returns_the_value_untouched_or_the_default() -> None:
    t = table(x=[1, "two"])
    assert t.raw("x") == [1, "two"]
    assert t.raw("y", 42) == 42
    assert t.raw("z", None) is None


def test_raw_without_default_requires_the_key() -> None:
    with pytest.raises(ConfigError, match="is required") as info:
        table().raw("name")
    check_field(info, "buses[1].name")


def test_has_reports_presence_and_marks_the_key_known() -> None:
    t = table(x=1)
    assert t.has("x")
    assert not t.has("y")
    t.finish()  # x was asked for with has(): not unknown


# --- str -----------------------------------------------------------------------------------------


def test_str_accepts_a_non_empty_string() -> None:
    assert table(x="can0").str("x") == "can0"


def test_str_default_when_absent() -> None:
    assert table().str("x", "virtual") == "virtual"
    assert table().str("x", None) is None


@pytest.mark.parametrize("value", ["", 1, 1.5, True, ["a"], {"a": 1}])
def test_str_refuses_empty_strings_and_other_types(value: object) -> None:
    with pytest.raises(ConfigError, match="expected a non-empty string") as info:
        table(x=value).str("x")
    check_field(info, "buses[1].x")


def test_str_is_required_without_default() -> None:
    with pytest.raises(ConfigError, match="is required") as info:
        table().str("x")
    check_field(info, "buses[1].x")


def test_str_choices() -> None:
    assert table(x="zlib").str("x", choices=("zstd", "zlib")) == "zlib"
    with pytest.raises(ConfigError) as info:
        table(x="lz4").str("x", choices=("zstd", "zlib"))
    check_field(info, "buses[1].x")
    assert info.value.reason == "must be one of zstd, zlib; got 'lz4'"


def test_str_choices_are_case_sensitive() -> None:
    with pytest.raises(ConfigError, match="must be one of") as info:
        table(x="info").str("x", choices=("INFO",))
    check_field(info, "buses[1].x")


# --- bool ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [True, False])
def test_bool_accepts_booleans(value: bool) -> None:
    assert table(x=value).bool("x") is value


def test_bool_default() -> None:
    assert table().bool("x", True) is True


@pytest.mark.parametrize("value", [0, 1, "true", "yes", None, 1.0])
def test_bool_refuses_everything_else(value: object) -> None:
    with pytest.raises(ConfigError, match="expected true or false") as info:
        table(x=value).bool("x")
    check_field(info, "buses[1].x")


def test_bool_is_required_without_default() -> None:
    with pytest.raises(ConfigError, match="is required") as info:
        table().bool("x")
    check_field(info, "buses[1].x")


# --- int -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, -5, 500_000, 2**63])
def test_int_accepts_integers(value: int) -> None:
    result = table(x=value).int("x")
    assert result == value
    assert type(result) is int


def test_int_default_is_returned_as_given() -> None:
    assert table().int("x", None) is None
    assert table().int("x", 7, min=100) == 7  # defaults are trusted, not range-checked


@pytest.mark.parametrize("value", [True, False])
def test_int_refuses_booleans(value: bool) -> None:
    # bool is a subclass of int in Python; "bitrate = true" must not become 1.
    with pytest.raises(ConfigError, match="expected an integer") as info:
        table(x=value).int("x")
    check_field(info, "buses[1].x")


@pytest.mark.parametrize("value", [1.0, 1.5, "500000", None, [1], math.nan])
def test_int_refuses_other_types(value: object) -> None:
    with pytest.raises(ConfigError, match="expected an integer") as info:
        table(x=value).int("x")
    check_field(info, "buses[1].x")


def test_int_range_is_inclusive() -> None:
    assert table(x=1000).int("x", min=1000, max=2000) == 1000
    assert table(x=2000).int("x", min=1000, max=2000) == 2000


def test_int_below_min() -> None:
    with pytest.raises(ConfigError) as info:
        table(x=999).int("x", min=1000, max=2000)
    check_field(info, "buses[1].x")
    assert info.value.reason == "must be at least 1000, got 999"


def test_int_above_max() -> None:
    with pytest.raises(ConfigError) as info:
        table(x=2001).int("x", min=1000, max=2000)
    check_field(info, "buses[1].x")
    assert info.value.reason == "must be at most 2000, got 2001"


# --- float ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [(1.5, 1.5), (2, 2.0), (0, 0.0), (-1e-3, -1e-3)])
def test_float_accepts_numbers_and_returns_float(value: float, expected: float) -> None:
    result = table(x=value).float("x")
    assert result == expected
    assert type(result) is float


def test_float_default() -> None:
    assert table().float("x", 5.0) == 5.0
    assert table().float("x", None) is None


@pytest.mark.parametrize("value", [True, False])
def test_float_refuses_booleans(value: bool) -> None:
    with pytest.raises(ConfigError, match="expected a number") as info:
        table(x=value).float("x")
    check_field(info, "buses[1].x")


@pytest.mark.parametrize("value", ["1.5", None, [1.0], {"a": 1}])
def test_float_refuses_other_types(value: object) -> None:
    with pytest.raises(ConfigError, match="expected a number") as info:
        table(x=value).float("x")
    check_field(info, "buses[1].x")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_float_refuses_nan_and_infinity(value: float) -> None:
    with pytest.raises(ConfigError, match="must be a finite number") as info:
        table(x=value).float("x", min=0.0)
    check_field(info, "buses[1].x")


def test_float_refuses_an_integer_too_large_for_a_float() -> None:
    with pytest.raises(ConfigError) as info:
        table(x=10**400).float("x")
    check_field(info, "buses[1].x")


def test_float_range_inclusive() -> None:
    assert table(x=0.05).float("x", min=0.05, max=3600.0) == 0.05
    assert table(x=3600).float("x", min=0.05, max=3600.0) == 3600.0
    with pytest.raises(ConfigError) as info:
        table(x=0.04).float("x", min=0.05, max=3600.0)
    check_field(info, "buses[1].x")
    assert info.value.reason == "must be at least 0.05, got 0.04"
    with pytest.raises(ConfigError) as info:
        table(x=3601).float("x", min=0.05, max=3600.0)
    check_field(info, "buses[1].x")
    assert info.value.reason == "must be at most 3600.0, got 3601"


def test_float_min_exclusive() -> None:
    assert table(x=1e-9).float("x", min=0.0, min_exclusive=True) == 1e-9
    for value in (0, 0.0, -1.0):
        with pytest.raises(ConfigError) as info:
            table(x=value).float("x", min=0.0, min_exclusive=True)
        check_field(info, "buses[1].x")
        assert info.value.reason == f"must be greater than 0.0, got {value}"


# --- str_list ------------------------------------------------------------------------------------


def test_str_list_accepts_a_list_and_returns_a_tuple() -> None:
    assert table(x=["a.dbc", "b.dbc"]).str_list("x") == ("a.dbc", "b.dbc")


def test_str_list_accepts_a_single_string_as_a_list_of_one() -> None:
    assert table(x="a.dbc").str_list("x") == ("a.dbc",)


def test_str_list_default_and_empty_list() -> None:
    assert table().str_list("x", ("*",)) == ("*",)
    assert table(x=[]).str_list("x") == ()


@pytest.mark.parametrize("value", [["a", ""], ["a", 1], [None], 1, {"a": "b"}, "", True])
def test_str_list_refuses_anything_but_strings(value: object) -> None:
    with pytest.raises(ConfigError, match="expected a list of strings") as info:
        table(x=value).str_list("x")
    check_field(info, "buses[1].x")


# --- table / tables ------------------------------------------------------------------------------


def test_nested_table_paths() -> None:
    t = Table({"uplink": {"options": {"port": "x"}}})
    inner = t.table("uplink").table("options")
    assert inner.path == "uplink.options"
    with pytest.raises(ConfigError) as info:
        inner.int("port")
    check_field(info, "uplink.options.port")


def test_absent_table_is_empty_unless_required() -> None:
    t = Table({})
    empty = t.table("batch")
    assert empty.path == "batch"
    empty.finish()
    with pytest.raises(ConfigError, match="is required") as info:
        t.table("uplink", required=True)
    check_field(info, "uplink")


@pytest.mark.parametrize("value", [1, "x", ["a"], True])
def test_a_nested_table_must_be_a_mapping(value: object) -> None:
    with pytest.raises(ConfigError, match="expected a table") as info:
        Table({"batch": value}).table("batch")
    check_field(info, "batch")


def test_tables_gives_indexed_paths() -> None:
    buses = Table({"buses": [{"name": "a"}, {"name": "b", "bitrate": "fast"}]}).tables("buses")
    assert [b.path for b in buses] == ["buses[0]", "buses[1]"]
    assert buses[0].str("name") == "a"
    with pytest.raises(ConfigError) as info:
        buses[1].int("bitrate")
    check_field(info, "buses[1].bitrate")


def test_tables_absent_is_empty() -> None:
    assert Table({}).tables("buses") == []


def test_tables_refuses_a_single_table() -> None:
    with pytest.raises(ConfigError, match="expected an array of tables") as info:
        Table({"buses": {"name": "a"}}).tables("buses")
    check_field(info, "buses")


def test_tables_refuses_an_item_that_is_not_a_table() -> None:
    with pytest.raises(ConfigError, match="expected a table") as info:
        Table({"buses": [{"name": "a"}, "can1"]}).tables("buses")
    check_field(info, "buses[1]")


# --- rest / finish -------------------------------------------------------------------------------


def test_rest_returns_the_keys_not_read_and_marks_them_known() -> None:
    t = table(type="mqtt", host="h", port=1883)
    assert t.str("type") == "mqtt"
    assert t.rest() == {"host": "h", "port": 1883}
    assert t.rest() == {}
    t.finish()


def test_finish_accepts_when_every_key_was_read() -> None:
    t = table(name="can0", bitrate=500_000)
    t.str("name")
    t.int("bitrate")
    t.finish()


def test_finish_refuses_the_first_unknown_key_by_name() -> None:
    t = table(name="can0", bitrat=500_000, zzz=1)
    t.str("name")
    t.int("bitrate", None)
    with pytest.raises(ConfigError, match="unknown option") as info:
        t.finish()
    check_field(info, "buses[1].bitrat")


def test_finish_at_root_names_the_bare_key() -> None:
    with pytest.raises(ConfigError) as info:
        Table({"vehicle": "x"}).finish()
    check_field(info, "vehicle")


def test_a_key_read_with_a_default_is_known_even_when_absent() -> None:
    t = Table({})
    t.int("queue_frames", 100)
    t.finish()
