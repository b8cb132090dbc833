"""docs/queries.md stays true: every ``sql duckdb`` block runs with DuckDB, and every Spark SQL
block with Spark in local mode, on a real lake (the demo vehicle's payloads from the real
pipeline's outbox, plus a corrupt one and a lost one), and finds rows. The demo drives on the wall
clock, so the cookbook's example day is replaced by the day the demo drove."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import duckdb
import pytest

DOC = Path(__file__).parents[2] / "docs" / "queries.md"
BLOCKS = re.findall(r"```sql duckdb\n(.*?)```", DOC.read_text(), re.S)
SPARK_BLOCKS = re.findall(r"```sql\n(.*?)```", DOC.read_text(), re.S)
#: The day the cookbook's examples name.
EXAMPLE_DAY = "2026-12-06"


def on_the_demo_day(query: str, lake: Path) -> str:
    """``query`` with ``LAKE`` and the example day replaced by the demo lake's folder and day."""
    (day,) = [p.name.removeprefix("date=") for p in (lake / "signals").iterdir()]
    return query.replace("LAKE", str(lake)).replace(EXAMPLE_DAY, day)


def test_the_cookbook_has_the_four_questions() -> None:
    text = DOC.read_text()
    for title in ("over a day", "distribution of a signal", "Gaps per vehicle", "vehicle-hour"):
        assert title in text
    assert len(BLOCKS) >= 8
    assert len(SPARK_BLOCKS) >= 4 and all("-- Spark SQL" in b for b in SPARK_BLOCKS)


@pytest.mark.parametrize("query", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_every_duckdb_query_runs_and_finds_rows(demo_lake: Path, query: str) -> None:
    rows = duckdb.sql(on_the_demo_day(query, demo_lake)).fetchall()
    assert rows, query


@pytest.mark.skipif(shutil.which("java") is None, reason="no Java runtime (.ci/setup)")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore:distutils Version classes:DeprecationWarning")
def test_every_spark_sql_query_runs_and_finds_rows(demo_lake: Path) -> None:
    """With the views the cookbook's setup block registers, in one local Spark session."""
    import gc
    import warnings

    from edge.lake.spark import session

    spark = session("local[2]", "test-queries")
    spark.sparkContext.setLogLevel("ERROR")
    try:
        for table in ("signals", "payloads", "streams", "schemas", "quarantine"):
            spark.read.parquet(str(demo_lake / table)).createOrReplaceTempView(table)
        for query in SPARK_BLOCKS:
            rows = spark.sql(on_the_demo_day(query, demo_lake).strip().rstrip(";")).collect()
            assert rows, query
    finally:
        spark.stop()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
