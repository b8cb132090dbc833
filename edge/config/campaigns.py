"""Campaign settings: TOML ``[[campaigns]]`` and the twin's ``config.campaigns`` (same parse),
validated once into frozen dataclasses.

The ``[signals]`` table is the default campaign, ``always`` (every change of the selected
signals, as before campaigns existed): a configuration without ``[[campaigns]]`` works unchanged.
A ``[[campaigns]]`` entry with ``collect = "always"`` takes that role instead (its ``signals``
become ``[signals].include``); there is at most one. Conditions are checked for syntax here and
resolved against the databases when the engine is built (before anything starts), so a bad one
stops start-up or is refused by the twin, naming ``campaigns[i].condition`` and the column.
"""

from __future__ import annotations

import ast
import datetime as dt
import re
from dataclasses import dataclass
from typing import Any, Literal

from edge.config.table import Table
from edge.errors import ConfigError

__all__ = [
    "ALWAYS",
    "COLLECT_MODES",
    "DEFAULT_PRIORITY",
    "TRIGGERS",
    "CampaignConfig",
    "describe",
    "field_name",
    "parse_campaigns",
]

Collect = Literal["always", "periodic", "condition"]
Trigger = Literal["rising_edge", "while_true"]
COLLECT_MODES: tuple[Collect, ...] = ("always", "periodic", "condition")
TRIGGERS: tuple[Trigger, ...] = ("rising_edge", "while_true")
#: The name of the default campaign (the ``[signals]`` table).
ALWAYS = "always"
#: Delivery priority of a payload appended without one (0 is the most urgent, 9 the least).
#: The forwarder reads by priority, then seq (issue 11, docs/delivery.md); the spool
#: (edge/delivery/spool.py) appends at it when told no other.
DEFAULT_PRIORITY = 5
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True, slots=True)
class CampaignConfig:
    """One campaign: what it collects, when, and how urgently it is sent.

    ``start`` / ``expiry`` are wall-clock epoch seconds (RFC 3339 in the configuration);
    ``daily_bytes`` bounds the payload bytes it may spool per UTC day (None: no bound);
    ``buffer_frames`` / ``buffer_bytes`` cap the pre-trigger history kept per message."""

    name: str
    collect: Collect
    signals: tuple[str, ...] = ("*",)
    enabled: bool = True
    start: float | None = None
    expiry: float | None = None
    priority: int = DEFAULT_PRIORITY
    period: float = 0.0
    condition: str = ""
    trigger: Trigger = "rising_edge"
    min_interval: float = 0.0
    before: float = 0.0
    after: float = 0.0
    raw_frames: bool = False
    daily_bytes: int | None = None
    buffer_frames: int = 100_000
    buffer_bytes: int = 4_000_000

    def active(self, now: float) -> bool:
        """Whether the campaign runs at wall-clock time ``now``."""
        if not self.enabled:
            return False
        if self.start is not None and now < self.start:
            return False
        return self.expiry is None or now < self.expiry


def parse_campaigns(root: Table) -> tuple[CampaignConfig, ...]:
    """The ``campaigns`` array of the configuration's root table."""
    campaigns = tuple(_campaign(t) for t in root.tables("campaigns"))
    names = [c.name for c in campaigns]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"campaigns[{i}].name", f"duplicate campaign name {name!r}")
    always = [i for i, c in enumerate(campaigns) if c.collect == "always"]
    if len(always) > 1:
        raise ConfigError(f"campaigns[{always[1]}].collect", "only one campaign collects always")
    return campaigns


