"""The lake's on-disk key index (SQLite beside the tables): a fresh process refuses what an earlier
one ingested without reading the ``payloads`` table, and the index follows the tables' files when
they change under it (lost index, a file published or replaced by another writer)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import edge.lake.local as local
from edge.lake.index import INDEX_FILE, KeyIndex
from edge.lake.local import ingest, read_table
from tests.support.lake import Fleet, edge_rows, lake_rows, write_avro

ROOT = Path(__file__).parents[2]

_INGEST = """
import json, sys
from edge.lake.local import ingest
print(json.dumps(ingest(sys.argv[1:-1], sys.argv[-1]).as_dict()))
"""


def _ingest_in_a_fresh_process(sources: list[Path], lake: Path) -> dict[str, int]:
    result = subprocess.run(
        [sys.executable, "-c", _INGEST, *map(str, sources), str(lake)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, int] = json.loads(result.stdout)
    return report


def _index_keys(lake: Path) -> set[tuple[str, int]]:
    index = KeyIndex(lake)
    try:
        return set(index.keys())
    finally:
        index.close()


def _payload_keys(lake: Path) -> set[tuple[str, int]]:
    table = read_table(lake, "payloads", ["stream", "seq"])
    return set(
        zip(table.column("stream").to_pylist(), table.column("seq").to_pylist(), strict=True)
    )


def test_a_fresh_process_refuses_what_an_earlier_one_ingested(fleet: Fleet, tmp_path: Path) -> None:
    hub = fleet.iothub_folder(tmp_path)
    lake = tmp_path / "lake"
    first = _ingest_in_a_fresh_process([hub], lake)
    second = _ingest_in_a_fresh_process([hub], lake)
    assert first["new"] == len(fleet.messages)
    assert (second["new"], second["duplicates"], second["rows"]) == (0, len(fleet.messages), 0)
    assert _index_keys(lake) == _payload_keys(lake)
    assert len(_payload_keys(lake)) == len(fleet.messages)


def test_an_ingest_does_not_read_the_payloads_table(
    fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key set comes from the index, not from the lake's tables read into memory."""
    hub = fleet.iothub_folder(tmp_path)
    lake = tmp_path / "lake"
    ingest([hub], lake)
    tables_read: list[str] = []
    real = local.read_table

    def spy(lake: Path, name: str, columns: object = None) -> object:
        tables_read.append(name)
        return real(lake, name, columns)  # type: ignore[arg-type]

    monkeypatch.setattr(local, "read_table", spy)
    files_read: list[str] = []
    real_read_file = KeyIndex._read_file
    monkeypatch.setattr(
        KeyIndex,
        "_read_file",
        lambda self, path, unit: files_read.append(path) or real_read_file(self, path, unit),
    )
    again = ingest([hub], lake)
    assert again.duplicates == len(fleet.messages) and again.new == 0
    assert "payloads" not in tables_read and "quarantine" not in tables_read
    assert files_read == []  # the index was in step: no table file read


def test_a_lost_index_is_rebuilt_from_the_tables(fleet: Fleet, tmp_path: Path) -> None:
    hub = fleet.iothub_folder(tmp_path)
    lake = tmp_path / "lake"
    bad = [(b"not ours", {}, fleet.messages[0][2], fleet.messages[0][3])]
    write_avro(tmp_path / "bad" / "a.avro", bad)
    ingest([hub, tmp_path / "bad"], lake)
    (lake / INDEX_FILE).unlink()
    again = ingest([hub, tmp_path / "bad"], lake)
    assert (again.new, again.duplicates, again.foreign) == (0, len(fleet.messages), 1)
    assert read_table(lake, "quarantine").num_rows == 1
    assert _index_keys(lake) == _payload_keys(lake)
    assert lake_rows(lake) == edge_rows(fleet)


def test_a_payloads_file_replaced_under_the_index_is_read_again(
    fleet: Fleet, tmp_path: Path
) -> None:
    """As when a Spark batch is replayed: a file of ``payloads`` rewritten with fewer rows (and
    its ``signals`` likewise) by another writer. The index drops the keys it no longer has, so
    those payloads are taken again, once."""
    hub = fleet.iothub_folder(tmp_path)
    lake = tmp_path / "lake"
    ingest([hub], lake)
    truck = "0b" * 16
    removed = pa.array([5, 6, 7], pa.int64())
    for table in ("payloads", "signals"):
        for path in sorted((lake / table).rglob("*.parquet")):
            data = pq.read_table(path)
            lost = pc.and_(
                pc.equal(data.column("stream"), truck), pc.is_in(data.column("seq"), removed)
            )
            if pc.any(lost).as_py():
                pq.write_table(data.filter(pc.invert(lost)), path)
    assert len(_payload_keys(lake)) == len(fleet.messages) - len(removed)
    again = ingest([hub], lake)
    assert (again.new, again.duplicates) == (len(removed), len(fleet.messages) - len(removed))
    assert _index_keys(lake) == _payload_keys(lake)
    assert lake_rows(lake) == edge_rows(fleet)
    streams = {s["stream"]: s for s in read_table(lake, "streams").to_pylist()}
    assert streams[truck]["gaps"] == []


def test_a_stream_s_gaps_come_from_the_index_across_runs(fleet: Fleet, tmp_path: Path) -> None:
    truck = "0b" * 16
    mine = [m for m in fleet.messages if m[1]["stream"] == truck]
    seq = {id(m): int(m[1]["seq"]) for m in mine}
    lake = tmp_path / "lake"
    write_avro(tmp_path / "a" / "a.avro", [m for m in mine if seq[id(m)] not in {3, 4, 9}])
    ingest([tmp_path / "a"], lake)
    write_avro(tmp_path / "b" / "b.avro", [m for m in mine if seq[id(m)] == 4])
    ingest([tmp_path / "b"], lake)
    (streams,) = read_table(lake, "streams").to_pylist()
    assert streams["gaps"] == [[3, 3], [9, 9]] and streams["missing"] == 2
    assert streams["payloads"] == len(mine) - 2
    assert streams["first_time"] is not None and streams["vehicle"] == "corpus-j1939-truck"
