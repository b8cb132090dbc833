"""The streaming job's watermark against the spool's TTL: the stateful deduplication remembers a
(stream, seq) for the watermark, and a re-send can only come while its payload is still in the
spool, at most the TTL after it was appended (on the gateway's running clock, docs/lake.md). So
the watermark must stay wider than every TTL the project ships and than the spool's default, and
every place that sets the job's default must use the one constant."""

from __future__ import annotations

import inspect
import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.config.model import SpoolConfig
from edge.lake import WATERMARK

ROOT = Path(__file__).parents[2]

_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86_400, "week": 604_800}


_PART = r"(\d+(?:\.\d+)?)\s*(second|minute|hour|day|week)s?"


def interval_seconds(text: str) -> float:
    """Seconds of a Spark interval string as ``withWatermark`` takes it (``8 days``,
    ``1 day 12 hours``); ValueError for anything else."""
    if not re.fullmatch(rf"\s*{_PART}(\s+{_PART})*\s*", text.lower()):
        raise ValueError(f"not an interval: {text!r}")
    return sum(float(n) * _UNITS[unit] for n, unit in re.findall(_PART, text.lower()))


def test_interval_seconds_reads_sparks_intervals() -> None:
    assert interval_seconds("8 days") == 8 * 86_400
    assert interval_seconds("1 day 12 hours") == 1.5 * 86_400
    assert interval_seconds("10 minutes") == 600
    with pytest.raises(ValueError, match="not an interval"):
        interval_seconds("8 fortnights")


def _spool_ttls(value: Any, where: str) -> Iterator[tuple[str, float]]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "spool" and isinstance(item, dict) and item.get("ttl"):
                yield where, float(item["ttl"])
            yield from _spool_ttls(item, where)
    elif isinstance(value, list):
        for item in value:
            yield from _spool_ttls(item, where)


def shipped_ttls() -> list[tuple[str, float]]:
    """Every spool TTL the project ships: the deployment manifest, the example configurations,
    and the configuration examples in docs/."""
    found = list(
        _spool_ttls(json.loads((ROOT / "deployment.template.json").read_text()), "deployment")
    )
    for path in sorted((ROOT / "examples").glob("*.toml")):
        found += _spool_ttls(tomllib.loads(path.read_text()), path.name)
    for path in sorted((ROOT / "docs").glob("*.md")):
        for number in re.findall(r"^ttl\s*=\s*([\d_.]+)", path.read_text(), re.MULTILINE):
            found.append((path.name, float(number.replace("_", ""))))
    return found


def test_the_watermark_is_wider_than_every_spool_ttl_the_project_ships() -> None:
    watermark = interval_seconds(WATERMARK)
    ttls = shipped_ttls()
    assert ("deployment", 604_800.0) in ttls  # what a car runs with
    for where, ttl in ttls:
        assert watermark > ttl, f"{where}: spool TTL {ttl} s is not below the watermark {WATERMARK}"
    # The spool's own default: no TTL today (pending payloads are kept until sent or pushed out
    # by max_bytes). Should it get one, it must stay below the watermark as well.
    default = SpoolConfig().ttl
    assert default is None or watermark > default


def test_every_default_of_the_streaming_job_is_the_one_constant() -> None:
    from edge.lake import commands, spark

    assert inspect.signature(spark.start_stream).parameters["watermark"].default == WATERMARK
    for source in (inspect.getsource(spark.main), inspect.getsource(commands.register)):
        assert "--watermark" in source and "default=WATERMARK" in source
    assert not re.search(r"\d+ days", inspect.getsource(spark) + inspect.getsource(commands))
