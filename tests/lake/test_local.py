"""The single-machine lake ingest on Avro files in the hubs' exact schemas, carrying payloads the
real Processor made from corpus logs: the lake's signals equal the edge's own decode row for row,
whatever the duplicates, order, late schemas, re-ingested files and kill -9 on the way."""

from __future__ import annotations

import datetime as dt
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pytest

from edge.lake.local import gaps, ingest, read_table
from tests.support.lake import Fleet, edge_rows, lake_rows, write_avro


def test_signals_equal_the_edges_decode_row_for_row(fleet: Fleet, tmp_path: Path) -> None:
    hub = fleet.iothub_folder(tmp_path)
    report = ingest([hub], tmp_path / "lake")
    expected = edge_rows(fleet)
    assert lake_rows(tmp_path / "lake") == expected
    assert report.new == report.payloads == len(fleet.messages)
    assert report.rows == len(expected)
    assert (report.duplicates, report.parked, report.foreign, report.corrupt) == (0, 0, 0, 0)
    # Integer-coded signals carry their raw integer; physical = raw * scale + offset holds.
    signals = read_table(tmp_path / "lake", "signals")
    assert signals.column("raw").null_count < signals.num_rows
    streams = {s["vehicle"]: s for s in read_table(tmp_path / "lake", "streams").to_pylist()}
    assert set(streams) == {"corpus-kona", "corpus-j1939-truck"}
    assert all(s["gaps"] == [] and s["first_seq"] == 0 for s in streams.values())
    assert streams["corpus-kona"]["device"] == "device-kona"


def test_relative_time_is_placed_by_arrival_and_flagged(fleet: Fleet, tmp_path: Path) -> None:
    ingest([fleet.iothub_folder(tmp_path)], tmp_path / "lake")
    signals = read_table(tmp_path / "lake", "signals", ["vehicle", "date", "time_base"])
    places = set(zip(*(signals.column(c).to_pylist() for c in signals.column_names), strict=True))
    # The Kona log has no wall clock (relative times): it lands on its arrival day.
    assert ("corpus-kona", dt.date(2026, 12, 6), "relative") in places
    # The truck's log has epoch times: its event day, not the arrival's.
    assert ("corpus-j1939-truck", dt.date(2021, 10, 25), "epoch") in places
    assert len(places) == 2


def test_duplicates_and_the_same_file_twice_never_duplicate_rows(
    fleet: Fleet, tmp_path: Path
) -> None:
    hub = fleet.iothub_folder(tmp_path)
    lake = tmp_path / "lake"
    ingest([hub], lake)
    again = ingest([hub], lake)
    assert (again.new, again.duplicates, again.rows) == (0, len(fleet.messages), 0)
    # Byte-identical re-sends after an outage: later arrival, another file, same run as news.
    resent = [(b, p, s, t + dt.timedelta(hours=5)) for b, p, s, t in fleet.messages[::3]]
    write_avro(tmp_path / "resent" / "later.avro", resent)
    write_avro(tmp_path / "resent" / "copy.avro", resent, capture=True)
    third = ingest([tmp_path / "resent"], lake)
    assert (third.new, third.duplicates) == (0, 2 * len(resent))
    assert lake_rows(lake) == edge_rows(fleet)
    assert read_table(lake, "payloads").num_rows == len(fleet.messages)


def test_shuffled_arrival_and_late_schemas_end_exactly_once(fleet: Fleet, tmp_path: Path) -> None:
    messages = list(fleet.messages)
    schemas = [m for m in messages if m[1]["kind"] == "schema"]
    data = [m for m in messages if m[1]["kind"] == "data"]
    random.Random(7).shuffle(data)
    # Data spread over Capture files of two partitions, out of order, with duplicates; the
    # schemas arrive in a later run.
    write_avro(tmp_path / "in1" / "p0.avro", data[::2], capture=True)
    write_avro(tmp_path / "in1" / "p1.avro", data[1::2] + data[:3], capture=True)
    lake = tmp_path / "lake"
    first = ingest([tmp_path / "in1"], lake)
    assert first.new == 0 and first.parked == len(data) and first.rows == 0
    assert first.duplicates == 3
    write_avro(tmp_path / "in2" / "schemas.avro", schemas)
    second = ingest([tmp_path / "in2"], lake)
    assert second.unparked == len(data) and second.parked == 0
    assert lake_rows(lake) == edge_rows(fleet)
    # Within one run, a schema after its data in a later file is waited for too.
    lake2 = tmp_path / "lake2"
    same_run = ingest([tmp_path / "in1", tmp_path / "in2"], lake2)
    assert same_run.parked == 0 and same_run.new == len(messages)
    assert lake_rows(lake2) == edge_rows(fleet)


