"""docs/queries.md stays true: every ``sql duckdb`` block runs with DuckDB on a real lake (the
demo vehicle's payloads from the real pipeline's outbox, plus a corrupt one and a lost one)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import duckdb
import pytest

from edge.lake.local import ingest

DOC = Path(__file__).parents[2] / "docs" / "queries.md"
BLOCKS = re.findall(r"```sql duckdb\n(.*?)```", DOC.read_text(), re.S)


@pytest.fixture(scope="module")
def demo_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lake of a short demo drive through the real pipeline (one payload lost, one corrupt)."""
    from edge.cli import main

    root = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--duration", "40", "--outbox", str(root), "--no-progress"]) == 0
    outbox = root / "outbox"
    data = sorted(outbox.glob("*.data.ctl"))
    data[2].unlink()  # lost on the way: a gap
    shutil.copy(data[3], outbox / "zz-corrupt.data.ctl")
    (outbox / "zz-corrupt.data.ctl").write_bytes(data[3].read_bytes()[:-5])
    report = ingest([outbox], root / "lake")
    assert report.corrupt == 1 and report.new == len(data)
    return root / "lake"


def test_the_cookbook_has_the_four_questions() -> None:
    text = DOC.read_text()
    for title in ("over a day", "distribution of a signal", "Gaps per vehicle", "vehicle-hour"):
        assert title in text
    assert len(BLOCKS) >= 8


@pytest.mark.parametrize("query", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_every_duckdb_query_runs_and_finds_rows(demo_lake: Path, query: str) -> None:
    rows = duckdb.sql(query.replace("LAKE", str(demo_lake))).fetchall()
    assert rows, query
