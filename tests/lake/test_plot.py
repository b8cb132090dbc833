"""Drawing: choice-valued signals as steps labelled with their names; times as given."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import matplotlib
import pyarrow as pa
import pytest

from edge.errors import ConfigError
from edge.lake.plot import draw, parse_when
from edge.lake.tables import SIGNALS


def rows(values: list[tuple[float, str, float, str | None]]) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "vehicle": "car-1",
                "time": t,
                "signal": s,
                "value": v,
                "choice": c,
                "unit": "",
                "time_base": "epoch",
                "bus": "can0",
                "message": "M",
                "stream": "ab",
                "seq": 1,
                "date": dt.date(2026, 12, 6),
            }
            for t, s, v, c in values
        ],
        SIGNALS,
    )


def test_choice_signals_are_steps_labelled_with_their_names(tmp_path: Path) -> None:
    table = rows(
        [
            (1.79e9, "Gear", 0, "Park"),
            (1.79e9 + 5, "Gear", 3, "Drive"),
            (1.79e9 + 9, "Gear", 1, "Reverse"),
            (1.79e9, "Speed", 0.0, None),
            (1.79e9 + 9, "Speed", 12.5, None),
        ]
    )
    out = tmp_path / "plot.svg"
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # keep text as text
        assert draw(table, out) == 2
    svg = out.read_text()
    assert all(name in svg for name in ("Park", "Drive", "Reverse", "Gear", "Speed"))
    assert "time (UTC)" in svg


def test_times_parse_as_seconds_or_iso_and_bad_ones_name_the_option() -> None:
    assert parse_when("12.5", "--from") == 12.5
    assert parse_when("2026-12-06T08:00:00", "--from") == 1796544000.0
    assert parse_when("2026-12-06T09:00:00+01:00", "--to") == 1796544000.0
    assert parse_when(None, "--to") is None
    with pytest.raises(ConfigError, match="--to"):
        parse_when("tomorrow", "--to")