def test_foreign_and_corrupt_payloads_are_quarantined_and_counted(
    fleet: Fleet, tmp_path: Path
) -> None:
    good = fleet.messages[:5]
    truncated = fleet.messages[6][0][:-7]
    props, system, when = good[0][1:]
    bad = [
        (b'{"temperature": 21.5}', {}, system, when),  # another module's message
        (None, {}, system, when),  # a message without body
        (truncated, props, system, when),
    ]
    write_avro(tmp_path / "in" / "a.avro", good + bad)
    (tmp_path / "in" / "b.avro").write_bytes(b"not avro at all")
    lake = tmp_path / "lake"
    report = ingest([tmp_path / "in"], lake)
    assert (report.foreign, report.corrupt, report.new) == (2, 1, 5)
    assert len(report.errors) == 1 and "b.avro" in report.errors[0]
    quarantine = read_table(lake, "quarantine").to_pylist()
    assert sorted(q["status"] for q in quarantine) == ["corrupt", "foreign", "foreign"]
    assert {q["body"] for q in quarantine} == {b'{"temperature": 21.5}', b"", truncated}
    # The same bad payloads again: counted again, kept once.
    ingest([tmp_path / "in" / "a.avro"], lake)
    assert read_table(lake, "quarantine").num_rows == 3


def test_streams_show_which_sequence_numbers_never_arrived(fleet: Fleet, tmp_path: Path) -> None:
    truck = "0b" * 16
    lost = {3, 4, 9}
    kept = [m for m in fleet.messages if not (m[1]["stream"] == truck and int(m[1]["seq"]) in lost)]
    write_avro(tmp_path / "in" / "a.avro", kept)
    ingest([tmp_path / "in"], tmp_path / "lake")
    streams = {s["stream"]: s for s in read_table(tmp_path / "lake", "streams").to_pylist()}
    assert streams[truck]["gaps"] == [[3, 4], [9, 9]]
    assert streams[truck]["missing"] == 3
    assert streams["0a" * 16]["gaps"] == []
    assert gaps([5, 1, 2, 9]) == [[3, 4], [6, 8]]


_KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import pyarrow.parquet as pq
    import edge.lake.local as local

    where, after = sys.argv[3], int(sys.argv[4])
    calls = 0

    def killing(real):
        def wrapper(*args, **kwargs):
            global calls
            calls += 1
            if calls > after:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)
        return wrapper

    if where == "staging":  # while writing the run's files, before its journal
        local.pq.write_table = killing(pq.write_table)
    elif where == "index":  # journal written, the key index not committed yet
        local.KeyIndex.commit = killing(local.KeyIndex.commit)
    else:  # while publishing: journal written, index committed, some renames done
        local.os.replace = killing(os.replace)
    local.ingest([sys.argv[1]], sys.argv[2])
    """
)


@pytest.mark.parametrize(("where", "after"), [("staging", 2), ("index", 0), ("publish", 3)])
def test_an_ingest_killed_midway_ends_exactly_once(
    fleet: Fleet, tmp_path: Path, where: str, after: int
) -> None:
    hub = fleet.iothub_folder(tmp_path)
    lake = tmp_path / "lake"
    killed = subprocess.run(
        [sys.executable, "-c", _KILLER, str(hub), str(lake), where, str(after)],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
        capture_output=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    journals = list((lake / "_journal").glob("*.json"))
    assert len(journals) == (0 if where == "staging" else 1)
    report = ingest([hub], lake)
    # Rolled back (staging) or forward (index, publish; the index catching up with the files
    # when its commit never happened), then the rest: every row once.
    assert report.new == (len(fleet.messages) if where == "staging" else 0)
    assert report.duplicates == (0 if where == "staging" else len(fleet.messages))
    assert lake_rows(lake) == edge_rows(fleet)
    assert not list((lake / "_staging").iterdir())


def test_duckdb_reads_the_layout(fleet: Fleet, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    ingest([fleet.iothub_folder(tmp_path)], lake)
    query = f"""
        select vehicle, count(*), count(distinct signal), min(date)
        from read_parquet('{lake}/signals/*/*.parquet', hive_partitioning = true)
        group by vehicle order by vehicle
    """
    result = duckdb.sql(query).fetchall()
    truck, kona = result
    assert truck[0] == "corpus-j1939-truck" and truck[3] == dt.date(2021, 10, 25)
    assert kona[0] == "corpus-kona" and kona[3] == dt.date(2026, 12, 6)
    assert truck[1] + kona[1] == len(fleet.edge_rows())


def test_campaign_payloads_keep_their_campaign(demo_lake: Path) -> None:
    """The demo runs the example campaigns: a payload whose envelope names one (``ext``) has it
    in ``payloads.campaign``, and each of its rows in ``signals.campaign``."""
    payloads = read_table(demo_lake, "payloads", ["stream", "seq", "campaign", "rows"])
    tagged = {(p["stream"], p["seq"]): p for p in payloads.to_pylist() if p["campaign"] is not None}
    assert tagged, "the demo's drive made no campaign payload"
    signals = read_table(demo_lake, "signals", ["stream", "seq", "campaign"]).to_pylist()
    for key, payload in tagged.items():
        rows = [s for s in signals if (s["stream"], s["seq"]) == key]
        assert len(rows) == payload["rows"]
        assert {s["campaign"] for s in rows} == {payload["campaign"]}
    untagged = [s for s in signals if (s["stream"], s["seq"]) not in tagged]
    assert untagged and all(s["campaign"] is None for s in untagged)
