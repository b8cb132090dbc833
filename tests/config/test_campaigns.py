"""``[[campaigns]]``: parsed once, errors naming the field; ``[signals]`` stays the default."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from edge.config.campaigns import CampaignConfig, describe
from edge.config.model import parse_config
from edge.errors import ConfigError

BUS = {"name": "can0", "dbc": ["x.dbc"]}


def parse(*campaigns: dict[str, Any], **root: Any) -> Any:
    return parse_config({"buses": [BUS], "campaigns": list(campaigns), **root})


def test_without_campaigns_nothing_changes() -> None:
    config = parse_config({"buses": [BUS], "signals": {"include": ["ESC*"]}})
    assert config.campaigns == ()
    assert config.signals.include == ("ESC*",)


def test_a_condition_campaign_with_every_option() -> None:
    (campaign,) = parse(
        {
            "name": "harsh-braking",
            "condition": "ESC_BrakePressure > 40",
            "signals": ["ESC_*"],
            "trigger": "while_true",
            "min_interval": 2,
            "before": 10,
            "after": 5,
            "raw_frames": True,
            "priority": 0,
            "daily_bytes": 1_000_000,
            "start": "2026-01-01T00:00:00Z",
            "expiry": dt.datetime(2027, 1, 1, tzinfo=dt.UTC),  # a TOML datetime
        }
    ).campaigns
    assert campaign == CampaignConfig(
        name="harsh-braking",
        collect="condition",
        signals=("ESC_*",),
        start=dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp(),
        expiry=dt.datetime(2027, 1, 1, tzinfo=dt.UTC).timestamp(),
        priority=0,
        condition="ESC_BrakePressure > 40",
        trigger="while_true",
        min_interval=2.0,
        before=10.0,
        after=5.0,
        raw_frames=True,
        daily_bytes=1_000_000,
    )
    assert campaign.active(campaign.start or 0) and not campaign.active(campaign.expiry or 0)
    assert describe(campaign)["expiry"] == "2027-01-01T00:00:00Z"


def test_the_always_campaign_takes_the_role_of_signals_include() -> None:
    config = parse({"name": "always", "collect": "always", "signals": ["BMS_*"], "priority": 7})
    assert config.signals.include == ("BMS_*",)
    with pytest.raises(ConfigError, match=r"signals\.include"):
        parse({"name": "always", "collect": "always"}, signals={"include": ["*"]})


@pytest.mark.parametrize(
    ("campaign", "field", "reason"),
    [
        ({"condition": "a > 1"}, "campaigns[0].name", "is required"),
        ({"name": "a b", "condition": "x"}, "campaigns[0].name", "letters"),
        ({"name": "c"}, "campaigns[0].condition", "is required"),
        ({"name": "c", "condition": "a >"}, "campaigns[0].condition", "column 4: syntax"),
        ({"name": "c", "condition": "a", "priority": 10}, "campaigns[0].priority", "at most 9"),
        ({"name": "c", "condition": "a", "trigger": "x"}, "campaigns[0].trigger", "one of"),
        (
            {"name": "c", "condition": "a", "trigger": "while_true"},
            "campaigns[0].min_interval",
            "greater than 0",
        ),
        ({"name": "c", "condition": "a", "start": "tomorrow"}, "campaigns[0].start", "RFC 3339"),
        (
            {"name": "c", "condition": "a", "expiry": "2026-01-01T00:00:00"},
            "campaigns[0].expiry",
            "time zone",
        ),
        (
            {
                "name": "c",
                "condition": "a",
                "start": "2026-02-01T00:00:00Z",
                "expiry": "2026-01-01T00:00:00Z",
            },
            "campaigns[0].expiry",
            "after start",
        ),
        ({"name": "p", "collect": "periodic"}, "campaigns[0].period", "is required"),
        (
            {"name": "p", "collect": "periodic", "period": 1, "before": 2},
            "campaigns[0].before",
            "only applies",
        ),
        ({"name": "c", "condition": "a", "colour": 1}, "campaigns[0].colour", "unknown option"),
        ({"name": "x", "collect": "always"}, "campaigns[0].name", "named 'always'"),
        ({"name": "always", "condition": "a"}, "campaigns[0].name", "default campaign"),
    ],
)
def test_refused_naming_the_field(campaign: dict[str, Any], field: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(campaign)
    assert info.value.field == field
    assert reason in info.value.reason


def test_names_are_unique() -> None:
    with pytest.raises(ConfigError, match=r"campaigns\[1\].name: duplicate"):
        parse({"name": "a", "condition": "x"}, {"name": "a", "condition": "y"})