def _campaign(t: Table) -> CampaignConfig:
    name = t.str("name")
    if not _NAME.fullmatch(name):
        raise t.error("name", f"use 1-64 letters, digits, '_', '.' or '-'; got {name!r}")
    collect = t.str("collect", "condition", choices=COLLECT_MODES)
    if collect == "always" and name != ALWAYS:
        raise t.error("name", f"the campaign that collects always is named {ALWAYS!r}")
    if collect != "always" and name == ALWAYS:
        raise t.error("name", f"{ALWAYS!r} is the default campaign's name (collect = 'always')")
    signals = t.str_list("signals", ("*",))
    enabled = t.bool("enabled", True)
    start = _time(t, "start")
    expiry = _time(t, "expiry")
    if start is not None and expiry is not None and expiry <= start:
        raise t.error("expiry", "must be after start")
    priority = t.int("priority", DEFAULT_PRIORITY, min=0, max=9)
    period = 0.0
    condition = ""
    if collect == "periodic":
        period = t.float("period", min=0.1, max=86_400.0)
    if collect == "condition":
        condition = t.str("condition")
        _check_syntax(t, condition)
    trigger = t.str("trigger", "rising_edge", choices=TRIGGERS)
    min_interval = t.float("min_interval", 0.0, min=0.0, max=86_400.0)
    before = t.float("before", 0.0, min=0.0, max=600.0)
    after = t.float("after", 0.0, min=0.0, max=600.0)
    raw_frames = t.bool("raw_frames", False)
    daily_bytes = t.int("daily_bytes", None, min=1000)
    buffer_frames = t.int("buffer_frames", 100_000, min=10, max=10_000_000)
    buffer_bytes = t.int("buffer_bytes", 4_000_000, min=1000, max=1 << 30)
    if collect != "condition":
        for key in ("trigger", "min_interval", "before", "after", "raw_frames"):
            if t.has(key):
                raise t.error(key, "only applies with collect = 'condition'")
    if trigger == "while_true" and min_interval <= 0:
        raise t.error("min_interval", "must be greater than 0 with trigger = 'while_true'")
    t.finish()
    return CampaignConfig(
        name=name,
        collect=collect,
        signals=signals,
        enabled=enabled,
        start=start,
        expiry=expiry,
        priority=priority,
        period=period,
        condition=condition,
        trigger=trigger,
        min_interval=min_interval,
        before=before,
        after=after,
        raw_frames=raw_frames,
        daily_bytes=daily_bytes,
        buffer_frames=buffer_frames,
        buffer_bytes=buffer_bytes,
    )


def _time(t: Table, key: str) -> float | None:
    """An RFC 3339 time (a TOML datetime or a string) as epoch seconds."""
    value = t.raw(key, None)
    if value is None:
        return None
    if isinstance(value, str):
        try:
            # RFC 3339 allows "t" and "z" in lower case (section 5.6)
            value = dt.datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
        except ValueError:
            raise t.error(key, f"expected an RFC 3339 time, got {value!r}") from None
    if not isinstance(value, dt.datetime):
        raise t.error(key, f"expected an RFC 3339 time, got {value!r}")
    if value.tzinfo is None:
        raise t.error(key, "needs a time zone (e.g. 2026-12-31T00:00:00Z)")
    return value.timestamp()


def _check_syntax(t: Table, text: str) -> None:
    """Refuse what is not even an expression here; names are resolved by the engine."""
    try:
        ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise t.error(
            "condition", f"column {exc.offset or len(text.strip()) + 1}: syntax error: {exc.msg}"
        ) from None
    except (RecursionError, MemoryError):  # nesting past what the parser takes
        raise t.error("condition", "nested too deep") from None


def field_name(index: int, key: str) -> str:
    """The dotted path of ``campaigns[index].key`` (for errors raised by the engine)."""
    return f"campaigns[{index}].{key}"


def describe(campaign: CampaignConfig) -> dict[str, Any]:
    """The campaign's settings as JSON (``listCampaigns``)."""
    return {
        "collect": campaign.collect,
        "signals": list(campaign.signals),
        "enabled": campaign.enabled,
        "priority": campaign.priority,
        "condition": campaign.condition or None,
        "trigger": campaign.trigger if campaign.collect == "condition" else None,
        "before": campaign.before,
        "after": campaign.after,
        "period": campaign.period or None,
        "start": _iso(campaign.start),
        "expiry": _iso(campaign.expiry),
    }


def _iso(value: float | None) -> str | None:
    if value is None:
        return None
    return dt.datetime.fromtimestamp(value, dt.UTC).isoformat().replace("+00:00", "Z")
